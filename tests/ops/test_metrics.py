"""The nodes' /metrics, scraped over HTTP during a real run, count exactly the messages
their audit ledgers record (issue 20's must-show test).

A platform node (ledgered), bank-1's scoring server (PSI with the platform, then joint
scoring: its ledger records its traffic with the platform) and bank-2's split training
against the same platform (PSI, epochs of sealed steps, commit), all over mutual TLS.
Each node serves its own /metrics endpoint; every metric carries the node's party, and
the counters are compared as the difference between a scrape before the run and one
after it, with the ledgers synced, while the servers are still up.
"""

from __future__ import annotations

import collections
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bank_node.policy import Policy
from bank_node.scoring_service import build_scorer, create_server
from bank_node.scoring_store import CustomerStore
from bank_node.trainer import run_bank
from fedscore.api.v1 import scoring_pb2, scoring_pb2_grpc
from fedscore.ledger.verify import read_ledger
from fedscore.ledger.writer import Ledger
from fedscore.ml.training import TrainConfig
from fedscore.ops import metrics
from fedscore.wire.transport import secure_channel
from platform_node.server import PlatformNode
from platform_node.server import create_server as create_platform_server
from tests.conftest import Federation, seeded_release

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_message(samples: Samples, name: str, party: str) -> collections.Counter[tuple[str, ...]]:
    """``name``'s samples of ``party`` by (peer, direction, kind)."""
    out: collections.Counter[tuple[str, ...]] = collections.Counter()
    for (sample, labels), value in samples.items():
        found = dict(labels)
        if sample == name and found.get("party") == party:
            out[(found["peer"], found["direction"], found["kind"])] += int(value)
    return out


def delta(after: collections.Counter[tuple[str, ...]], before: collections.Counter[tuple[str, ...]]
          ) -> dict[tuple[str, ...], int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


@pytest.fixture()
def endpoints() -> Iterator[dict[str, str]]:
    servers = {node: metrics.serve("127.0.0.1:0") for node in ("platform", "bank-1", "bank-2")}
    try:
        yield {node: s.url for node, s in servers.items()}
    finally:
        for s in servers.values():
            s.close()


def test_scraped_counters_equal_the_ledgers(federation: Federation, tmp_path: Path,
                                            endpoints: dict[str, str]) -> None:
    before = {node: scrape(url) for node, url in endpoints.items()}
    kits = {p: federation.kit(p) for p in ("platform", "bank-1", "bank-2")}
    ledgers = {p: Ledger(tmp_path / f"ledger-{p}", kits[p].signing_key, p) for p in kits}
    node = PlatformNode(kits["platform"], federation.platform_table(),
                        state_dir=tmp_path / "platform-state")
    version = node.federation.store.save("metrics", 1, node.initial_weights(seed=3))
    platform, pport = create_platform_server("127.0.0.1:0", node, ledger=ledgers["platform"])
    platform.start()
    address = f"127.0.0.1:{pport}"
    bank_dir = federation.data.bank_dirs["bank-1"]
    release = seeded_release(federation, bank_dir, tmp_path / "release", version, seed=3)
    link = secure_channel(address, kits["bank-1"], "platform", ledger=ledgers["bank-1"])
    scorer = build_scorer(kits["bank-1"], bank_dir, release, address, Policy.default(),
                          channel=link, ledger=ledgers["bank-1"])
    server, port = create_server("127.0.0.1:0", scorer, kits["bank-1"])
    server.start()
    channel = secure_channel(f"127.0.0.1:{port}", kits["bank-1"], "bank-1")
    try:
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        ids = [str(i) for i in CustomerStore.load_table(bank_dir).ids[:40]]
        for applicant in ids:
            stub.Score(scoring_pb2.ScoreRequest(applicant_id=applicant), timeout=10)
        result = run_bank(kits["bank-2"], federation.data.bank_dirs["bank-2"], address,
                          TrainConfig(epochs=1, seed=3), ledger=ledgers["bank-2"])
        assert result.aligned_train > 0
        for ledger in ledgers.values():
            ledger.sync()
        after = {n: scrape(url) for n, url in endpoints.items()}  # the servers are up
        for party, ledger in ledgers.items():
            entries = read_ledger(ledger.path)
            counted = collections.Counter((e.peer, e.direction, e.kind) for e in entries)
            sizes: collections.Counter[tuple[str, ...]] = collections.Counter()
            for e in entries:
                sizes[(e.peer, e.direction, e.kind)] += e.bytes
            got = delta(by_message(after[party], "fedscore_messages_total", party),
                        by_message(before[party], "fedscore_messages_total", party))
            assert got == dict(counted), party
            got_bytes = delta(by_message(after[party], "fedscore_message_bytes_total", party),
                              by_message(before[party], "fedscore_message_bytes_total", party))
            assert got_bytes == dict(sizes), party
            written = (value(after[party], "fedscore_ledger_entries_total", party=party)
                       - value(before[party], "fedscore_ledger_entries_total", party=party))
            assert written == len(entries), party
        # what the ledgers record of this run, by kind, as each side saw it
        platform_seen = by_message(after["platform"], "fedscore_messages_total", "platform")
        assert platform_seen[("bank-2", "received", "gradients")] > 0
        assert platform_seen[("bank-2", "sent", "embeddings")] > 0
        assert platform_seen[("bank-1", "sent", "embeddings")] > 0
        # the rest of the vocabulary, from the same scrapes
        def grew(party: str, name: str, **labels: str) -> float:
            return (value(after[party], name, party=party, **labels)
                    - value(before[party], name, party=party, **labels))
        assert grew("bank-1", "fedscore_grpc_requests_total", method="ScoringService/Score",
                    code="OK") == len(ids)
        assert grew("bank-1", "fedscore_grpc_request_seconds_count",
                    method="ScoringService/Score") == len(ids)
        assert grew("bank-1", "fedscore_scoring_decisions_total", method="Score") == len(ids)
        assert value(after["bank-1"], "fedscore_grpc_requests_in_flight", party="bank-1") == 0
        assert grew("platform", "fedscore_training_steps_total", peer="bank-2") > 0
        assert grew("platform", "fedscore_sessions_total", peer="bank-2") == 1
        assert grew("platform", "fedscore_psi_rows_total", peer="bank-2",
                    direction="received") > 0
        assert grew("platform", "fedscore_grpc_requests_total",
                    method="SplitLearningService/Step", code="OK") > 0
        assert value(after["platform"], "fedscore_psi_intersection_rows", party="platform",
                     peer="bank-2") == result.aligned_train + result.aligned_test
    finally:
        channel.close()
        server.stop(grace=None)
        link.close()
        platform.stop(grace=None)
        for ledger in ledgers.values():
            ledger.close()
