"""The coordinator's LedgeredGrid against the banks' ledger mod, without Ray: identity
challenges, and every instruction and reply on both ends' ledgers with the same digest."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, Metadata, RecordDict
from flwr.serverapp import Grid

from bank_node.node import BankNode
from fedscore.audit.verify import verify_ledgers
from fedscore.errors import FedscoreError
from fedscore.federation.provision import load_kit, provision
from fedscore.ledger.client_mod import handle
from fedscore.ledger.grid import IdentityError, LedgeredGrid
from fedscore.ledger.verify import read_ledger
from fedscore.ledger.writer import Ledger

RUN_ID = 77
PARTIES = ("platform", "bank-1", "bank-2", "coordinator")


class FakeGrid(Grid):
    """Delivers each message to ``nodes[dst]`` at once, as a SuperNode would."""

    def __init__(self, nodes: dict[int, Callable[[Message], Message]]) -> None:
        self.nodes = nodes
        self._ids = itertools.count()

    def set_run(self, run: Any) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Any:
        return SimpleNamespace(run_id=RUN_ID)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        meta = Metadata(run_id=RUN_ID, message_id=f"m{next(self._ids)}", src_node_id=0,
                        dst_node_id=dst_node_id, reply_to_message_id="", group_id=group_id,
                        created_at=0.0, ttl=ttl or 3600.0, message_type=message_type)
        return Message(content, metadata=meta)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return [self.nodes[m.metadata.dst_node_id](m) for m in messages]


def train_reply(message: Message, context: Context) -> Message:
    weights = message.content.array_records["model"].to_numpy_ndarrays()
    return Message(RecordDict({"update": ArrayRecord([w + 1 for w in weights])}),
                   reply_to=message)


def bank_node(root: Path, bank: str, kit: str | None = None
              ) -> Callable[[Message], Message]:
    node = BankNode(bank, root / "data", root / "kits" / (kit or bank), "unused:0",
                    root / "state" / bank)
    context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})
    return lambda m: handle(node, m, context, train_reply)


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grid")
    provision(root / "kits", parties=PARTIES)
    return root


def coordinator_ledger(root: Path) -> Ledger:
    kit = load_kit(root / "kits" / "coordinator")
    return Ledger(root / "state" / "coordinator", kit.signing_key, kit.party)


def test_every_message_is_recorded_by_both_ends_under_the_proved_bank(kits: Path,
                                                                     tmp_path: Path) -> None:
    root = tmp_path
    (root / "kits").symlink_to(kits / "kits")
    inner = FakeGrid({11: bank_node(root, "bank-1"), 22: bank_node(root, "bank-2")})
    kit = load_kit(root / "kits" / "coordinator")
    with coordinator_ledger(root) as ledger:
        grid = LedgeredGrid(inner, ledger, kit)
        model = ArrayRecord([np.arange(6, dtype=np.float32)])
        for round_ in (1, 2):
            msgs = [grid.create_message(RecordDict({"model": model}), "train", nid,
                                        str(round_)) for nid in grid.get_node_ids()]
            replies = list(grid.send_and_receive(msgs))
            assert len(replies) == 2
        assert grid.names == {11: "bank-1", 22: "bank-2"}
    folders = [root / "state" / "coordinator",
               *(root / "state" / b / "ledger" for b in ("bank-1", "bank-2"))]
    keys = {n: p.verify_key for n, p in kit.peers.items()}
    report = verify_ledgers(folders, keys)
    assert report.ok, (report.problems, [str(u) for u in report.unmatched])
    entries = read_ledger(folders[0] / "ledger.jsonl")
    assert [(e.peer, e.direction, e.kind, e.round) for e in entries[:4]] == [
        ("bank-1", "sent", "identity-challenge", 0), ("bank-1", "received", "identity", 0),
        ("bank-2", "sent", "identity-challenge", 0), ("bank-2", "received", "identity", 0)]
    updates = [e for e in entries if e.kind == "model-update"]
    assert [(e.peer, e.round) for e in updates] == [("bank-1", 1), ("bank-2", 1),
                                                    ("bank-1", 2), ("bank-2", 2)]
    sent_models = [e for e in entries if e.kind == "model"]
    assert len({e.payload_sha256 for e in sent_models}) == 1  # the same model to every bank
    assert all(e.bytes > 24 for e in sent_models)  # the content's deflated size


@pytest.mark.parametrize("claims, kit, message, code", [
    # signs with another key
    ("bank-2", "bank-1", "does not verify under bank-2's key", grpc.StatusCode.UNAUTHENTICATED),
    ("platform", "platform", "not a bank", grpc.StatusCode.PERMISSION_DENIED),
])
def test_a_node_must_prove_it_is_a_bank(kits: Path, tmp_path: Path, claims: str, kit: str,
                                        message: str, code: grpc.StatusCode) -> None:
    (tmp_path / "kits").symlink_to(kits / "kits")
    inner = FakeGrid({11: bank_node(tmp_path, claims, kit=kit)})
    if claims != kit:  # a kit that says it is bank-1, answering as bank-2
        node = BankNode(claims, tmp_path, tmp_path / "kits" / kit, "unused:0",
                        tmp_path / "state" / claims)
        ctx = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(),
                      run_config={})

        def liar(m: Message) -> Message:
            reply = handle(node, m, ctx, train_reply)
            reply.content.config_records["fedscore-hello"]["party"] = claims
            return reply

        inner.nodes[11] = liar
    with coordinator_ledger(tmp_path) as ledger:
        grid = LedgeredGrid(inner, ledger, load_kit(tmp_path / "kits" / "coordinator"))
        with pytest.raises(IdentityError, match=message) as info:
            grid.send_and_receive([grid.create_message(RecordDict(), "train", 11, "1")])
    assert isinstance(info.value, FedscoreError) and info.value.code is code


def test_two_nodes_cannot_be_the_same_bank(kits: Path, tmp_path: Path) -> None:
    (tmp_path / "kits").symlink_to(kits / "kits")
    inner = FakeGrid({11: bank_node(tmp_path, "bank-1"),
                      22: bank_node(tmp_path / "second", "bank-1")})
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "kits").symlink_to(kits / "kits")
    with coordinator_ledger(tmp_path) as ledger:
        grid = LedgeredGrid(inner, ledger, load_kit(tmp_path / "kits" / "coordinator"))
        with pytest.raises(IdentityError, match="another SuperNode already proved"):
            grid.send_and_receive([grid.create_message(RecordDict(), "train", n, "1")
                                   for n in (11, 22)])

