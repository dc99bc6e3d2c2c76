"""The bank's end of the platform's EmbeddingService for scoring.

One scoring session (the key derived from a PSI run), queries and answers sealed both
ways; the same sealer numbers the sync and the ``grpc.aio`` calls, so the scorer and its
event-loop twin can share one session.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence

import grpc
import numpy as np

from fedscore.api.v1 import embedding_pb2, embedding_pb2_grpc
from fedscore.crypto.primitives import (
    Direction,
    Sealer,
    SealError,
    WindowOpener,
    derive_session_key,
)
from fedscore.crypto.psi import PsiResult
from fedscore.errors import FedscoreError
from fedscore.federation.provision import StartupKit
from fedscore.wire import serde

log = logging.getLogger(__name__)

SCORING_ROUND = 0
"""The round number scoring queries are sealed under (the platform's, too)."""


class AnswerRefused(FedscoreError, grpc.RpcError):
    """The platform's answer did not open (altered or replayed on the way) or does not
    fit its query. A ``grpc.RpcError``, as a failed call is, so that whoever asked takes
    it for the platform's part failing (``Scorer.platform_failure``: the policy's
    fallback), never for the request's fault."""

    code = grpc.StatusCode.DATA_LOSS


class PlatformEmbeddings:
    """The bank's end of EmbeddingService: one scoring session, queries sealed both ways."""

    def __init__(self, channel: grpc.Channel, kit: StartupKit, psi: PsiResult,
                 platform_party: str = "platform") -> None:
        key = derive_session_key(kit.sealing_key, kit.peers[platform_party].sealing_public,
                                 psi.session_id).for_scoring()
        self._sealer = Sealer(key, psi.session_id, Direction.BANK_TO_PLATFORM)
        self._opener = WindowOpener(key, psi.session_id, Direction.PLATFORM_TO_BANK)
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def _request(self, version: str, handles: np.ndarray,
                 consented: Sequence[tuple[str, str]], purpose: int
                 ) -> tuple[embedding_pb2.GetEmbeddingsRequest, int]:
        """The sealed query and its batch number (shared by the sync and aio calls, so
        one Sealer numbers both)."""
        with self._lock:
            number = next(self._numbers)
        query = embedding_pb2.EmbeddingQuery(
            platform_model_version=version, handles=serde.handles_to_bytes(handles),
            consented=[embedding_pb2.ConsentedApplicant(applicant_id=a, consent_token=t)
                       for a, t in consented],
            purpose=embedding_pb2.ScoringPurpose.ValueType(purpose),
        )
        box = self._sealer.seal(query.SerializeToString(), round=SCORING_ROUND, batch=number)
        return embedding_pb2.GetEmbeddingsRequest(sealed=serde.sealed_to_pb(box)), number

    def _answer(self, reply: embedding_pb2.GetEmbeddingsResponse, number: int, n: int,
                dim: int) -> tuple[np.ndarray, np.ndarray]:
        """The answer to query ``number``, opened and checked; AnswerRefused if it does not
        open or fit."""
        try:
            answer = embedding_pb2.EmbeddingAnswer.FromString(self._opener.open(
                serde.sealed_from_pb(reply.sealed), round=SCORING_ROUND, batch=number))
            emb = (serde.tensor_from_pb(answer.embeddings, rows=n, name="embeddings") if n
                   else np.zeros((0, dim)))
            present = np.frombuffer(answer.present, np.uint8).astype(bool)
            if emb.shape != (n, dim) or present.size != n:
                raise serde.WireError(f"platform answered {emb.shape} embeddings for {n} rows")
        except (SealError, serde.WireError) as exc:
            log.warning("scoring: the platform's answer to query %d refused: %s", number, exc)
            raise AnswerRefused(f"the platform's answer refused: {exc}") from None
        return emb, present

    def get(
        self, version: str, handles: np.ndarray, consented: Sequence[tuple[str, str]],
        *, purpose: int, timeout: float, dim: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [n, dim], present [n]) for ``handles`` then ``consented``
        (applicant id, consent token) pairs; raises grpc.RpcError as the platform does,
        and AnswerRefused (one too) for an answer that does not open."""
        request, number = self._request(version, handles, consented, purpose)
        reply = self._stub.GetEmbeddings(request, timeout=timeout)
        return self._answer(reply, number, handles.size + len(consented), dim)

    async def get_async(
        self, stub: embedding_pb2_grpc.EmbeddingServiceStub, version: str,
        handles: np.ndarray, consented: Sequence[tuple[str, str]],
        *, purpose: int, timeout: float, dim: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`get` on ``stub``, a stub of a ``grpc.aio`` channel to the same platform:
        the session is in the sealed query, not in the channel."""
        request, number = self._request(version, handles, consented, purpose)
        reply = await stub.GetEmbeddings(request, timeout=timeout)
        return self._answer(reply, number, handles.size + len(consented), dim)


def first_row(answer: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """The one applicant's embedding row of a platform answer, None if not present."""
    emb, present = answer
    return emb[0] if present[0] else None
