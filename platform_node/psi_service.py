"""The platform's PSI endpoint: a thin gRPC shell around :class:`fedscore.crypto.psi.PsiParty`.

Each ``Intersect`` stream gets a fresh engine (fresh scalar, fresh nonce). The engine computes
on its own thread while this handler's thread only ships its messages, so the platform's core
keeps blinding while gRPC sends. The peer's party comes from its TLS certificate, never from
what it claims in its hello (a mismatch is refused).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc
import numpy as np

from fedscore.api.v1 import psi_pb2, psi_pb2_grpc
from fedscore.crypto.psi import (
    DEFAULT_CHUNK_SIZE,
    PsiError,
    PsiIds,
    PsiMessage,
    PsiParty,
    PsiResult,
)
from fedscore.errors import FedscoreError
from fedscore.federation.provision import StartupKit
from fedscore.wire import serde
from fedscore.wire.transport import authorize_peer, peer_party

log = logging.getLogger(__name__)

UNKNOWN_PEER = "unknown"
OnComplete = Callable[[str, PsiResult], None]


def _peer_party(context: grpc.ServicerContext) -> str:
    """The caller's party from its client certificate; "unknown" only on insecure channels."""
    security = context.auth_context().get("transport_security_type", [])
    if b"ssl" not in security:
        return UNKNOWN_PEER
    return peer_party(context)


def _decoded(requests: Iterable[psi_pb2.IntersectRequest]) -> Iterator[PsiMessage]:
    for req in requests:
        yield serde.psi_from_pb(req)


class PsiServicer(psi_pb2_grpc.PsiServiceServicer):
    """Answers PSI sessions against the platform's id column.

    The ids are validated once here (duplicates raise PsiError at construction). An empty
    id column is accepted so the node can start, but every session is then refused with
    FAILED_PRECONDITION. ``on_complete(peer_party, result)`` runs before the stream ends
    with OK, so a bank that got OK knows the platform stored the session. With ``kit``
    (the platform node passes its own), only a bank of its federation may run PSI: any
    other caller is refused with PERMISSION_DENIED before a point is blinded, since the
    intersection itself is what PSI reveals.
    """

    def __init__(
        self,
        ids: np.ndarray | Sequence[str],
        on_complete: OnComplete,
        *,
        party: str = "platform",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        kit: StartupKit | None = None,
    ) -> None:
        self._ids = PsiIds(ids)
        self._kit = kit
        self._on_complete = on_complete
        self._party = party
        self._chunk_size = chunk_size

    def Intersect(
        self,
        request_iterator: Iterator[psi_pb2.IntersectRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[psi_pb2.IntersectResponse]:
        """Run one PSI session with the calling bank over the stream; stores it on success."""
        if self._kit is not None:
            authorize_peer(context, self._kit, "bank")
        peer = _peer_party(context)
        engine = PsiParty(  # PsiInputError (FAILED_PRECONDITION): an empty id column
            self._ids,
            party=self._party,
            role="platform",
            chunk_size=self._chunk_size,
            expected_peer=None if peer == UNKNOWN_PEER else peer,
        )
        outcome: dict[str, object] = {}

        def work() -> None:
            try:
                outcome["result"] = engine.run(_decoded(request_iterator))
            except BaseException as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=work, name=f"psi-{peer}", daemon=True)
        context.add_callback(lambda: engine.abort(PsiError("the PSI stream was terminated")))
        worker.start()
        for msg in engine.outgoing():
            yield serde.psi_to_pb(msg, psi_pb2.IntersectResponse)
        worker.join()
        error = outcome.get("error")
        if error is not None:
            if not context.is_active():
                return  # the bank cancelled or went away; nobody to tell
            log.warning("PSI with %s failed: %s", peer, error)
            if isinstance(error, FedscoreError):
                # its own code: INVALID_ARGUMENT for a PsiError, FAILED_PRECONDITION for our
                # ids, DEADLINE_EXCEEDED for a stream that went quiet (fedscore.wire.limits)
                raise error
            assert isinstance(error, BaseException)
            raise FedscoreError("PSI failed on the platform") from error  # INTERNAL
        result = outcome["result"]
        assert isinstance(result, PsiResult)
        try:
            self._on_complete(peer, result)
        except Exception as exc:
            log.exception("storing PSI session with %s failed", peer)
            raise FedscoreError("the platform could not store the session") from exc
        log.info(
            "PSI with %s: %d aligned of %d (theirs %d)",
            peer,
            result.size,
            len(self._ids),
            result.other_size,
        )


def add_psi_service(server: grpc.Server, servicer: PsiServicer) -> None:
    """Register ``servicer`` on ``server``."""
    psi_pb2_grpc.add_PsiServiceServicer_to_server(servicer, server)
