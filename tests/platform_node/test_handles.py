"""The platform answers only for handles of the calling bank's own intersection.

Every path that takes handles is driven through the real servers over mutual TLS: the
Step stream in training and in evaluation mode (evaluation has no path of its own: the
bank's ``predict`` and the evaluation of a federated model both send EVAL commands on
Step), and GetEmbeddings for online scoring. A handle at or above the intersection's size
is refused as a whole and nothing is computed; a session's handles are of no use to
another bank, even one that could seal for the session. Each attack is preceded or
followed by the honest call it differs from, which the platform answers, so a refusal
is the guard's and not a broken fixture's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from bank_node.platform_link import GrpcPlatformLink
from bank_node.scoring_platform import PlatformEmbeddings
from fedscore.api.v1 import embedding_pb2, embedding_pb2_grpc, split_learning_pb2
from fedscore.crypto.primitives import Direction, Sealer, derive_session_key
from fedscore.crypto.psi import PsiResult
from fedscore.ml.training import PlatformBottom, TrainConfig
from fedscore.wire import serde
from fedscore.wire.transport import secure_channel
from platform_node.embedding_service import REFUSALS_FILE
from platform_node.server import PlatformNode, create_server
from tests.conftest import Federation, LivePlatform
from tests.platform_node.conftest import bank_psi, raw_step

CFG = TrainConfig(epochs=1, batch_size=64, seed=3)
TRAIN, EVAL = split_learning_pb2.STEP_MODE_TRAIN, split_learning_pb2.STEP_MODE_EVAL
MODES = {"train": TRAIN, "eval": EVAL}
APPLICATION = embedding_pb2.SCORING_PURPOSE_APPLICATION


def _outside(psi: PsiResult, where: str) -> int:
    """A handle outside ``psi``'s intersection: the first one (its size), or the largest
    a handle can be on the wire (uint32)."""
    return {"at-size": psi.size, "uint32-max": 2**32 - 1}[where]


class _Calls:
    """Counts calls of a method while passing them on (the spy on what gets computed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
        self.count = 0
        inner: Callable[..., Any] = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return inner(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def _round_sealer(federation: Federation, bank: str, psi: PsiResult) -> Sealer:
    """``bank``'s sealer for round 0 of session ``psi`` (the test holds every kit)."""
    kit = federation.kit(bank)
    key = derive_session_key(kit.sealing_key, kit.peer("platform").sealing_public,
                             psi.session_id).for_round(0)
    return Sealer(key, psi.session_id, Direction.BANK_TO_PLATFORM)


def _command(mode: int, handles: list[int], gradient: np.ndarray | None = None) -> bytes:
    command = split_learning_pb2.StepCommand(
        mode=split_learning_pb2.StepMode.ValueType(mode),
        handles=serde.handles_to_bytes(np.array(handles, np.int64)))
    if gradient is not None:
        command.gradient.CopyFrom(serde.tensor_to_pb(gradient))
    return command.SerializeToString()


def _state(bottom: PlatformBottom) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in bottom.model.state_dict().items()}


@pytest.mark.parametrize("where", ["at-size", "uint32-max"])
@pytest.mark.parametrize("mode", MODES)
def test_a_step_outside_the_intersection_is_refused_and_computes_nothing(
    federation: Federation, live_platform: LivePlatform, monkeypatch: pytest.MonkeyPatch,
    mode: str, where: str,
) -> None:
    kit = federation.kit("bank-1")
    psi = bank_psi(federation, live_platform, "bank-1")
    node = live_platform.node
    assert isinstance(node, PlatformNode)
    with secure_channel(live_platform.address, kit, "platform") as channel:
        link = GrpcPlatformLink(channel, kit, psi, CFG)  # opens round 0 of the session
        sealer = _round_sealer(federation, "bank-1", psi)
        forward = _Calls(monkeypatch, PlatformBottom, "forward")
        backward = _Calls(monkeypatch, PlatformBottom, "backward")
        # the last handle inside the intersection is answered ...
        assert len(raw_step(channel, [sealer.seal(_command(TRAIN, [0, psi.size - 1]),
                                                  round=0, batch=0)])) == 1
        assert forward.count == 1
        session = node.sessions.get(psi.session_id, "bank-1")
        assert session.bottom is not None
        before, rows_before = _state(session.bottom), session.train_rows
        # ... the next one is not, and neither the gradient riding along nor the forward runs
        grad = (np.ones((2, link.embedding_dim), np.float32) if MODES[mode] == TRAIN
                else None)
        bad = sealer.seal(_command(MODES[mode], [1, _outside(psi, where)], grad),
                          round=0, batch=1)
        with pytest.raises(grpc.RpcError) as refused:
            raw_step(channel, [bad])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside the intersection" in (refused.value.details() or "")
    assert (forward.count, backward.count) == (1, 0)
    assert session.train_rows == rows_before
    after = _state(session.bottom)
    assert all(torch.equal(before[k], after[k]) for k in before)


@dataclass
class ScoringPlatform:
    """A live platform with a committed bottom-model version to score with and a state
    folder (where it records scoring refusals)."""

    live: LivePlatform
    node: PlatformNode
    version: str
    refusals: Path

    def refused(self) -> list[dict[str, Any]]:
        if not self.refusals.exists():
            return []
        return [json.loads(line) for line in self.refusals.read_text().splitlines()]


@pytest.fixture()
def scoring_platform(federation: Federation, tmp_path: Path) -> Iterator[ScoringPlatform]:
    node = PlatformNode(federation.kit("platform"), federation.platform_table(),
                        state_dir=tmp_path)
    version = node.federation.store.save("scoring", 1, node.initial_weights(seed=11))
    server, port = create_server("127.0.0.1:0", node)
    server.start()
    try:
        yield ScoringPlatform(LivePlatform(f"127.0.0.1:{port}", node, server), node, version,
                              tmp_path / REFUSALS_FILE)
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("where", ["at-size", "uint32-max"])
def test_a_scoring_query_outside_the_intersection_is_refused_and_computes_nothing(
    federation: Federation, scoring_platform: ScoringPlatform,
    monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:
    live, node = scoring_platform.live, scoring_platform.node
    psi = bank_psi(federation, live, "bank-1")
    dim = node.bottom_config.out_dim
    with secure_channel(live.address, federation.kit("bank-1"), "platform") as channel:
        platform = PlatformEmbeddings(channel, federation.kit("bank-1"), psi)
        table = _Calls(monkeypatch, node.embeddings, "rows")

        def get(handles: list[int]) -> tuple[np.ndarray, np.ndarray]:
            return platform.get(scoring_platform.version, np.array(handles, np.int64), [],
                                purpose=APPLICATION, timeout=10.0, dim=dim)

        emb, present = get([0, psi.size - 1])  # the last handle inside is answered ...
        assert emb.shape == (2, dim) and present.all() and np.abs(emb).sum() > 0
        assert table.count == 1
        with pytest.raises(grpc.RpcError) as refused:  # ... the next one is not
            get([1, _outside(psi, where)])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not in this bank's intersection" in (refused.value.details() or "")
    assert table.count == 1
    (record,) = scoring_platform.refused()
    assert (record["peer"], record["status"]) == ("bank-1", "PERMISSION_DENIED")
    assert "outside the intersection" in record["reason"]


def _scoring_query(federation: Federation, bank: str, psi: PsiResult, version: str,
                   handles: list[int]) -> embedding_pb2.GetEmbeddingsRequest:
    """``bank``'s first sealed scoring query (seq 0) in session ``psi``."""
    kit = federation.kit(bank)
    key = derive_session_key(kit.sealing_key, kit.peer("platform").sealing_public,
                             psi.session_id).for_scoring()
    query = embedding_pb2.EmbeddingQuery(platform_model_version=version, purpose=APPLICATION,
                                         handles=serde.handles_to_bytes(np.array(handles)))
    box = Sealer(key, psi.session_id, Direction.BANK_TO_PLATFORM).seal(
        query.SerializeToString(), round=0, batch=0)
    return embedding_pb2.GetEmbeddingsRequest(sealed=serde.sealed_to_pb(box))


@pytest.mark.parametrize("path", ["train", "eval", "score"])
def test_another_bank_cannot_use_a_sessions_handles(
    federation: Federation, scoring_platform: ScoringPlatform,
    monkeypatch: pytest.MonkeyPatch, path: str,
) -> None:
    """bank-2 sends a message sealed under bank-1's session key (as if it had stolen it,
    so that only the session's owner check stands between it and bank-1's customers):
    refused, nothing computed; the very same message from bank-1 is answered."""
    live, node = scoring_platform.live, scoring_platform.node
    psi = bank_psi(federation, live, "bank-1")
    handles = [0, psi.size - 1]
    forward = _Calls(monkeypatch, PlatformBottom, "forward")
    table = _Calls(monkeypatch, node.embeddings, "rows")
    with (
        secure_channel(live.address, federation.kit("bank-1"), "platform") as own,
        secure_channel(live.address, federation.kit("bank-2"), "platform") as other,
    ):
        if path == "score":
            request = _scoring_query(federation, "bank-1", psi, scoring_platform.version,
                                     handles)

            def send(channel: grpc.Channel) -> int:
                embedding_pb2_grpc.EmbeddingServiceStub(channel).GetEmbeddings(request,
                                                                               timeout=10.0)
                return table.count
        else:
            GrpcPlatformLink(own, federation.kit("bank-1"), psi, CFG)  # bank-1 opens it
            box = _round_sealer(federation, "bank-1", psi).seal(
                _command(MODES[path], handles), round=0, batch=0)

            def send(channel: grpc.Channel) -> int:
                assert len(raw_step(channel, [box])) == 1
                return forward.count

        with pytest.raises(grpc.RpcError) as refused:
            send(other)
        assert (forward.count, table.count) == (0, 0)
        assert send(own) == 1  # the same bytes from the session's owner
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "belongs to another party" in (refused.value.details() or "")
    if path == "score":
        (record,) = scoring_platform.refused()
        assert (record["peer"], record["status"]) == ("bank-2", "PERMISSION_DENIED")
