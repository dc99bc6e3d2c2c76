"""The platform's per-bank sessions: what PSI aligned, the session key, the bottom model copy.

A session is created when a bank finishes PSI and belongs to that bank alone (the
peer name comes from its TLS certificate); every later call must come from the same
peer. The platform keeps one bottom-model copy per session, so banks never share
optimizer state or see each other's timing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from fedscore.crypto.primitives import Direction, Opener, Sealer, SessionKey, derive_session_key
from fedscore.crypto.psi import PsiResult
from fedscore.errors import FedscoreError
from fedscore.federation.provision import StartupKit
from fedscore.ml.training import PlatformBottom
from fedscore.ops import metrics

log = logging.getLogger(__name__)


class SessionError(FedscoreError):
    """A call names a session that belongs to another peer (PERMISSION_DENIED) or that
    does not exist (raised with UNAUTHENTICATED: the session id is the caller's credential
    for it, and the code is distinct from every other refusal, so the bank's scorer and
    trainer decide on it alone to run PSI again)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class StaleRoundError(SessionError):
    """A bank asked to open a session round that is not after the session's current one.

    ABORTED, in gRPC's sense of a failed sequencer check: the bank's saved round counter
    is behind the platform's session (its state was restored, or another process of the
    bank used the session), and since a round's key may only ever seal one round, the bank
    must not reuse the session but start again at a higher level: run PSI for a new one.
    The code is distinct from every other refusal of OpenSession, so the bank decides on it
    alone (never on the text), as it does on UNAUTHENTICATED for an unknown session.
    """

    code = grpc.StatusCode.ABORTED


@dataclass
class Session:
    """One bank's session: its PSI alignment, keys, round and bottom-model copy."""

    session_id: bytes
    peer: str
    psi: PsiResult
    key: SessionKey
    round: int = 0
    bottom: PlatformBottom | None = None
    opener: Opener | None = None
    sealer: Sealer | None = None
    committed_version: str | None = None
    # Federated training (run_id, federation_round > 0): the commit is counted in the
    # round's average, weighted by the training rows the platform forwarded itself.
    run_id: str = ""
    federation_round: int = 0
    train_rows: int = 0
    # Online scoring (a WindowOpener, a Sealer) under the session's scoring key, made on
    # the first scoring call.
    scoring: tuple[Any, Any] | None = None
    # One step stream at a time: the bottom model is not safe for concurrent updates.
    stream_lock: threading.Lock = field(default_factory=threading.Lock)

    def open_round(
        self, round_: int, bottom: PlatformBottom, *, run_id: str = "", federation_round: int = 0
    ) -> None:
        """Start session round ``round_`` with ``bottom``, under the round's own keys;
        StaleRoundError unless it is after the current round."""
        if self.bottom is not None and round_ <= self.round:
            raise StaleRoundError(
                f"round {round_} is not after the session's round {self.round}")
        self.round = round_
        self.bottom = bottom
        self.run_id, self.federation_round = run_id, federation_round
        self.train_rows = 0
        # A new sealer and opener per round under the round's own key: rounds only go
        # up, so no (key, nonce) pair repeats although every sealer counts from seq 0.
        key = self.key.for_round(round_)
        self.opener = Opener(key, self.session_id, Direction.BANK_TO_PLATFORM)
        self.sealer = Sealer(key, self.session_id, Direction.PLATFORM_TO_BANK)


class SessionRegistry:
    """Thread-safe map of session id to session, filled by PSI."""

    def __init__(self, kit: StartupKit) -> None:
        self._kit = kit
        self.party = kit.party
        self._sessions: dict[bytes, Session] = {}
        self._lock = threading.Lock()
        self.listeners: list[Callable[[Session], None]] = []

    @property
    def kit(self) -> StartupKit:
        """The platform's kit: its live manifest and revocation list check every caller."""
        return self._kit

    def on_psi_complete(self, peer: str, result: PsiResult) -> None:
        """Store the session of a finished PSI with ``peer``; SessionError for a party the
        manifest does not know as a bank (the PSI servicer refuses it first)."""
        info = self._kit.peers.get(peer)
        if info is None or info.role != "bank":
            raise SessionError(f"peer {peer!r} is not a bank of the federation manifest")
        key = derive_session_key(
            self._kit.sealing_key, self._kit.peers[peer].sealing_public, result.session_id
        )
        session = Session(session_id=result.session_id, peer=peer, psi=result, key=key)
        with self._lock:
            self._sessions[result.session_id] = session
        metrics.SESSIONS.labels(self.party, peer).inc()
        log.info("session opened with %s: %d customers aligned", peer, result.size,
                 extra={"event": "session-opened", "peer": peer, "aligned": result.size})
        for listener in self.listeners:
            listener(session)

    def get(self, session_id: bytes, peer: str) -> Session:
        """The session ``session_id`` of ``peer``; SessionError if unknown or another's."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            # its own code: a bank that gets it has lost the session (the platform
            # restarted) and runs PSI again, where any other refusal is final
            raise SessionError(f"unknown session {session_id.hex()}; run PSI first",
                               code=grpc.StatusCode.UNAUTHENTICATED)
        if session.peer != peer:
            raise SessionError(f"session {session_id.hex()} belongs to another party")
        return session

    def close(self, session_id: bytes, peer: str) -> None:
        """Forget the session (``peer``'s own only); its handles mean nothing any more."""
        self.get(session_id, peer)
        with self._lock:
            del self._sessions[session_id]
        log.info("session closed with %s", peer, extra={"event": "session-closed",
                                                        "peer": peer})

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
