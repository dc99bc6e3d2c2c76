"""The bank's scoring server against a live platform node, both over mutual TLS: the
fixture the scoring tests share (``tests/bank_node/test_scoring.py``,
``tests/bank_node/test_scoring_guards.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bank_node.policy import Policy
from bank_node.scoring_service import build_scorer, create_server
from bank_node.scoring_store import CustomerStore
from fedscore.api.v1 import scoring_pb2_grpc
from fedscore.wire.transport import secure_channel
from platform_node.server import PlatformNode
from platform_node.server import create_server as create_platform_server
from tests.conftest import Federation, seeded_release

BANK = "bank-1"


@dataclass
class Live:
    """A platform node with two committed bottom-model versions, a release for each, and
    bank-1's scoring server on the first (default policy), with a stub of bank-1's own."""

    federation: Federation
    node: PlatformNode
    platform: grpc.Server
    platform_address: str
    versions: list[str]
    releases: list[Path]
    address: str
    stub: scoring_pb2_grpc.ScoringServiceStub
    state: Path


@pytest.fixture()
def live(federation: Federation, tmp_path: Path) -> Iterator[Live]:
    node = PlatformNode(federation.kit("platform"), federation.platform_table(),
                        state_dir=tmp_path / "platform-state")
    versions = [node.federation.store.save("scoring", r, node.initial_weights(seed=10 + r))
                for r in (1, 2)]
    platform, pport = create_platform_server("127.0.0.1:0", node)
    platform.start()
    releases = [seeded_release(federation, federation.data.bank_dirs[BANK],
                               tmp_path / f"release-{i}", v, seed=i)
                for i, v in enumerate(versions)]
    kit = federation.kit(BANK)
    scorer = build_scorer(kit, federation.data.bank_dirs[BANK], releases[0],
                          f"127.0.0.1:{pport}", Policy.default())
    server, port = create_server("127.0.0.1:0", scorer, kit)
    server.start()
    channel = secure_channel(f"127.0.0.1:{port}", kit, BANK)
    try:
        yield Live(federation, node, platform, f"127.0.0.1:{pport}", versions, releases,
                   f"127.0.0.1:{port}", scoring_pb2_grpc.ScoringServiceStub(channel),
                   tmp_path / "platform-state")
    finally:
        channel.close()
        server.stop(grace=None)
        platform.stop(grace=None)


def split_ids(live: Live) -> tuple[list[str], list[str]]:
    """The bank's store ids (inside, outside) the platform's users: inside ones are in
    the intersection."""
    store = CustomerStore.load_table(live.federation.data.bank_dirs[BANK])
    users = set(live.node.table.ids)
    inside = [str(i) for i in store.ids if i in users]
    outside = [str(i) for i in store.ids if i not in users]
    return inside, outside
