"""The auditor's test: nothing the platform node sends carries a raw id or raw feature value,
and no node writes one to its log.

Unique canary values are planted in the platform's ids and features; a real platform
node (mutual TLS gRPC) runs PSI and split training with a bank; every message it
sends is captured as bytes at the application layer (after protobuf encoding,
before TLS) and every plaintext it seals is captured too. The canaries are then
searched for in every encoding a leak could take. The whole run's log (every node's, at
DEBUG, JSON lines and text alike: one line per message and per request) is searched for
every user's raw id and the canaries.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bank_node.trainer import BankTables, run_bank
from fedscore.api.v1 import split_learning_pb2
from fedscore.crypto.primitives import Direction, Sealer, hash_ids_to_points
from fedscore.data.table import PartyTable, write_table
from fedscore.ledger.taps import Flow, MessageTap
from fedscore.ledger.writer import Ledger
from fedscore.ml.training import TrainConfig
from fedscore.ops import logs
from platform_node.server import PlatformNode, create_server
from tests.conftest import Federation, seeded_release

N_CANARIES = 40
SPEND_CANARY = 7_654_321.125  # monthly_spend of canary row i is SPEND_CANARY + i
AGE_CANARY = 123.375  # age of canary row i is AGE_CANARY + i / 8
CAT_CANARY = "CANARY-CAT-q7Zk"


def canary_id(i: int) -> str:
    return f"CANARY-ID-9f3b1c-{i:04d}"


def _forms(value: float) -> list[bytes]:
    """Encodings of a number a careless implementation could put on the wire.

    Only ones long enough (7+ bytes) not to turn up by chance in megabytes of
    ciphertext; 4-byte float32 copies are checked on the decoded embeddings instead.
    """
    return [
        struct.pack("<d", value), struct.pack(">d", value),
        repr(value).encode(), f"{value:.3f}".encode(),
    ]


class Captured:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.sealed_plaintexts: list[bytes] = []
        self.log = ""  # every node's log lines, at DEBUG

    def tap(self, method: str, flow: Flow, data: bytes) -> None:
        if flow is Flow.SENT:
            self.sent.append((method, data))

    def everything(self) -> Iterator[bytes]:
        yield from (data for _, data in self.sent)
        yield from self.sealed_plaintexts


def find_leaks(captured: Captured, needles: dict[str, bytes]) -> list[str]:
    found = []
    for blob in captured.everything():
        for name, needle in needles.items():
            if needle in blob:
                found.append(name)
    return found


def _plant(table: PartyTable, rows: np.ndarray) -> PartyTable:
    ids = table.ids.copy()
    features = table.features.copy()
    for i, row in enumerate(rows):
        ids[row] = canary_id(i)
        features.loc[row, "monthly_spend"] = SPEND_CANARY + i
        features.loc[row, "age"] = AGE_CANARY + i / 8
        features.loc[row, "device_os"] = CAT_CANARY
    return PartyTable(table.schema, table.source, ids, features, table.labels)


@pytest.fixture(scope="module")
def audited_run(federation: Federation, tmp_path_factory: pytest.TempPathFactory,
                ) -> tuple[Captured, PartyTable, bytes]:
    tmp = tmp_path_factory.mktemp("privacy")
    platform = federation.platform_table()
    bank_dir = federation.data.bank_dirs["bank-1"]
    bank = BankTables.load(bank_dir)
    # Half the canaries are customers the bank shares with the platform, half are not.
    shared = np.flatnonzero(np.isin(platform.ids, bank.train.ids))[: N_CANARIES // 2]
    only_platform = np.flatnonzero(~np.isin(platform.ids, np.concatenate(
        [bank.train.ids, bank.test.ids])))[: N_CANARIES - shared.size]
    rows = np.concatenate([shared, only_platform])
    renamed = dict(zip(platform.ids[shared], (canary_id(i) for i in range(shared.size)),
                       strict=True))
    platform = _plant(platform, rows)

    bank_copy = tmp / "bank-1"
    shutil.copytree(bank_dir, bank_copy)
    train = bank.train
    train_ids = np.array([renamed.get(x, x) for x in train.ids], dtype=object)
    write_table(PartyTable(train.schema, train.source, train_ids, train.features, train.labels),
                bank_copy / train.source.name)

    captured = Captured()
    real_seal = Sealer.seal

    def spy(self: Sealer, plaintext: bytes, *, round: int, batch: int):  # type: ignore[no-untyped-def]
        if self.direction is Direction.PLATFORM_TO_BANK:
            captured.sealed_plaintexts.append(plaintext)
        return real_seal(self, plaintext, round=round, batch=batch)

    mp = pytest.MonkeyPatch()
    mp.setattr(Sealer, "seal", spy)
    node = PlatformNode(federation.kit("platform"), platform)
    sessions: list[bytes] = []
    node.sessions.listeners.append(lambda session: sessions.append(session.session_id))
    text, json_lines = io.StringIO(), io.StringIO()
    root_level = logging.getLogger().level
    handlers = [logs.configure("DEBUG", "text", stream=text)]
    json_handler = logging.StreamHandler(json_lines)
    json_handler.setFormatter(logs.JsonFormatter("platform"))
    logging.getLogger().addHandler(json_handler)
    handlers.append(json_handler)
    platform_kit, bank_kit = federation.kit("platform"), federation.kit("bank-1")
    ledgers = [Ledger(tmp / "ledger-platform", platform_kit.signing_key, "platform"),
               Ledger(tmp / "ledger-bank", bank_kit.signing_key, "bank-1")]
    server, port = create_server("127.0.0.1:0", node, interceptors=[MessageTap(captured.tap)],
                                 ledger=ledgers[0])
    server.start()
    try:
        result = run_bank(bank_kit, bank_copy, f"127.0.0.1:{port}",
                          TrainConfig(epochs=2, seed=1), ledger=ledgers[1])
        _score_everyone(federation, node, bank_copy, f"127.0.0.1:{port}", tmp,
                        [canary_id(i) for i in range(shared.size, N_CANARIES)])
    finally:
        server.stop(grace=None)
        for ledger in ledgers:
            ledger.close()
        mp.undo()
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(root_level)
    captured.log = text.getvalue() + json_lines.getvalue()
    assert result.aligned_train >= shared.size
    assert len(sessions) == 2  # training, then online scoring
    return captured, platform, sessions[0]


def _score_everyone(federation: Federation, node: PlatformNode, bank_dir: Path,
                    address: str, tmp: Path, strangers: list[str]) -> None:
    """Online scoring of every bank customer (one by one and in a batch), and of the
    platform-only canaries with consent tokens: the platform's embedding replies."""
    from bank_node.policy import Policy
    from bank_node.scoring_service import build_scorer
    from bank_node.scoring_store import CustomerStore
    from fedscore.crypto.consent import issue_consent

    version = node.federation.store.save("privacy", 1, node.initial_weights(seed=1))
    release = seeded_release(federation, bank_dir, tmp / "release", version, seed=1)
    scorer = build_scorer(federation.kit("bank-1"), bank_dir, release, address,
                          Policy.default())
    store = CustomerStore.load_table(bank_dir)
    ids = [str(i) for i in store.ids]
    for i in ids[:300]:
        scorer.score(i)
    scorer.score_batch(ids)
    features = {f.name: "1" if f.kind == "numeric" else (f.values or ("",))[0]
                for f in store.schema.features}
    key = federation.kit("platform").signing_key
    for applicant in strangers:
        token = issue_consent(key, issuer="platform", bank="bank-1", applicant_id=applicant,
                              ttl_s=600).encode()
        assert scorer.score(applicant, features, token).platform.name == "JOINED"


