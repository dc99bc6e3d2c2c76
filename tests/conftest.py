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
from fedscore.federation.provision import StartupKit, load_kit, provision


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


def seeded_release(federation: Federation, bank_dir: Path, folder: Path,
                   platform_version: str, seed: int) -> Path:
    """A release as the coordinator writes one (pooled statistics, here the bank's own;
    signed by the coordinator), around seeded, untrained weights: serving must reproduce
    whatever model it is given."""
    import torch

    from bank_node.scoring_store import CustomerStore
    from fedscore.data.preprocess import Preprocessor
    from fedscore.federation.release import write_release
    from fedscore.federation.statistics import PooledStatistics
    from fedscore.ml.architecture import SplitArchitecture
    from fedscore.ml.model import BankModel, to_arrays

    store = CustomerStore.load_table(bank_dir)
    moments = Preprocessor.moments(store)
    pre = Preprocessor.fit(store, moments=moments)
    arch = SplitArchitecture()
    torch.manual_seed(seed)
    model = BankModel(arch.bank_bottom(pre.n_numeric, pre.cat_cardinalities), arch.top())
    with torch.no_grad():  # a visible "platform present" effect and spread-out PDs
        model.top.out.bias.fill_(-1.0)
        model.top.out.weight.mul_(8.0)
        model.top.default_platform.normal_(0, 1.0)
    write_release(
        folder, to_arrays(model), signer=federation.kit("coordinator").signing_key,
        signer_name="coordinator", run_id=f"scoring-{seed}", round_=1,
        platform_version=platform_version, fingerprints={"bank": pre.fingerprint()},
        metrics={}, config={},
        statistics=PooledStatistics(moments.layout, moments.sums.ravel(), 1),
    )
    return folder
