"""``fedscore vertical``: the platform and each bank, split learning end to end on one machine."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from fedscore.ml.metrics import auc, ks
from fedscore.ml.training import EpochEnd, TrainConfig


class EpochProgress:
    """One bank's training progress: a rich bar on a terminal, one line per epoch otherwise
    (logs, CI, pipes), each with the epoch, the validation AUC and the time so far.

    A run on a large table takes many minutes; without this it printed nothing until the
    end (issue 17). Use as a context manager and pass the instance as ``progress``.
    """

    def __init__(self, console: Console, label: str) -> None:
        self.console, self.label = console, label
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._phase = ""

    def __enter__(self) -> EpochProgress:
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("epoch {task.completed}/{task.total}"),
                TextColumn("{task.fields[val]}"), TimeElapsedColumn(),
                console=self.console, transient=False,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    @staticmethod
    def _what(e: EpochEnd) -> str:
        return "training" if e.phase == "train" else "refit on all rows"

    def __call__(self, e: EpochEnd) -> None:
        """Show the epoch that just ended."""
        val = "" if e.val_auc is None else f"validation AUC {e.val_auc:.4f}"
        if self._bar is None:
            tail = f", {val}" if val else ""
            self.console.print(
                f"{self.label} {self._what(e)}: epoch {e.epoch + 1}/{e.epochs}, "
                f"train loss {e.train_loss:.4f}{tail}, {e.seconds:.1f} s",
                highlight=False, markup=False,
            )
            return
        description = f"{self.label} {self._what(e)}"
        if self._task is None:
            self._task = self._bar.add_task(description, total=e.epochs, val=val)
        elif e.phase != self._phase:
            self._bar.reset(self._task, total=e.epochs, description=description)
        self._phase = e.phase
        self._bar.update(self._task, completed=e.epoch + 1, val=val)


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
    each bank here over mutual TLS, and writes ``out/results.json``; returns it with the
    pooled test labels and PDs added (``test_labels``, ``test_pd``). With ``progress``,
    each bank's epochs are shown there (:class:`EpochProgress`).
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
            with Ledger(ledgers / bank, kit.signing_key, kit.party) as ledger, (
                EpochProgress(progress, bank) if progress else nullcontext(None)
            ) as shown:
                results.append(run_bank(kit, data / bank, address, cfg,
                                        out=out / "models" / bank, ledger=ledger,
                                        progress=shown))
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
    # per-row arrays for the caller (a benchmark's paired bootstrap), not for the file
    return {**report, "test_labels": labels, "test_pd": scores}
