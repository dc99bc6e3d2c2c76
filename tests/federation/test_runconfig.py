"""Run settings from Flower's run config: every refusal names its key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from bank_node.node import BankNode
from fedscore.federation.runconfig import ConfigError, RunSettings, require

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides() -> None:
    assert RunSettings.from_run_config({}) == RunSettings()
    s = RunSettings.from_run_config({"num-rounds": 8, "local-epochs": 2, "proximal-mu": 0.1,
                                     "run-id": "r-1", "lr": 1, "max-weight": 250000})
    assert (s.num_rounds, s.local_epochs, s.proximal_mu, s.run_id) == (8, 2, 0.1, "r-1")
    assert s.lr == 1.0 and isinstance(s.lr, float)  # an integer is fine where a float is due
    assert s.max_weight == 250000.0 and isinstance(s.max_weight, float)
    assert s.run_dir == Path("fedscore-state") / "r-1"


def test_round_trip_through_the_run_config() -> None:
    s = RunSettings(run_id="x", num_rounds=3, local_epochs=4, proximal_mu=0.5, seed=9,
                    batch_size=64, lr=1e-3, min_banks=3, max_weight=5e5, state_dir="/s",
                    coordinator_kit="/k", platform_address="h:1")
    cfg = s.to_run_config()
    assert set(cfg) == {f.name.replace("_", "-") for f in dataclasses.fields(RunSettings)}
    assert RunSettings.from_run_config(cfg) == s


def test_pyproject_app_config_matches_the_defaults() -> None:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    app_config = doc["tool"]["flwr"]["app"]["config"]
    assert app_config == RunSettings().to_run_config()
    assert RunSettings.from_run_config(app_config) == RunSettings()


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown key 'rounds'") as info:
        RunSettings.from_run_config({"rounds": 3})
    assert "num-rounds" in str(info.value)  # and the known keys are listed
    with pytest.raises(ConfigError, match="'epochs'"):
        RunSettings.from_run_config({"local-epochs": 2, "epochs": 3})
    # Flower's keys are kebab-case; a snake_case spelling is a typo, not an alias.
    with pytest.raises(ConfigError, match="unknown key 'num_rounds'"):
        RunSettings.from_run_config({"num_rounds": 3})


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("num-rounds", "5", "int"),
    ("num-rounds", 2.0, "int"),
    ("num-rounds", True, "int"),
    ("local-epochs", 1.5, "int"),
    ("proximal-mu", "0.1", "float"),
    ("proximal-mu", False, "float"),
    ("lr", None, "float"),
    ("run-id", 7, "str"),
    ("platform-address", b"h:1", "str"),
    ("seed", [1], "int"),
])
def test_wrong_type_is_named(key: str, value: object, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"run config {key} = .*expected {kind}"):
        RunSettings.from_run_config({key: value})


@pytest.mark.parametrize(("key", "value"), [
    ("num-rounds", 0),
    ("local-epochs", 0),
    ("proximal-mu", -0.01),
    ("seed", -1),
    ("seed", 2**62),
    ("batch-size", 0),
    ("lr", 0.0),
    ("lr", -1e-3),
    ("min-banks", 1),
    ("reply-timeout", 0.0),
    ("reply-timeout", float("inf")),
    ("max-weight", 0.0),
    ("run-id", ""),
])
def test_out_of_range_is_named(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"run config {key} = .* out of range"):
        RunSettings.from_run_config({key: value})
    with pytest.raises(ConfigError, match=f"run config {key} = "):
        RunSettings(**{key.replace("-", "_"): value})  # type: ignore[arg-type]


def test_train_config_follows_the_settings() -> None:
    cfg = RunSettings(seed=3, batch_size=64, lr=1e-3, local_epochs=4).train_config()
    assert (cfg.seed, cfg.batch_size, cfg.lr, cfg.epochs, cfg.refit) == (3, 64, 1e-3, 4, False)


def test_node_config_errors_name_the_key() -> None:
    good = {"bank": "bank-1", "data-dir": "/d", "kit-dir": "/k", "platform-address": "h:1",
            "state-dir": "/s"}
    node = BankNode.from_node_config(good)
    assert node == BankNode("bank-1", Path("/d"), Path("/k"), "h:1", Path("/s"))
    for key in good:
        with pytest.raises(ConfigError, match=f"SuperNode node config: {key} = None"):
            BankNode.from_node_config({k: v for k, v in good.items() if k != key})
        with pytest.raises(ConfigError, match=f"{key} = ''"):
            BankNode.from_node_config({**good, key: ""})
    with pytest.raises(ConfigError, match="x = 3; expected a non-empty string"):
        require({"x": 3}, "x", "somewhere")