def test_traffic_was_captured(audited_run: tuple[Captured, PartyTable, bytes]) -> None:
    captured, _, _ = audited_run
    methods = {m.rsplit("/", 1)[-1] for m, _ in captured.sent}
    assert {"Intersect", "OpenSession", "Step", "EndEpoch", "CommitRound",
            "GetEmbeddings"} <= methods
    assert sum(len(d) for _, d in captured.sent) > 100_000
    assert len(captured.sealed_plaintexts) > 10


def test_detector_finds_a_planted_leak(audited_run: tuple[Captured, PartyTable, bytes]) -> None:
    """Positive control: the same search does find a canary where one is put."""
    captured, _, _ = audited_run
    leaky = Captured()
    leaky.sent = [*captured.sent, ("x", b"..." + struct.pack("<d", SPEND_CANARY + 3) + b"...")]
    assert find_leaks(leaky, {"spend": struct.pack("<d", SPEND_CANARY + 3)}) == ["spend"]


def test_no_canary_in_any_message_the_platform_sends(
    audited_run: tuple[Captured, PartyTable, bytes],
) -> None:
    captured, _, session_id = audited_run
    needles: dict[str, bytes] = {CAT_CANARY: CAT_CANARY.encode(), "CANARY": b"CANARY"}
    for i in range(N_CANARIES):
        needles[canary_id(i)] = canary_id(i).encode()
        for k, form in enumerate(_forms(SPEND_CANARY + i) + _forms(AGE_CANARY + i / 8)):
            needles[f"value {i} form {k}"] = form
        # The unblinded hash of an id is as good as the id to anyone who can guess ids.
        point = hash_ids_to_points([canary_id(i)], b"fedscore/psi/v1/" + session_id)
        needles[f"hash of {canary_id(i)}"] = point
    assert find_leaks(captured, needles) == []


