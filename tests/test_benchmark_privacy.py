"""benchmarks/privacy.py on a small synthetic population: the leakage table has the shape
the audit report reads, DP lowers inversion, and the ledger arms verify end to end."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from threadpoolctl import threadpool_limits

from fedscore.data.scenarios import ScenarioManifest
from fedscore.data.synth import synth_population
from fedscore.data.table import find_table
from fedscore.federation.provision import provision
from fedscore.ml.training import TrainConfig
from fedscore.research.baselines import load_scenario

SMALL = TrainConfig(epochs=3, patience=3, refit=False, seed=0)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "privacy.py"
    spec = importlib.util.spec_from_file_location("privacy_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> ScenarioManifest:
    return synth_population(tmp_path_factory.mktemp("privacy") / "data", people=2000, banks=2,
                            seed=1)


def test_leakage_table_shape_and_dp_effect(bench: ModuleType,
                                           population: ScenarioManifest) -> None:
    scenario = load_scenario(population.root)
    rows, clip = bench.leakage_table(scenario, [2.0], 0, SMALL, log=lambda _: None)
    assert clip > 0
    assert [r["name"] for r in rows] == ["no_dp", "emb_sigma2"]
    base, noisy = rows
    names = set(scenario.platform.schema.numeric)
    for r in rows:
        assert set(r["inversion_r2"]) == names | {"mean_r2"}
        assert set(r["label_attack_auc"]) == {"norm_auc", "cosine_auc"}
        assert all(0.5 <= v <= 1.0 for v in r["label_attack_auc"].values())
        assert 0.5 < r["auc"] <= 1.0
        assert r["update_noise"] == 0.0
    assert base["embedding_clip"] is None and base["epsilon"] is None
    assert base["auc_cost"] == 0.0
    assert noisy["embedding_clip"] == clip and noisy["embedding_noise"] == 2.0
    assert noisy["auc_cost"] == pytest.approx(base["auc"] - noisy["auc"], abs=1e-5)
    # 4 releases per row (3 epochs + scoring), z = 2 against sensitivity 2C: a finite ε
    assert noisy["releases"] == SMALL.epochs + 1
    assert 0 < noisy["epsilon"] < 100
    assert noisy["inversion_r2"]["mean_r2"] < base["inversion_r2"]["mean_r2"] - 0.2


def test_ledger_arms_verify(bench: ModuleType, population: ScenarioManifest,
                            tmp_path: Path) -> None:
    provision(tmp_path / "kits", parties=("platform", *population.bank_dirs))
    out = bench.ledger_overhead(
        tmp_path, "bank-1", population.bank_dirs["bank-1"],
        find_table(population.platform_dir, "features"), population.platform_schema,
        2, 0, 1, 1, log=lambda _: None,
    )
    assert out["verified"], out["problems"]
    assert out["entries"]["platform"] == out["entries"]["bank-1"] > 0
    assert out["training_entries_per_run"] > 0
    assert len(out["runs_off_s"]) == len(out["runs_on_s"]) == len(out["pair_overheads"]) == 1
    assert len(out["aa_pair_overheads"]) == 1
    assert out["test_auc_off"] == out["test_auc_on"]  # the ledger changes nothing learned
    assert out["microbench"]["submit_us"] > 0
