"""The coordinator's audit ledger for Flower messages: a Grid that records what it carries.

Every workflow (round 0's statistics, the rounds, SecAgg+'s four stages, evaluation) talks
to the banks through the ServerApp's Grid, so wrapping it records each instruction as it
leaves and each reply as it arrives, with the same digests the banks' ledger mods record.
A node is named in the ledger by the bank it proved to be: before its first instruction
it gets an identity challenge, and its answer must be signed by a bank of the manifest.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedscore.crypto.primitives import SignatureError
from fedscore.errors import FedscoreError
from fedscore.federation.grid import DelegatingGrid
from fedscore.federation.provision import StartupKit
from fedscore.ledger.flower import (
    HELLO_RECORD,
    PURPOSE,
    content_digest,
    identity_statement,
    kinds,
    message_round,
)
from fedscore.ledger.writer import Ledger

IDENTIFY_TIMEOUT_S = 300.0
"""How long the coordinator waits for every SuperNode's answer to the identity challenge."""


class IdentityError(FedscoreError, RuntimeError):
    """A SuperNode did not prove which bank it is; the run stops.

    The class code is UNAUTHENTICATED: most often the node's answer carries no valid
    signature of a bank. A node that claims a party it may not be (not a bank of the
    manifest, or a bank another node already proved to be) raises it with
    PERMISSION_DENIED; a node that does not answer in time with DEADLINE_EXCEEDED.
    """

    code = grpc.StatusCode.UNAUTHENTICATED


class LedgeredGrid(DelegatingGrid):
    """Delegates to ``grid``; records every message to or from a bank in ``ledger``."""

    def __init__(self, grid: Grid, ledger: Ledger, kit: StartupKit) -> None:
        super().__init__(grid)
        self._ledger = ledger
        self._kit = kit
        self._names: dict[int, str] = {}
        self._requests: dict[int, Message] = {}  # the last instruction to each node

    # -- recorded ------------------------------------------------------------------------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Record each message as sent (identifying new nodes first), then push them."""
        messages = self._before_sending(messages)
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull the replies and record each as received."""
        replies = list(self._grid.pull_messages(message_ids))
        for reply in replies:
            self._received(reply)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Record each message as sent, send them, and record each reply as received."""
        messages = self._before_sending(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            self._received(reply)
        return replies

    @property
    def names(self) -> dict[int, str]:
        """node id -> the bank it proved to be."""
        return dict(self._names)

    def _before_sending(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        unknown = sorted({m.metadata.dst_node_id for m in messages} - set(self._names))
        if unknown:
            self.identify(unknown)
        for m in messages:
            node = m.metadata.dst_node_id
            kind, _ = kinds(m)
            digest, size = content_digest(m)
            self._ledger.record_digest(self._names[node], "sent", kind, digest, size,
                                       round=message_round(m), purpose=PURPOSE)
            self._requests[node] = m
        return messages

    def _received(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        request = self._requests.get(node)
        kind = kinds(request)[1] if request is not None else "unsolicited"
        digest, size = content_digest(reply)
        self._ledger.record_digest(self._names.get(node, f"node-{node}"), "received", kind,
                                   digest, size, round=message_round(reply), purpose=PURPOSE)

    def identify(self, node_ids: Iterable[int], timeout: float = IDENTIFY_TIMEOUT_S) -> None:
        """Challenge each node; keep the bank name it signed, or raise IdentityError."""
        run_id = self.run.run_id
        challenges = {
            nid: self._grid.create_message(
                RecordDict({HELLO_RECORD: ConfigRecord({"run": run_id})}), "query", nid,
                group_id="0",
            )
            for nid in node_ids
        }
        replies = {r.metadata.src_node_id: r for r in
                   self._grid.send_and_receive(list(challenges.values()), timeout=timeout)}
        silent = sorted(set(challenges) - set(replies))
        if silent:
            raise IdentityError(f"SuperNode(s) {silent} did not answer the identity "
                                f"challenge within {timeout:.0f} s",
                                code=grpc.StatusCode.DEADLINE_EXCEEDED)
        for nid, reply in replies.items():
            self._names[nid] = self._check_identity(nid, reply)
        for nid, challenge in challenges.items():
            name, reply = self._names[nid], replies[nid]
            kind, reply_kind = kinds(challenge)
            for direction, k, m in (("sent", kind, challenge),
                                    ("received", reply_kind, reply)):
                digest, size = content_digest(m)
                self._ledger.record_digest(name, direction, k, digest, size, round=0,
                                           purpose=PURPOSE)

    def _check_identity(self, nid: int, reply: Message) -> str:
        if reply.has_error() or HELLO_RECORD not in reply.content.config_records:
            raise IdentityError(f"SuperNode {nid} answered the identity challenge with "
                                f"{reply.error if reply.has_error() else 'no identity'}")
        record = reply.content.config_records[HELLO_RECORD]
        party, signature = record.get("party"), record.get("signature")
        if not isinstance(party, str) or not isinstance(signature, bytes):
            raise IdentityError(f"SuperNode {nid} answered the identity challenge without a "
                                "party name and signature")
        peer = self._kit.peers.get(party)
        if peer is None or peer.role != "bank":
            revoked = any(h.name == party and h.reason == "revoked"
                          for h in self._kit.trust.history)
            raise IdentityError(f"SuperNode {nid} claims to be {party!r}, which is not a bank "
                                f"of federation {self._kit.federation!r}"
                                f"{' (it was revoked)' if revoked else ''}",
                                code=grpc.StatusCode.PERMISSION_DENIED)
        if party in self._names.values():
            raise IdentityError(f"SuperNode {nid} claims to be {party!r}, which another "
                                "SuperNode already proved to be",
                                code=grpc.StatusCode.PERMISSION_DENIED)
        try:
            peer.verify_key.verify(signature, identity_statement(self.run.run_id, nid, party))
        except SignatureError:
            raise IdentityError(f"SuperNode {nid} claims to be {party!r} but its signature "
                                f"does not verify under {party}'s key") from None
        return party