def test_no_raw_id_of_any_user_is_sent(audited_run: tuple[Captured, PartyTable, bytes]) -> None:
    captured, platform, _ = audited_run
    pattern = re.compile(rb"U\d{13}")  # every synthetic id has this shape
    assert all(re.fullmatch(pattern, x.encode()) for x in platform.ids if x.startswith("U"))
    assert [b for b in captured.everything() if pattern.search(b)] == []


def test_embeddings_do_not_copy_raw_values(
    audited_run: tuple[Captured, PartyTable, bytes],
) -> None:
    """The only tensors the platform sends are embeddings; none equals a raw feature value."""
    captured, platform, _ = audited_run
    raw = platform.features[["age", "app_tenure_months", "monthly_spend", "orders_90d"]]
    raw_values = np.unique(raw.to_numpy(np.float64).ravel().astype(np.float32))
    # Values under 100 could meet an embedding value by chance; every canary is above it.
    raw_values = raw_values[np.abs(raw_values) >= 100.0]
    assert np.isin(np.float32([SPEND_CANARY, AGE_CANARY]), raw_values).all()
    embeddings = [
        np.frombuffer(split_learning_pb2.StepResult.FromString(p).embedding.data, "<f4")
        for p in captured.sealed_plaintexts
    ]
    values = np.concatenate(embeddings)
    assert values.size > 1000
    assert not np.isin(values, raw_values).any()


def test_no_raw_id_or_canary_in_any_log_line(
    audited_run: tuple[Captured, PartyTable, bytes], federation: Federation
) -> None:
    """Every node's log at DEBUG (a line per message and per request, lifecycle, sessions,
    refusals) names no user by raw id and holds no canary value, in either format."""
    captured, platform, _ = audited_run
    text = captured.log
    assert "fedscore.messages" in text and "fedscore.requests" in text  # DEBUG was on
    assert text.count("\n") > 100
    from bank_node.trainer import BankTables

    bank = BankTables.load(federation.data.bank_dirs["bank-1"])
    ids = {str(i) for i in platform.ids} | {str(i) for t in (bank.train, bank.test)
                                           for i in t.ids}
    leaked = sorted(i for i in ids if i in text)
    assert not leaked, leaked[:5]
    assert "CANARY" not in text
    for i in range(N_CANARIES):
        for form in (repr(SPEND_CANARY + i), f"{SPEND_CANARY + i:.3f}", repr(AGE_CANARY + i / 8)):
            assert form not in text
