"""`bank train` survives restarts (issue 15, item 5): the platform node is a real process
(stopped and started again on the same address and state folder), the bank is
:func:`bank_node.trainer.run_bank`, what ``fedscore bank train`` runs.

* the platform stops after epoch 1 of the early-stopping pass: the bank retries with
  backoff until it is back, runs PSI again (the sessions died with the process), and
  goes on at epoch 2 from both sides' states of epoch 1;
* the bank stops after epoch 2 (its process would have died: the exception escapes
  ``run_bank``); a rerun with the same resume folder goes on at epoch 3, in the same
  platform session (no PSI);
* either way the final model is the uninterrupted run's, to the last bit: every state
  that shapes the training (weights, their average, the optimizers' moments, both
  sides' dropout streams, the shuffling stream, the early-stopping record and the
  platform's epoch snapshots) is kept and restored, and the computations are
  deterministic.

Transient codes only are retried: the retry policy's own tests are at the end.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from bank_node.platform_link import PlatformError
from bank_node.retry import Backoff, is_transient, retrying
from bank_node.trainer import BankRunResult, run_bank
from fedscore.cli.deploy import free_ports
from fedscore.data.scenarios import ScenarioManifest
from fedscore.data.synth import synth_population
from fedscore.federation.provision import load_kit, provision
from fedscore.ml.training import TrainConfig

CFG = TrainConfig(epochs=4, seed=0, batch_size=256)  # search 4 epochs, then the refit
FAST = Backoff(first_s=0.2, factor=2.0, max_s=1.0, attempts=60)
READY = "platform node listening on "


class Platform:
    """``fedscore platform serve`` on a fixed address and state folder; restartable."""

    def __init__(self, root: Path, data: ScenarioManifest, port: int, name: str) -> None:
        self.cmd = [sys.executable, "-m", "fedscore.cli.main", "platform", "serve",
                    "--kit", str(root / "kits" / "platform"),
                    "--data", str(data.platform_features),
                    "--schema", str(data.platform_schema),
                    "--address", f"127.0.0.1:{port}", "--state-dir", str(root / name)]
        self.address = f"127.0.0.1:{port}"
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        with self.log.open("a") as sink:
            for line in self.proc.stdout:
                sink.write(line)
                if line.startswith(READY):
                    break
            else:
                raise AssertionError(f"platform did not start: {self.log.read_text()}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@dataclass
class World:
    root: Path
    data: ScenarioManifest
    baseline: BankRunResult

    def run(self, platform: Platform, **kw: object) -> BankRunResult:
        return run_bank(load_kit(self.root / "kits" / "bank-1"), self.data.bank_dirs["bank-1"],
                        platform.address, CFG, backoff=FAST, **kw)  # type: ignore[arg-type]

    def platform(self, name: str) -> Platform:
        return Platform(self.root, self.data, free_ports(1)[0], name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("resume")
    data = synth_population(root / "data", people=3000, banks=1, seed=11)
    provision(root / "kits", parties=("platform", "bank-1"))
    w = World(root, data, None)  # type: ignore[arg-type]
    platform = w.platform("platform-baseline")
    platform.start()
    try:
        w.baseline = w.run(platform)
    finally:
        platform.stop()
    yield w


def _same_model(a: BankRunResult, b: BankRunResult) -> None:
    assert (a.best_epoch, a.epochs_run) == (b.best_epoch, b.epochs_run)
    np.testing.assert_array_equal(a.test_pd, b.test_pd)
    assert a.test_auc == b.test_auc


def test_a_platform_restart_mid_training_resumes_at_the_next_epoch(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    platform = world.platform("platform-restarted")
    platform.start()
    seen: list[tuple[str, int]] = []

    def restart_after_epoch_1(phase: str, epoch: int) -> None:
        seen.append((phase, epoch))
        if (phase, epoch) == ("search", 1):
            platform.stop()  # the bank's next call finds nobody
            threading.Timer(2.0, platform.start).start()

    caplog.set_level(logging.INFO)
    try:
        result = world.run(platform, on_epoch=restart_after_epoch_1)
    finally:
        platform.stop()
    text = caplog.text
    assert "the platform is unreachable (UNAVAILABLE); trying again" in text
    assert "PSI again" in text
    assert "resuming training at epoch 2 of the search pass" in text
    # every epoch ran once: none again from 0
    assert seen[:4] == [("search", e) for e in range(4)]
    assert len(seen) == len(set(seen))
    _same_model(result, world.baseline)


def test_a_bank_stopped_mid_training_resumes_from_its_last_epoch(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    platform = world.platform("platform-steady")
    platform.start()

    class Killed(Exception):
        pass

    def die_after_epoch_2(phase: str, epoch: int) -> None:
        if (phase, epoch) == ("search", 2):
            raise Killed

    caplog.set_level(logging.INFO)
    try:
        with pytest.raises(Killed):
            world.run(platform, resume_dir=tmp_path / "resume", on_epoch=die_after_epoch_2)
        assert (tmp_path / "resume" / "state.pt").is_file()
        caplog.clear()
        seen: list[tuple[str, int]] = []
        result = world.run(platform, resume_dir=tmp_path / "resume",
                           on_epoch=lambda p, e: seen.append((p, e)))
    finally:
        platform.stop()
    assert "resuming training at epoch 3 of the search pass" in caplog.text
    assert seen[0] == ("search", 3)  # epochs 0-2 were not run again
    assert result.psi_seconds == 0.0  # the same platform session: no PSI
    assert not (tmp_path / "resume" / "state.pt").exists()  # finished: nothing to resume
    _same_model(result, world.baseline)


# ---------------------------------------------------------------------------------------------
# the retry policy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "retried"), [
    (grpc.StatusCode.UNAVAILABLE, True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, True),
    (grpc.StatusCode.PERMISSION_DENIED, False),
    (grpc.StatusCode.UNAUTHENTICATED, False),
    (grpc.StatusCode.INVALID_ARGUMENT, False),
    (grpc.StatusCode.FAILED_PRECONDITION, False),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
])
def test_only_transient_codes_are_retried(code: grpc.StatusCode, retried: bool) -> None:
    calls: list[int] = []
    pauses: list[float] = []

    def call(attempt: int) -> str:
        calls.append(attempt)
        if len(calls) < 3:
            raise PlatformError("platform Step failed", code=code)
        return "done"

    backoff = Backoff(first_s=1.0, factor=2.0, max_s=3.0, attempts=5)
    if retried:
        assert retrying(call, backoff, sleep=pauses.append) == "done"
        assert calls == [0, 1, 2]
        assert 0.5 <= pauses[0] <= 1.0 and 1.0 <= pauses[1] <= 2.0  # growing, jittered
    else:
        with pytest.raises(PlatformError):
            retrying(call, backoff, sleep=pauses.append)
        assert calls == [0] and pauses == []
    assert is_transient(PlatformError("x", code=code)) is retried
    assert not is_transient(RuntimeError("no code"))


def test_retries_stop_after_the_last_attempt_with_capped_pauses() -> None:
    pauses: list[float] = []

    def call(attempt: int) -> None:
        raise PlatformError("platform down", code=grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(PlatformError, match="platform down"):
        retrying(call, Backoff(first_s=1.0, factor=10.0, max_s=4.0, attempts=4),
                 sleep=pauses.append)
    assert len(pauses) == 3 and all(p <= 4.0 for p in pauses) and pauses[-1] >= 2.0
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(first_s=0.0)
