"""What each fedscore message is in the ledger: its kind, purpose, round and rows, read
from the method and the message alone (the taps themselves run in tests/audit and
tests/wire, against real servers and channels)."""

from __future__ import annotations

import pytest

from fedscore.api.v1 import common_pb2, psi_pb2, round_control_pb2, split_learning_pb2
from fedscore.ledger.taps import Flow, default_kind, default_purpose, default_round, default_rows


@pytest.mark.parametrize(
    ("method", "request_kind", "response_kind", "purpose"),
    [
        ("/fedscore.v1.PsiService/Intersect", "psi-blinded-ids", "psi-blinded-ids",
         "alignment"),
        ("/fedscore.v1.SplitLearningService/Step", "gradients", "embeddings", "training"),
        ("/fedscore.v1.RoundControlService/OpenSession", "control", "control", "training"),
        ("/fedscore.v1.FederationService/FinishRound", "federation-control",
         "federation-control", "federation"),
        ("/fedscore.v1.EmbeddingService/GetEmbeddings", "embedding-query", "embeddings",
         "scoring"),
        ("/fedscore.v1.ScoringService/Score", "score", "score", "scoring"),
        ("/some.Other/Method", "other", "other", "other"),
    ],
)
def test_default_kinds_and_purposes(method: str, request_kind: str, response_kind: str,
                                    purpose: str) -> None:
    assert default_kind(method, Flow.RECEIVED) == request_kind
    assert default_kind(method, Flow.SENT) == response_kind
    assert default_purpose(method) == purpose


def test_default_round_and_rows() -> None:
    assert default_round(round_control_pb2.OpenSessionRequest(round=3)) == 3
    step = split_learning_pb2.StepRequest(sealed=common_pb2.Sealed(round=7, batch=2))
    assert default_round(step) == 7
    assert default_round(round_control_pb2.EndEpochRequest(epoch=4)) == 0
    points = psi_pb2.PsiPoints(offset=0, points=bytes(32 * 5))
    assert default_rows(psi_pb2.IntersectRequest(blinded=points)) == 5
    assert default_rows(psi_pb2.IntersectResponse(double_blinded=points)) == 5
    assert default_rows(psi_pb2.IntersectRequest(hello=psi_pb2.PsiHello(set_size=9))) == 0
    assert default_rows(step) == 0
