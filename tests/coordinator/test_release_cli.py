"""`fedscore release verify`: a reviewer checks a release against the federation's manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from fedscore.cli.main import app
from fedscore.federation.provision import load_kit, provision
from fedscore.federation.release import MODEL_FILE, write_release
from fedscore.federation.statistics import PooledStatistics

STATS = PooledStatistics("ab" * 32, np.arange(7.0), 2)


def _flat(output: str) -> str:
    return output.replace("\n", "")  # rich wraps long lines at the terminal width


def test_release_verify_command(tmp_path: Path) -> None:
    kits = tmp_path / "kits"
    provision(kits, parties=("platform", "bank-1", "coordinator"))
    coordinator = load_kit(kits / "coordinator")
    release = tmp_path / "release"
    write_release(
        release, [np.ones((2, 3), np.float32)], signer=coordinator.signing_key,
        signer_name="coordinator", run_id="q4", round_=2, platform_version="r2-0123456789ab",
        fingerprints={"bank-1": "ab" * 32}, metrics={"pooled_auc": 0.7712}, config={},
        statistics=STATS,
    )
    runner = CliRunner()
    ok = runner.invoke(app, ["release", "verify", str(release), "--kit", str(kits / "bank-1")])
    assert ok.exit_code == 0, ok.output
    assert "release q4-r0002" in ok.output and "r2-0123456789ab" in ok.output
    assert "0.7712" in ok.output

    # Signed by another party's key (the platform's): refused.
    platform = load_kit(kits / "platform")
    write_release(
        release, [np.ones((2, 3), np.float32)], signer=platform.signing_key,
        signer_name="coordinator", run_id="q4", round_=2, platform_version="r2-0123456789ab",
        fingerprints={}, metrics={}, config={}, statistics=STATS,
    )
    bad = runner.invoke(app, ["release", "verify", str(release), "--kit", str(kits / "bank-1")])
    assert bad.exit_code == 1
    assert "signature does not verify" in _flat(bad.output)

    # Re-signed properly, then one weight byte changed: refused, naming the file.
    write_release(
        release, [np.ones((2, 3), np.float32)], signer=coordinator.signing_key,
        signer_name="coordinator", run_id="q4", round_=2, platform_version="r2-0123456789ab",
        fingerprints={}, metrics={}, config={}, statistics=STATS,
    )
    data = bytearray((release / MODEL_FILE).read_bytes())
    data[-5] ^= 1
    (release / MODEL_FILE).write_bytes(bytes(data))
    bad = runner.invoke(app, ["release", "verify", str(release), "--kit", str(kits / "bank-1")])
    assert bad.exit_code == 1
    assert "bank_model.npz: missing or altered" in _flat(bad.output)
