"""``fedscore vertical``: the platform and each bank, split learning end to end on one machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fedscore.ml.metrics import auc, ks
from fedscore.ml.training import TrainConfig


def prepare(scenario: str, out: Path, seed: int) -> Path:
    """Return a prepared scenario folder: ``scenario`` itself, or one made under ``out``."""
    from fedscore.data.scenarios import prepare_default_credit

    if scenario == "default-credit":
        data = out / "data"
        if not (data / "scenario.json").exists():
            prepare_default_credit(data, seed=seed)
        return data
    path = Path(scenario)
    if not (path / "platform").is_dir():
        raise ValueError(f"scenario {scenario!r}: not 'default-credit' and not a prepared folder")
    return path


def run_vertical(
    scenario: str, out: Path, *, seed: int = 0, progress: Console | None = None,
    cfg: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train every bank of ``scenario`` with the platform node and score the test sets.

    Provisions kits under ``out`` if needed, runs the platform as its own process and
    each bank here over mutual TLS, and writes ``out/results.json`` (returned too).
    """
    import torch

    from bank_node.trainer import run_bank
    from fedscore.cli.local import platform_process
    from fedscore.data.table import find_table
    from fedscore.federation.provision import load_kit, provision
    from fedscore.ledger.writer import Ledger

    torch.set_num_threads(1)
    cfg = cfg or TrainConfig(seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(scenario, out, seed)
    banks = sorted(p.name for p in data.iterdir() if p.is_dir() and p.name.startswith("bank-"))
    kits = out / "kits"
    if not (kits / "platform").exists():
        provision(kits, parties=("platform", *banks, "coordinator"))
    platform_dir = data / "platform"
    results = []
    ledgers = out / "ledgers"
    with platform_process(
        kits / "platform", find_table(platform_dir, "features"), platform_dir / "schema.toml",
        log=out / "platform.log", ledger_dir=ledgers / "platform",
    ) as address:
        for bank in banks:
            if progress:
                progress.print(f"[bold]{bank}[/bold]: PSI and split training with the platform...")
            kit = load_kit(kits / bank)
            with Ledger(ledgers / bank, kit.signing_key, kit.party) as ledger:
                results.append(run_bank(kit, data / bank, address, cfg,
                                        out=out / "models" / bank, ledger=ledger))
    labels = np.concatenate([r.test_labels for r in results])
    scores = np.concatenate([r.test_pd for r in results])
    report = {
        "scenario": scenario,
        "seed": seed,
        "banks": [r.summary() for r in results],
        "pooled_auc": auc(labels, scores),
        "pooled_ks": ks(labels, scores),
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    return report
