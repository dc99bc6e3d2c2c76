"""A federation at scale: many banks on a large synthetic population, on one machine.

``fedscore.data.synth`` writes the population (default 1,000,000 people, 20 banks of
unequal sizes, 85% of people on the platform); the platform node runs as its own process
(mutual TLS gRPC), the coordinator and the banks on Flower's Simulation Engine (Ray, one
CPU per simulated bank, so as many banks run at once as the machine has cores and Ray
queues the rest), FedAvg under SecAgg+. Round 1 holds every bank's PSI with the platform
(each bank session blinds the platform's ~850,000 ids), which dominates the time.

Reported: wall time per phase (synthesis, platform start-up, the federation), the
coordinator's ``fit_s`` per round, pooled test AUC, row counts, and peak memory: the
resident set size of this process and all its descendants (the platform node, Ray's
processes and workers), sampled every 0.5 s with psutil, as the peak of their sum
(shared pages are counted once per process, so this overstates) and the peak of the
largest single process, plus the platform node's own peak.

    python benchmarks/scale.py [--people 1000000] [--banks 20] [--rounds 1] [--epochs 1]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bank_node.node import BankNode
from coordinator.checkpoint import Checkpoints
from fedscore.cli.local import platform_process
from fedscore.cli.simulation import simulate
from fedscore.data.synth import synth_population
from fedscore.federation.provision import provision
from fedscore.federation.runconfig import RunSettings

MB = 1 << 20


class MemoryWatch:
    """Peak RSS of this process and its descendants, sampled on a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_total = 0
        self.peak_single = 0
        self.peak_self = 0
        self.peak_platform = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        """Take one RSS sample of this process tree and update the peaks."""
        me = psutil.Process(os.getpid())
        procs = [me, *me.children(recursive=True)]
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
                cmd = p.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += rss
            self.peak_single = max(self.peak_single, rss)
            if p.pid == me.pid:
                self.peak_self = max(self.peak_self, rss)
            elif "fedscore.cli.main" in cmd and "platform" in cmd:
                self.peak_platform = max(self.peak_platform, rss)
        self.peak_total = max(self.peak_total, total)
        self.peak_processes = max(self.peak_processes, len(procs))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    """Synthesise the population, run the federation, watch memory; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--banks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name, MemoryWatch() as mem:
        root = args.keep or Path(tmp_name)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        manifest = synth_population(root / "data", people=args.people, banks=args.banks,
                                    seed=args.seed)
        synth_s = time.perf_counter() - t0
        banks = list(manifest.bank_dirs)
        stats = manifest.banks
        train_rows = {b: stats[b].train_rows for b in banks}
        _say(f"synthesized {args.people} people, {args.banks} banks in {synth_s:.1f} s; "
             f"platform {manifest.platform_rows} rows; bank train rows "
             f"{min(train_rows.values())}..{max(train_rows.values())}")
        provision(root / "kits", parties=("platform", *banks, "coordinator"), force=True)

        t0 = time.perf_counter()
        with platform_process(root / "kits" / "platform", manifest.platform_features,
                              manifest.platform_schema, log=root / "platform.log",
                              state_dir=root / "platform-state", timeout=600) as address:
            platform_start_s = time.perf_counter() - t0
            _say(f"platform node up in {platform_start_s:.1f} s at {address}")
            settings = RunSettings(
                run_id="scale", num_rounds=args.rounds, local_epochs=args.epochs,
                seed=args.seed, min_banks=args.banks,
                # SecAgg+ scales each update by rows / max-weight: it must cover the
                # largest bank
                max_weight=float(max(100_000, max(train_rows.values()))),
                state_dir=str(root / "coordinator"),
                coordinator_kit=str(root / "kits" / "coordinator"), platform_address=address,
            )
            nodes = [BankNode(b, manifest.bank_dirs[b], root / "kits" / b, address,
                              root / "bank-state" / b) for b in banks]
            t0 = time.perf_counter()
            simulate(settings, nodes)
            federation_s = time.perf_counter() - t0
        mem.sample()
        events = [json.loads(x) for x in (settings.run_dir / "progress.jsonl").read_text()
                  .splitlines()]
        last = Checkpoints(settings.run_dir).latest()
        assert last is not None and last.round == args.rounds, "the run did not finish"
        evaluation: dict[str, Any] = last.info["evaluation"]

    result = {
        "people": args.people,
        "banks": args.banks,
        "rounds": args.rounds,
        "local_epochs": args.epochs,
        "platform_rows": manifest.platform_rows,
        "bank_train_rows": sum(train_rows.values()),
        "bank_test_rows": sum(stats[b].test_rows for b in banks),
        "largest_bank_train_rows": max(train_rows.values()),
        "smallest_bank_train_rows": min(train_rows.values()),
        "platform_rows_per_round": last.info["platform_rows"],
        "cpus": os.cpu_count(),
        "synth_s": round(synth_s, 1),
        "platform_start_s": round(platform_start_s, 1),
        "federation_s": round(federation_s, 1),
        "wall_s": round(synth_s + platform_start_s + federation_s, 1),
        "fit_s": [round(float(e["fit_s"]), 1) for e in events if e["event"] == "trained"],
        "pooled_auc": round(float(evaluation["pooled_auc"]), 5),
        "weighted_auc": round(float(evaluation["weighted_auc"]), 5),
        "peak_rss_total_mb": round(mem.peak_total / MB),
        "peak_rss_largest_process_mb": round(mem.peak_single / MB),
        "peak_rss_this_process_mb": round(mem.peak_self / MB),
        "peak_rss_platform_mb": round(mem.peak_platform / MB),
        "peak_processes": mem.peak_processes,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
