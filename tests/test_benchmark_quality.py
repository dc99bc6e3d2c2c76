"""benchmarks/quality_gate.py's decision: the federated mean over seeds may fall at most
the tolerance below the centralized mean; below it the gate exits 1 and says why."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(scope="module")
def gate() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_gate.py"
    spec = importlib.util.spec_from_file_location("quality_gate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(*pairs: tuple[float, float]) -> list[dict[str, Any]]:
    return [{"seed": s, "federated_auc": f, "centralized_auc": c, "seconds": 1.0}
            for s, (f, c) in enumerate(pairs)]


def test_verdict_is_on_the_means(gate: ModuleType) -> None:
    # one seed far below, the other above: the mean gap is -0.002, inside the tolerance
    ok = gate.verdict(rows((0.770, 0.778), (0.782, 0.778)), 0.003)
    assert ok["passed"] and ok["federated_minus_centralized"] == pytest.approx(-0.002)
    assert gate.verdict(rows((0.775, 0.778)), 0.003)["passed"]  # exactly at the bound
    bad = gate.verdict(rows((0.7749, 0.778), (0.7749, 0.778)), 0.003)
    assert not bad["passed"] and bad["federated_minus_centralized"] == pytest.approx(-0.0031)


@pytest.mark.parametrize(("federated", "code"), [(0.776, 0), (0.774, 1)])
def test_exit_status_and_reason(gate: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str], federated: float,
                                code: int) -> None:
    monkeypatch.setattr(gate, "one_seed", lambda seed: rows(*[(federated, 0.778)] * 3)[seed])
    assert gate.main(["--seeds", "0-2"]) == code
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["seeds"] == [0, 1, 2] and result["passed"] is (code == 0)
    assert ("quality gate FAILED: federated mean AUC 0.77400 is 0.00400 below the centralized"
            in err) is (code == 1)


def test_bad_seeds_are_named(gate: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        gate.main(["--seeds", "0-x"])
    assert exit_.value.code == 2 and "'0-x' is not a seed" in capsys.readouterr().err
