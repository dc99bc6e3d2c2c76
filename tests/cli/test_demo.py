"""The parts of ``fedscore demo`` that need no process (the run itself is in
test_deployment.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedscore.cli.demo import DemoError, DemoOptions, _events, write_plots
from fedscore.cli.main import app


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DemoOptions(banks=4), "exactly 3 banks"),
        (DemoOptions(scenario="synth", banks=1), "at least 2 banks"),
        (DemoOptions(scenario="nope"), "expected one of default-credit, synth"),
        (DemoOptions(run_config={"run-id": "x"}), "the demo sets these itself"),
        (DemoOptions(run_config={"dp-delta": 2.0}), "dp-delta"),
        (DemoOptions(run_config={"no-such-key": 1}), "unknown key 'no-such-key'"),
    ],
)
def test_options_are_checked(options: DemoOptions, message: str) -> None:
    with pytest.raises(DemoError, match=message):
        options.check()


def test_cli_refuses_before_starting_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--banks", "2", "--out", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "default-credit scenario has exactly 3 banks" in result.output
    assert not (tmp_path / "d").exists()


def test_events_follows_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    events = _events(path)
    assert next(events) == {"event": "tick"}  # no file yet
    path.write_text(json.dumps({"event": "started"}) + "\n" + '{"event": "evalu')
    assert next(events) == {"event": "started"}
    assert next(events) == {"event": "tick"}
    with path.open("a") as fh:
        fh.write('ated", "round": 1}\n')
    assert next(events) == {"event": "evaluated", "round": 1}


def test_plots(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hist = {
        bank: {"pos": np.histogram(rng.beta(3, 5, 300), 1000, (0, 1))[0].tolist(),
               "neg": np.histogram(rng.beta(2, 8, 2000), 1000, (0, 1))[0].tolist()}
        for bank in ("bank-1", "bank-2")
    }
    evaluations = [
        {"round": r, "pooled_auc": 0.7 + r / 100,
         "banks": [{"bank": "bank-1", "auc": 0.69 + r / 100}, {"bank": "bank-2", "auc": 0.7}]}
        for r in (1, 2, 3)
    ]
    paths = write_plots(tmp_path, evaluations, hist)
    assert [p.name for p in paths] == ["auc_per_round.png", "roc.png", "ks.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
