"""The bank's audit ledger for Flower messages: a ClientApp mod, outermost of all.

Every instruction the coordinator sends and every reply the bank gives is recorded in
``<state-dir>/ledger`` before anything else sees it (so with SecAgg+ the reply recorded is
the masked one that leaves the node). The same ledger, open for the message, records the
bank's calls to the platform (:data:`CURRENT`). It also answers the coordinator's identity
challenge, signing its party name with the kit's key.

It knows a bank only by the two folders it needs (:class:`BankFolders`), so it never
imports the bank's package: ``bank_node.node.BankNode`` is one such thing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Protocol

from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedscore.federation.provision import StartupKit, load_kit
from fedscore.ledger.flower import (
    HELLO_RECORD,
    PURPOSE,
    content_digest,
    identity_statement,
    is_hello,
    kinds,
    message_round,
)
from fedscore.ledger.writer import Ledger

CURRENT: ContextVar[Ledger | None] = ContextVar("fedscore_bank_ledger", default=None)
"""The ledger of the message being handled (None outside one)."""

LEDGER_DIR = "ledger"
"""The ledger's folder inside the bank's state folder."""
LOCK_TIMEOUT_S = 60.0  # the previous message's process may still be closing the ledger

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]
"""A Flower ClientApp mod: (message, context, the next mod or the app) -> reply."""


class BankFolders(Protocol):
    """What the mod needs of a bank: its startup kit's folder and its state folder."""

    @property
    def kit_dir(self) -> Path:
        """The bank's startup kit (its key, its party name, the federation's peers)."""
        ...

    @property
    def state_dir(self) -> Path:
        """The bank-local folder whose ``ledger`` subfolder holds its ledger."""
        ...


def coordinator_of(kit: StartupKit) -> str:
    """The party name of the federation's one coordinator; ValueError if not exactly one."""
    names = [n for n, p in kit.peers.items() if p.role == "coordinator"]
    if len(names) != 1:
        raise ValueError(f"{kit.path}: the federation must have one coordinator, has {names}")
    return names[0]


def answer_hello(message: Message, kit: StartupKit) -> Message:
    """The bank's answer to the identity challenge: its party name, signed by its key."""
    meta = message.metadata
    signature = kit.signing_key.sign(identity_statement(meta.run_id, meta.dst_node_id,
                                                        kit.party))
    content = RecordDict({HELLO_RECORD: ConfigRecord({"party": kit.party,
                                                      "signature": signature})})
    return Message(content, reply_to=message)


def ledger_mod(nodes: Callable[[Context], BankFolders]) -> Mod:
    """A mod recording each message of the bank ``nodes(context)`` in its state folder."""

    def mod(message: Message, context: Context,
            call_next: Callable[[Message, Context], Message]) -> Message:
        return handle(nodes(context), message, context, call_next)

    return mod


def handle(node: BankFolders, message: Message, context: Context,
           call_next: Callable[[Message, Context], Message]) -> Message:
    """Record ``message``, answer it (the identity challenge here, else ``call_next``),
    record the reply. Module-level: Ray pickles the mod's closure, not this module."""
    kit = load_kit(node.kit_dir)
    peer = coordinator_of(kit)
    request_kind, reply_kind = kinds(message)
    round_ = message_round(message)
    with Ledger(node.state_dir / LEDGER_DIR, kit.signing_key, kit.party,
                lock_timeout_s=LOCK_TIMEOUT_S) as ledger:
        digest, size = content_digest(message)  # before any mod changes the content
        ledger.record_digest(peer, "received", request_kind, digest, size, round=round_,
                             purpose=PURPOSE)
        if is_hello(message):
            reply = answer_hello(message, kit)
        else:
            token = CURRENT.set(ledger)
            try:
                reply = call_next(message, context)
            finally:
                CURRENT.reset(token)
        digest, size = content_digest(reply)
        ledger.record_digest(peer, "sent", reply_kind, digest, size, round=round_,
                             purpose=PURPOSE)
    return reply
