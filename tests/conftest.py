"""Shared fixtures: a small synthetic federation (data + startup kits) and a live platform node."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fedscore.data.scenarios import ScenarioManifest
from fedscore.data.synth import synth_population
from fedscore.data.table import PartyTable, load_table
from fedscore.provision import StartupKit, load_kit, provision


@dataclass(frozen=True)
class Federation:
    data: ScenarioManifest
    kits: Path

    def kit(self, party: str) -> StartupKit:
        return load_kit(self.kits / party)

    def platform_table(self) -> PartyTable:
        return load_table(self.data.platform_features, self.data.platform_schema)


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    manifest = synth_population(root / "data", people=4000, banks=2, seed=7)
    provision(root / "kits", parties=("platform", "bank-1", "bank-2", "coordinator"))
    return Federation(manifest, root / "kits")


@dataclass
class LivePlatform:
    address: str
    node: object
    server: grpc.Server


@pytest.fixture()
def live_platform(federation: Federation) -> Iterator[LivePlatform]:
    from platform_node.server import PlatformNode, create_server

    node = PlatformNode(federation.kit("platform"), federation.platform_table())
    server, port = create_server("127.0.0.1:0", node)
    server.start()
    try:
        yield LivePlatform(f"127.0.0.1:{port}", node, server)
    finally:
        server.stop(grace=None)
