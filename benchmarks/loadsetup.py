"""A small federation for the load benchmarks (``isolation.py``, ``overload.py``): kits,
a synthetic population of two banks, a platform state with one committed bottom model,
and a signed release for bank-1 around seeded weights (serving cost does not depend on
what the weights learnt, so no training run is needed: the setup takes seconds)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from bank_node.scoring_store import CustomerStore
from fedscore.data.preprocess import Preprocessor
from fedscore.data.scenarios import ScenarioManifest
from fedscore.data.synth import synth_population
from fedscore.data.table import load_table
from fedscore.federation.provision import load_kit, provision
from fedscore.federation.release import write_release
from fedscore.federation.statistics import PooledStatistics
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.model import BankModel, to_arrays
from platform_node.model_store import ModelStore
from platform_node.server import PlatformNode

BANKS = ("bank-1", "bank-2")


@dataclass(frozen=True)
class Setup:
    """What :func:`prepare` made."""

    root: Path
    manifest: ScenarioManifest
    kits: Path
    state: Path  # the platform's state folder (its committed model)
    version: str  # that model's version
    release: Path  # bank-1's release, paired with it
    inside: list[str]  # bank-1's customers in its intersection with the platform


def prepare(root: Path, people: int = 20_000, seed: int = 7) -> Setup:
    """Everything the platform and bank-1's scoring server need under ``root``."""
    manifest = synth_population(root / "data", people=people, banks=len(BANKS), seed=seed)
    kits = root / "kits"
    provision(kits, parties=("platform", *BANKS, "coordinator"))
    table = load_table(manifest.platform_features, manifest.platform_schema)
    node = PlatformNode(load_kit(kits / "platform"), table)
    state = root / "platform-state"
    version = ModelStore(state).save("bench", 1, node.initial_weights(seed=seed))
    bank_dir = manifest.bank_dirs["bank-1"]
    store = CustomerStore.load_table(bank_dir)
    moments = Preprocessor.moments(store)
    pre = Preprocessor.fit(store, moments=moments)
    arch = SplitArchitecture()
    torch.manual_seed(seed)
    model = BankModel(arch.bank_bottom(pre.n_numeric, pre.cat_cardinalities), arch.top())
    release = root / "release"
    write_release(
        release, to_arrays(model), signer=load_kit(kits / "coordinator").signing_key,
        signer_name="coordinator", run_id="bench", round_=1, platform_version=version,
        fingerprints={"bank": pre.fingerprint()}, metrics={}, config={},
        statistics=PooledStatistics(moments.layout, moments.sums.ravel(), 1),
    )
    users = set(table.ids)
    inside = [str(i) for i in store.ids if i in users]
    return Setup(root, manifest, kits, state, version, release, inside)


@contextmanager
def score_server(setup: Setup, platform: str, *extra: str) -> Iterator[tuple[str, int]]:
    """``fedscore bank score-server`` for bank-1 on a free port (its default limits);
    yields its address and pid."""
    log = setup.root / "score.log"
    cmd = [sys.executable, "-m", "fedscore.cli.main", "bank", "score-server",
           "--kit", str(setup.kits / "bank-1"), "--data",
           str(setup.manifest.bank_dirs["bank-1"]), "--release", str(setup.release),
           "--platform", platform, "--address", "127.0.0.1:0",
           "--ledger-dir", str(setup.root / "score.ledger"), *extra]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            while line and "NOT_SERVING" in line:
                line = proc.stdout.readline()
            found = re.search(r"scoring server on (\S+?:\d+):", line)
            if found is None:
                raise RuntimeError(f"scoring server did not start: {line!r}; see {log}")
            yield found.group(1), proc.pid
        finally:
            proc.terminate()
            proc.wait(20)


def pid_of(*words: str) -> int:
    """The one process whose command line holds all of ``words``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and all(w.encode() in argv for w in words):
            found.append(int(proc.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one process with {words} in its command line: {found}")
    return found[0]


def rss_mb(pid: int) -> float:
    """Resident memory of a process now, MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
