"""End to end with real processes: the platform node as its own process, banks over mTLS."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bank_node.psi_client import run_psi
from fedscore.cli.vertical import run_vertical
from fedscore.crypto.psi import PsiError
from fedscore.federation.provision import load_kit, provision
from fedscore.ml.training import TrainConfig
from fedscore.wire.transport import secure_channel
from tests.conftest import Federation, LivePlatform


def test_default_credit_trains_to_a_good_auc(tmp_path: Path) -> None:
    """The reference scenario, fixed seed, a short schedule: a generous bound on test AUC."""
    report = run_vertical("default-credit", tmp_path, seed=0,
                          cfg=TrainConfig(epochs=6, patience=2, seed=0))
    assert [b["party"] for b in report["banks"]] == ["bank-1", "bank-2", "bank-3"]
    assert report["pooled_auc"] > 0.74
    for bank in report["banks"]:
        assert bank["test_auc"] > 0.70
        assert 0.8 < bank["aligned_train"] / bank["n_train"] < 0.9  # 85% are platform users
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["pooled_auc"] == pytest.approx(report["pooled_auc"])
    assert (tmp_path / "models" / "bank-1" / "bank_model.pt").exists()


@pytest.mark.parametrize("trusts_our_ca", [False, True])
def test_a_bank_from_another_ca_is_refused(
    federation: Federation, live_platform: LivePlatform, tmp_path: Path, trusts_our_ca: bool
) -> None:
    """A certificate our CA did not sign gets no PSI, whether or not it trusts our CA."""
    provision(tmp_path / "other", parties=("platform", "bank-1"))
    stranger = load_kit(tmp_path / "other" / "bank-1")
    if trusts_our_ca:  # it verifies our server fine; only our server can refuse it
        stranger = dataclasses.replace(stranger, ca_pem=federation.kit("bank-1").ca_pem)
    with (
        secure_channel(live_platform.address, stranger, "platform") as channel,
        pytest.raises(PsiError, match="UNAVAILABLE"),
    ):
        run_psi(channel, ["U0000000000001", "U0000000000002"], party="bank-1")
    assert len(live_platform.node.sessions) == 0  # type: ignore[attr-defined]


def test_platform_refuses_to_start_without_a_valid_kit(
    federation: Federation, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "fedscore.cli.main", "platform", "serve",
           "--kit", str(tmp_path / "nowhere"), "--data", str(federation.data.platform_features),
           "--schema", str(federation.data.platform_schema), "--address", "127.0.0.1:0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "nowhere" in done.stderr
    assert "Traceback" not in done.stderr


def test_platform_refuses_to_start_without_a_ledger(federation: Federation) -> None:
    cmd = [sys.executable, "-m", "fedscore.cli.main", "platform", "serve",
           "--kit", str(federation.kits / "platform"), "--data",
           str(federation.data.platform_features), "--schema",
           str(federation.data.platform_schema), "--address", "127.0.0.1:0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "needs --ledger-dir or --state-dir" in done.stderr


def test_bank_kit_cannot_run_the_platform(federation: Federation, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fedscore.cli.main", "platform", "serve",
           "--kit", str(federation.kits / "bank-1"), "--data",
           str(federation.data.platform_features), "--schema",
           str(federation.data.platform_schema), "--address", "127.0.0.1:0",
           "--ledger-dir", str(tmp_path / "ledger")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "not the platform" in done.stderr


def test_bank_train_prints_one_line_per_epoch(
    federation: Federation, live_platform: LivePlatform, tmp_path: Path
) -> None:
    """Off a terminal, ``fedscore bank train`` shows every epoch of both passes as one line
    (epoch, validation AUC, time) on stderr, and stdout stays the one JSON summary."""
    import re

    from typer.testing import CliRunner

    from fedscore.cli.main import app

    result = CliRunner().invoke(app, [
        "bank", "train", "--kit", str(federation.kits / "bank-1"),
        "--data", str(federation.data.bank_dirs["bank-1"]), "--platform", live_platform.address,
        "--out", str(tmp_path / "out"), "--epochs", "3",
    ])
    assert result.exit_code == 0, result.output
    trained = re.findall(r"^bank-1 training: epoch (\d)/3, train loss [\d.]+, "
                         r"validation AUC (0\.\d{4}), ([\d.]+) s$", result.stderr, re.M)
    assert [int(e) for e, _, _ in trained] == [1, 2, 3]
    seconds = [float(s) for _, _, s in trained]
    assert seconds == sorted(seconds)
    summary = json.loads(result.stdout)
    refit = re.findall(r"^bank-1 refit on all rows: epoch (\d)/(\d), train loss [\d.]+, "
                       r"[\d.]+ s$", result.stderr, re.M)
    assert len(refit) == summary["best_epoch"] + 1
    assert all(int(total) == summary["best_epoch"] + 1 for _, total in refit)


def test_progress_bar_on_a_terminal() -> None:
    """On a terminal the same reports drive one rich bar, restarted for the refit pass."""
    import io

    from rich.console import Console

    from fedscore.cli.vertical import EpochProgress
    from fedscore.ml.training import EpochEnd

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with EpochProgress(console, "bank-9") as shown:
        shown(EpochEnd("train", 0, 4, 0.5, 0.7123, 1.0))
        shown(EpochEnd("train", 1, 4, 0.4, 0.7456, 2.0))
        assert shown._bar is not None and shown._task is not None
        task = shown._bar.tasks[0]
        assert (task.completed, task.total) == (2, 4)
        shown(EpochEnd("refit", 0, 2, 0.45, None, 3.0))
        task = shown._bar.tasks[0]
        assert (task.completed, task.total) == (1, 2)
        assert len(shown._bar.tasks) == 1
    text = screen.getvalue()
    assert "bank-9 refit on all rows" in text and "epoch 1/2" in text
    assert "validation AUC 0.7456" in text
