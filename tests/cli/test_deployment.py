"""The federation on Flower's Deployment Engine: real SuperLink, SuperNode, ServerApp and
ClientApp processes on localhost, TLS on every API and SuperNode authentication on."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from fedscore.cli.demo import DemoOptions, run_demo
from fedscore.cli.deploy import (
    DeployError,
    Process,
    SuperNodeSpec,
    TLSFiles,
    flower_env,
    free_ports,
    local_deployment,
)
from fedscore.federation.provision import SUPERNODE_KEY, SUPERNODE_PUB, load_kit, provision
from fedscore.federation.release import MODEL_FILE, ReleaseError, verify_release


@contextmanager
def descendants_seen() -> Iterator[dict[psutil.Process, str]]:
    """Every process descending from this one while the block runs (sampled every 0.2 s)
    with its command, so a grandchild that outlives its parent is still found afterwards."""
    seen: dict[psutil.Process, str] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            for p in psutil.Process().children(recursive=True):
                if p not in seen:
                    with suppress(psutil.Error):
                        seen[p] = " ".join(Path(a).name for a in p.cmdline()[:2])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        stop.set()
        sampler.join()


def still_running(seen: dict[psutil.Process, str]) -> list[str]:
    alive = []
    for p, command in seen.items():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {command}")
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.timeout(300)
def test_federated_run_on_the_deployment_engine(tmp_path: Path) -> None:
    options = DemoOptions(scenario="synth", people=3000, banks=2, rounds=2, epochs=1, seed=3)
    with descendants_seen() as seen:
        summary = run_demo(tmp_path, options, Console(quiet=True))
    commands = " | ".join(seen.values())
    for started in ("flower-superlink", "flower-supernode", "flwr-serverapp", "flwr-clientapp"):
        assert started in commands
    assert not still_running(seen)

    run_dir = tmp_path / "state" / "coordinator" / "demo"
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    evaluated = [e for e in events if e["event"] == "evaluated"]
    assert [e["round"] for e in evaluated] == [1, 2]
    for e in evaluated:
        assert e["pooled_auc"] > 0.6, e
        assert sorted(b["bank"] for b in e["banks"]) == ["bank-1", "bank-2"]
    assert events[-1]["event"] == "released"
    assert summary["release_version"] == "demo-r0002"
    for plot in ("auc_per_round.png", "roc.png", "ks.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 1000

    # every message of every process (SuperNode ClientApps, ServerApp, platform) is on
    # both ends' ledgers; the reviewer's report names each boundary
    audit = summary["audit"]
    assert audit["ok"] and audit["entries"] > 100
    html = Path(audit["report"]).read_text()
    for kind in ("model-update", "statistics-sums", "embeddings", "gradients", "psi-result",
                 "federation-control", "identity"):
        assert kind in html

    release = run_dir / "release"
    key = load_kit(tmp_path / "kits" / "bank-1").peer("coordinator").verify_key
    manifest, weights = verify_release(release, key)
    assert manifest["round"] == 2 and weights
    model = release / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="altered"):
        verify_release(release, key)


def _refused(name: str, superlink: str, ca: Path, key: Path, logs: Path) -> str:
    """Run a SuperNode that the SuperLink should refuse; return its log once it gave up.

    (A refused SuperNode exits but leaves its SuperExec retrying for a while; stopping the
    process group ends it too.)"""
    cmd = [str(Path(sys.executable).parent / "flower-supernode"), "--superlink", superlink,
           "--root-certificates", str(ca), "--auth-supernode-private-key", str(key),
           "--port", str(free_ports(1)[0]), "--max-retries", "1"]
    node = Process.start(name, cmd, logs / f"{name}.log", flower_env())
    try:
        assert node.popen.wait(timeout=60) != 0
    finally:
        node.stop()
    return node.log.read_text()


def _tls(kits: Path) -> TLSFiles:
    c = kits / "coordinator"
    return TLSFiles(c / "tls.crt", c / "tls.key", c / "ca.crt")


def _bank(kits: Path, bank: str) -> SuperNodeSpec:
    k = kits / bank
    return SuperNodeSpec(bank, k / SUPERNODE_KEY, k / SUPERNODE_PUB, k / "ca.crt", {"bank": bank})


@pytest.mark.timeout(120)
def test_superlink_refuses_unregistered_and_foreign_supernodes(tmp_path: Path) -> None:
    kits = provision(tmp_path / "kits", parties=("bank-1", "bank-2", "coordinator"),
                     supernode_keys=True)
    other = provision(tmp_path / "other", parties=("bank-1", "coordinator"),
                      federation="other", supernode_keys=True)
    with descendants_seen() as seen, local_deployment(
        tmp_path / "deploy", _tls(kits), [_bank(kits, "bank-1")]
    ) as deployment:
        # bank-2's key was never registered with the SuperLink
        log = _refused("unregistered", deployment.address, kits / "bank-2" / "ca.crt",
                       kits / "bank-2" / SUPERNODE_KEY, tmp_path)
        assert "Failed to activate SuperNode" in log
        # a SuperNode of another federation does not trust this SuperLink's certificate
        log = _refused("foreign", deployment.address, other / "bank-1" / "ca.crt",
                       kits / "bank-1" / SUPERNODE_KEY, tmp_path)
        assert "CERTIFICATE_VERIFY_FAILED" in log
    assert not still_running(seen)


@pytest.mark.timeout(120)
def test_a_supernode_that_dies_is_named_with_its_log(tmp_path: Path) -> None:
    kits = provision(tmp_path / "kits", parties=("bank-1", "coordinator"), supernode_keys=True)
    (kits / "bank-1" / SUPERNODE_KEY).write_text("not a key\n")
    with descendants_seen() as seen, pytest.raises(DeployError) as failure, local_deployment(
        tmp_path / "deploy", _tls(kits), [_bank(kits, "bank-1")]
    ):
        pass
    message = str(failure.value)
    assert message.startswith("bank-1 stopped unexpectedly (exited with code")
    assert "Unable to parse the private key file" in message
    assert not still_running(seen)


def test_supernode_keys_are_in_bank_kits_only(tmp_path: Path) -> None:
    kits = provision(tmp_path, parties=("platform", "bank-1", "coordinator"), supernode_keys=True)
    assert (kits / "bank-1" / SUPERNODE_PUB).read_text().startswith("ecdsa-sha2-nistp256 ")
    assert (kits / "bank-1" / SUPERNODE_KEY).read_text().startswith(
        "-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (kits / "bank-1" / SUPERNODE_KEY).stat().st_mode & 0o777 == 0o600
    for party in ("platform", "coordinator"):
        assert not (kits / party / SUPERNODE_KEY).exists()
    assert load_kit(kits / "bank-1").party == "bank-1"
