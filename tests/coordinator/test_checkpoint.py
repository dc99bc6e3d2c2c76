"""The coordinator's checkpoints: whole round folders only, atomically replaced, and the
append-only progress log that ``fedscore demo`` tails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coordinator import checkpoint as checkpoint_module
from coordinator.checkpoint import CheckpointError, Checkpoints


def _arrays(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32),
            np.arange(5, dtype=np.int64) * seed]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    cps = Checkpoints(tmp_path / "run")
    arrays = _arrays(1)
    folder = cps.save(1, arrays, "r1-abc", {"banks": 3, "platform_rows": 1234, "fit_s": 1.5})
    assert folder == tmp_path / "run" / "round-0001"
    assert sorted(p.name for p in folder.iterdir()) == ["round.json", "weights.npz"]
    got = cps.load(1)
    assert got.round == 1
    assert got.platform_version == "r1-abc"
    assert _same(got.arrays, arrays)
    assert got.info == {"round": 1, "platform_version": "r1-abc", "banks": 3,
                        "platform_rows": 1234, "fit_s": 1.5}
    # the documented file layout: arrays in order, named arr_0, arr_1, ...
    with np.load(folder / "weights.npz") as z:
        assert sorted(z.files) == ["arr_0", "arr_1", "arr_2"]
        assert np.array_equal(z["arr_1"], arrays[1])


def test_latest_and_rounds(tmp_path: Path) -> None:
    cps = Checkpoints(tmp_path / "run")
    assert cps.rounds() == []
    assert cps.latest() is None
    for r in (1, 2, 10):
        cps.save(r, _arrays(r), f"r{r}", {})
    assert cps.rounds() == [1, 2, 10]
    latest = cps.latest()
    assert latest is not None
    assert latest.round == 10 and latest.platform_version == "r10"
    assert _same(latest.arrays, _arrays(10))


def test_save_replaces_a_round_atomically(tmp_path: Path) -> None:
    cps = Checkpoints(tmp_path / "run")
    cps.save(1, _arrays(1), "old", {"banks": 2})
    cps.save(1, _arrays(2), "new", {"banks": 3})
    got = cps.load(1)
    assert got.platform_version == "new" and got.info["banks"] == 3
    assert _same(got.arrays, _arrays(2))
    # no temporary folder or file left behind
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["round-0001"]
    assert sorted(p.name for p in (tmp_path / "run" / "round-0001").iterdir()) == [
        "round.json", "weights.npz"]


def test_a_failed_save_keeps_the_old_round(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cps = Checkpoints(tmp_path / "run")
    cps.save(1, _arrays(1), "old", {"banks": 2})
    real = checkpoint_module.atomic_write

    def crash_on_json(path: Path, data: bytes) -> None:
        if path.name == "round.json":
            raise OSError("disk full (simulated)")
        real(path, data)

    monkeypatch.setattr(checkpoint_module, "atomic_write", crash_on_json)
    with pytest.raises(OSError, match="simulated"):
        cps.save(1, _arrays(2), "new", {"banks": 3})
    with pytest.raises(OSError, match="simulated"):
        cps.save(2, _arrays(2), "r2", {})
    monkeypatch.undo()
    got = cps.load(1)
    assert got.platform_version == "old" and _same(got.arrays, _arrays(1))
    assert cps.rounds() == [1]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["round-0001"]


def test_partial_and_temporary_folders_are_ignored(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cps = Checkpoints(run)
    cps.save(1, _arrays(1), "r1", {})
    # what a crash can leave: save()'s temporary folder (a whole one, even) ...
    tmp = run / ".round-0002.k3j4"
    tmp.mkdir()
    for name in ("weights.npz", "round.json"):
        (tmp / name).write_bytes((run / "round-0001" / name).read_bytes())
    # ... a round folder missing a file, and stray names
    (run / "round-0003").mkdir()
    (run / "round-0003" / "weights.npz").write_bytes(b"")
    (run / "round-0004").mkdir()
    (run / "round-0004" / "round.json").write_text("{}")
    (run / "round-12").mkdir()
    (run / "round-0005.json").write_text("{}")
    (run / "round-0001" / ".weights.npz.x1.tmp").write_bytes(b"partial")
    assert cps.rounds() == [1]
    latest = cps.latest()
    assert latest is not None and latest.round == 1


def test_unreadable_round_names_the_file(tmp_path: Path) -> None:
    cps = Checkpoints(tmp_path / "run")
    cps.save(1, _arrays(1), "r1", {})
    cps.save(2, _arrays(2), "r2", {})
    (tmp_path / "run" / "round-0002" / "weights.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"round-0002/weights\.npz"):
        cps.latest()
    (tmp_path / "run" / "round-0001" / "round.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"round-0001/round\.json"):
        cps.load(1)


def test_update_adds_keys_and_keeps_the_rest(tmp_path: Path) -> None:
    cps = Checkpoints(tmp_path / "run")
    cps.save(3, _arrays(3), "r3", {"banks": 3, "fit_s": 2.0})
    weights = (tmp_path / "run" / "round-0003" / "weights.npz").read_bytes()
    cps.update(3, evaluation={"pooled_auc": 0.8, "banks": [{"bank": "bank-1"}]},
               histograms={"bank-1": {"pos": [1, 2], "neg": [3, 4]}})
    cps.update(3, banks=4)
    got = cps.load(3)
    assert got.info == {
        "round": 3, "platform_version": "r3", "banks": 4, "fit_s": 2.0,
        "evaluation": {"pooled_auc": 0.8, "banks": [{"bank": "bank-1"}]},
        "histograms": {"bank-1": {"pos": [1, 2], "neg": [3, 4]}},
    }
    assert (tmp_path / "run" / "round-0003" / "weights.npz").read_bytes() == weights
    assert sorted(p.name for p in (tmp_path / "run" / "round-0003").iterdir()) == [
        "round.json", "weights.npz"]
    with pytest.raises(FileNotFoundError):
        cps.update(4, evaluation={})


def test_progress_log_lines(tmp_path: Path) -> None:
    cps = Checkpoints(tmp_path / "new" / "run")  # the folder is made on first use
    cps.log("started", rounds=2, settings={"num-rounds": 2})
    cps.log("trained", round=1, platform_version="r1-x", fit_s=1.25)
    cps.log("released", version="run-r0001")
    raw = cps.progress.read_text(encoding="utf-8")
    assert raw.endswith("\n") and raw.count("\n") == 3
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [d["event"] for d in lines] == ["started", "trained", "released"]
    assert all(isinstance(d["time"], float) for d in lines)
    assert lines[0]["time"] <= lines[1]["time"] <= lines[2]["time"]
    assert {k: v for k, v in lines[1].items() if k != "time"} == {
        "event": "trained", "round": 1, "platform_version": "r1-x", "fit_s": 1.25}
    assert lines[0]["settings"] == {"num-rounds": 2}
    # a second Checkpoints on the same folder appends, never truncates
    Checkpoints(tmp_path / "new" / "run").log("resumed", round=1)
    assert [json.loads(x)["event"] for x in cps.progress.read_text().splitlines()] == [
        "started", "trained", "released", "resumed"]
