"""The bank's end of the platform's EmbeddingService for scoring.

One scoring session (the key derived from a PSI run), queries and answers sealed both
ways; the same sealer numbers the sync and the ``grpc.aio`` calls, so the scorer and its
event-loop twin can share one session.

Two things keep a query from being sent, each answered with :class:`PlatformDown`
(UNAVAILABLE, which the scorer takes for the platform's part failing: the policy's
fallback, at once): the bank's audit ledger cannot record it (a full disk: nothing is sent
that the ledger cannot record, :mod:`fedscore.ledger.taps`), or the platform failed the
last calls (:class:`CircuitBreaker`: while it is down the bank neither waits on it nor
hammers it, and its ledger does not grow; one probe call at a time finds it back).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

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
from fedscore.ledger.entry import LedgerError
from fedscore.wire import serde

log = logging.getLogger(__name__)
T = TypeVar("T")

SCORING_ROUND = 0
"""The round number scoring queries are sealed under (the platform's, too)."""


class AnswerRefused(FedscoreError, grpc.RpcError):
    """The platform's answer did not open (altered or replayed on the way) or does not
    fit its query. A ``grpc.RpcError``, as a failed call is, so that whoever asked takes
    it for the platform's part failing (``Scorer.platform_failure``: the policy's
    fallback), never for the request's fault."""

    code = grpc.StatusCode.DATA_LOSS


class PlatformDown(FedscoreError, grpc.RpcError):
    """The query was not sent: the platform is taken for down (:class:`CircuitBreaker`),
    or the bank's ledger cannot record it. A ``grpc.RpcError``, as :class:`AnswerRefused`
    is, so the scorer gives the policy's fallback; the message says which and why."""

    code = grpc.StatusCode.UNAVAILABLE


OUTAGE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
"""What a call to a platform that is down or unreachable ends with (a refusal is an answer:
it is up). Not DEADLINE_EXCEEDED: under load a few calls in a row miss the policy's
deadline (50 ms) while the platform is up, and opening on that would refuse joint scores
that would have made it; the deadline bounds what a slow platform costs already."""
NEUTRAL_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
"""What tells neither way (slow, or given up on): a probe that ends so keeps the breaker
open; any other call that does leaves the count as it is."""


class CircuitBreaker:
    """Stops calling a platform that is down, and finds it back at a bounded rate.

    Closed: every call goes. After ``failures`` calls in a row end in an outage code
    (:data:`OUTAGE_CODES`) it opens: calls are refused at once for ``base_s`` seconds,
    then one probe call goes; its success closes the breaker, its failure opens it again
    for twice as long (up to ``max_s``). So while the platform is down the bank sends at
    most one query per ``max_s`` seconds, and within ``max_s`` of it coming back the joint
    path serves again. Thread-safe; one breaker per platform session.
    """

    def __init__(self, failures: int = 3, base_s: float = 0.25, max_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or not 0 < base_s <= max_s:
            raise ValueError(f"need failures >= 1 and 0 < base_s <= max_s, got {failures}, "
                             f"{base_s}, {max_s}")
        self._threshold, self._base, self._max, self._clock = failures, base_s, max_s, clock
        self._lock = threading.Lock()
        self._failures = 0
        self._backoff = base_s
        self._retry_at: float | None = None  # None: closed
        self._probing = False

    @property
    def open(self) -> bool:
        """Whether calls are refused now (or only a probe goes)."""
        return self._retry_at is not None

    def admit(self) -> bool:
        """Whether a call may go now (closed, or the one probe of an open breaker)."""
        with self._lock:
            if self._retry_at is None:
                return True
            if self._probing or self._clock() < self._retry_at:
                return False
            self._probing = True
            return True

    def retry_in(self) -> float:
        """Seconds until the next probe (0 when closed)."""
        with self._lock:
            return 0.0 if self._retry_at is None else max(0.0, self._retry_at - self._clock())

    def done(self, code: grpc.StatusCode | None) -> None:
        """An admitted call ended: ``code`` None when it never went (nothing learnt)."""
        with self._lock:
            probing, self._probing = self._probing, False
            if code is None:
                return
            if code in NEUTRAL_CODES and not probing:
                return
            if code not in OUTAGE_CODES and code not in NEUTRAL_CODES:
                if self._retry_at is not None:
                    log.info("scoring: the platform answers again; joint scoring resumes")
                self._failures, self._backoff, self._retry_at = 0, self._base, None
                return
            self._failures += 1
            if probing or self._failures >= self._threshold:
                if self._retry_at is None:
                    log.warning("scoring: the platform failed %d calls in a row (%s); the "
                                "policy's fallback answers until a probe gets through",
                                self._failures, code.name)
                self._retry_at = self._clock() + self._backoff
                self._backoff = min(self._backoff * 2, self._max)


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    code = exc.code() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


class PlatformEmbeddings:
    """The bank's end of EmbeddingService: one scoring session, queries sealed both ways."""

    def __init__(self, channel: grpc.Channel, kit: StartupKit, psi: PsiResult,
                 platform_party: str = "platform",
                 breaker: CircuitBreaker | None = None) -> None:
        key = derive_session_key(kit.sealing_key, kit.peers[platform_party].sealing_public,
                                 psi.session_id).for_scoring()
        self._sealer = Sealer(key, psi.session_id, Direction.BANK_TO_PLATFORM)
        self._opener = WindowOpener(key, psi.session_id, Direction.PLATFORM_TO_BANK)
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self.breaker = breaker or CircuitBreaker()

    def _admit(self) -> None:
        if not self.breaker.admit():
            raise PlatformDown(
                "the platform failed the last calls; not asked again for "
                f"{self.breaker.retry_in():.2f} s (the policy's fallback answers)")

    @staticmethod
    def _not_recorded(exc: LedgerError) -> PlatformDown:
        return PlatformDown(f"query not sent: the bank's audit ledger cannot record it "
                            f"({exc})")

    def _sync_call(self, call: Callable[[], T]) -> T:
        """``call`` through the breaker; a query the ledger refused never went."""
        self._admit()
        code: grpc.StatusCode | None = grpc.StatusCode.OK
        try:
            return call()
        except LedgerError as exc:
            code = None
            raise self._not_recorded(exc) from None
        except grpc.RpcError as exc:
            code = _code(exc)
            raise
        except BaseException:
            code = None
            raise
        finally:
            self.breaker.done(code)

    async def _async_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """:meth:`_sync_call` for an awaited call."""
        self._admit()
        code: grpc.StatusCode | None = grpc.StatusCode.OK
        try:
            return await call()
        except LedgerError as exc:
            code = None
            raise self._not_recorded(exc) from None
        except grpc.RpcError as exc:
            code = _code(exc)
            raise
        except (asyncio.CancelledError, Exception):
            code = None
            raise
        finally:
            self.breaker.done(code)

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
        and AnswerRefused (one too) for an answer that does not open, PlatformDown (one
        too) for a query not sent: the platform taken for down, or not recorded."""
        request, number = self._request(version, handles, consented, purpose)
        reply = self._sync_call(lambda: self._stub.GetEmbeddings(request, timeout=timeout))
        return self._answer(reply, number, handles.size + len(consented), dim)

    async def get_async(
        self, stub: embedding_pb2_grpc.EmbeddingServiceStub, version: str,
        handles: np.ndarray, consented: Sequence[tuple[str, str]],
        *, purpose: int, timeout: float, dim: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`get` on ``stub``, a stub of a ``grpc.aio`` channel to the same platform:
        the session is in the sealed query, not in the channel."""
        request, number = self._request(version, handles, consented, purpose)
        reply = await self._async_call(lambda: stub.GetEmbeddings(request, timeout=timeout))
        return self._answer(reply, number, handles.size + len(consented), dim)


def first_row(answer: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """The one applicant's embedding row of a platform answer, None if not present."""
    emb, present = answer
    return emb[0] if present[0] else None
