"""The federation on default-credit (3 banks) against centralized and bank-alone training.

* federated: the coordinator's ServerApp and the banks' ClientApp on Flower's Simulation
  Engine (Ray, one simulated SuperNode per bank), the platform node a real process (mutual
  TLS gRPC), FedAvg under SecAgg+, ``--rounds`` x ``--epochs``. AUC/KS are exact: each
  bank's final-round test PDs and labels, which it keeps in its own state folder
  (``round-XXXX-test.npz``), pooled here. (The coordinator itself only ever gets 1000-bin
  PD histograms; its pooled AUC is reported beside the exact one.)
* centralized: the same architecture and training loop on all banks' training rows
  pooled, with the platform's features (in process, ``LocalPlatformLink``), for the same
  number of epochs (rounds x local epochs) on every row, no early stopping;
  ``centralized_es_auc``: the same with early stopping and refit (the quality
  benchmark's setting).
* bank alone: each bank's own rows and features, no platform, early stopping and refit
  (the stronger of the two ways to train it).

Times. ``overhead_ratio`` = federated training time / centralized training time, for
the same model and epochs (centralized: the mean of two identical runs, one before and
one after the federations). Federated training time = the coordinator's ``fit_s`` per
round (``progress.jsonl``: from opening the round on the platform, through the banks'
local epochs against the platform, SecAgg+ and the platform's averaging, to the
checkpoint), averaged over rounds 2..R and multiplied by R. Round 1 is left out because
it also holds each bank's PSI with the platform and the Ray workers' first loading of
the bank's data; process, Ray and platform start-up are outside every round. Per-round
evaluation is not training and not in ``fit_s``; ``overhead_ratio_with_eval`` uses the
whole round instead (``trained`` event of round r-1 to that of round r: evaluation of
r-1 plus training of r). The three banks train in parallel on the machine's cores (Ray
places one bank per CPU) while the centralized model trains in one thread, one process.

``secagg_share`` = (mean fit_s with SecAgg+ - without) / with, rounds 2..R, from a
second, identical federation with plain FedAvg messages (``secure_aggregation=False``).

    python benchmarks/federation.py [--rounds 8] [--epochs 2] [--seed 0]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bank_node.node import BankNode
from fedscore.cli.local import platform_process
from fedscore.cli.simulation import simulate
from fedscore.data.scenarios import prepare_default_credit
from fedscore.data.table import find_table
from fedscore.federation.provision import provision
from fedscore.federation.runconfig import RunSettings
from fedscore.ml.metrics import auc, ks
from fedscore.ml.training import TrainConfig
from fedscore.research.baselines import bank_alone, centralized, load_scenario


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def federate(root: Path, banks: list[str], data_dirs: dict[str, Path], address: str,
             run_id: str, rounds: int, epochs: int, seed: int, secure: bool,
             proximal_mu: float = 0.0) -> dict[str, Any]:
    """One federation; its timings (from progress.jsonl) and exact test metrics."""
    settings = RunSettings(run_id=run_id, num_rounds=rounds, local_epochs=epochs, seed=seed,
                           proximal_mu=proximal_mu,
                           state_dir=str(root / "coordinator"),
                           coordinator_kit=str(root / "kits" / "coordinator"),
                           platform_address=address)
    nodes = [BankNode(b, data_dirs[b], root / "kits" / b, address, root / "bank-state" / b)
             for b in banks]
    t0 = time.perf_counter()
    simulate(settings, nodes, secure_aggregation=secure)
    wall = time.perf_counter() - t0
    events = [json.loads(x) for x in (settings.run_dir / "progress.jsonl").read_text()
              .splitlines()]
    trained = [e for e in events if e["event"] == "trained"]
    evaluated = [e for e in events if e["event"] == "evaluated"]
    assert [e["round"] for e in trained] == list(range(1, rounds + 1)), trained
    fit_s = [float(e["fit_s"]) for e in trained]
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(trained)]
    ys, ps, per_bank = [], [], {}
    for b in banks:
        path = root / "bank-state" / b / run_id / f"round-{rounds:04d}-test.npz"
        with np.load(path) as z:
            y, p = z["labels"], z["pd"]
        ys.append(y)
        ps.append(p)
        per_bank[b] = auc(y, p)
    y_all, p_all = np.concatenate(ys), np.concatenate(ps)
    later = fit_s[1:] if rounds > 1 else fit_s
    return {
        "auc": auc(y_all, p_all),
        "ks": ks(y_all, p_all),
        "coordinator_pooled_auc": float(evaluated[-1]["pooled_auc"]),
        "per_bank": per_bank,
        "auc_by_round": [round(float(e["pooled_auc"]), 5) for e in evaluated],
        "fit_s": fit_s,
        "fit_s_mean": statistics.mean(later),
        "train_s": statistics.mean(later) * rounds,
        "round_s_mean": statistics.mean(gaps) if gaps else float("nan"),
        "wall_s": wall,
    }


def main() -> None:
    """Run the federations and the references, print progress and the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proximal-mu", type=float, default=0.0, help="> 0: FedProx")
    parser.add_argument("--no-plain", action="store_true",
                        help="skip the SecAgg+-free federation (no secagg_share)")
    parser.add_argument("--no-es", action="store_true",
                        help="skip the early-stopped centralized reference")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 holds PSI and is not timed)")
    torch.set_num_threads(1)
    total_epochs = args.rounds * args.epochs

    with tempfile.TemporaryDirectory() as tmp_name:
        root = args.keep or Path(tmp_name)
        root.mkdir(parents=True, exist_ok=True)
        manifest = prepare_default_credit(root / "data", seed=args.seed)
        banks = list(manifest.bank_dirs)
        provision(root / "kits", parties=("platform", *banks, "coordinator"), force=True)
        scenario = load_scenario(root / "data")
        fixed = TrainConfig(epochs=total_epochs, patience=total_epochs, validation_share=0.0,
                            refit=False, seed=args.seed)
        # Centralized training is timed before and after the federations (the same,
        # deterministic run twice), so load that comes and goes on a shared machine
        # weighs on both sides alike.
        _say(f"centralized: {total_epochs} epochs, pooled rows")
        cen = centralized(scenario, cfg=fixed)
        _say(f"  AUC {cen['auc']:.5f} in {cen['train_s']} s")
        runs: dict[str, dict[str, Any]] = {}
        with platform_process(
            root / "kits" / "platform", find_table(manifest.platform_dir, "features"),
            manifest.platform_schema, log=root / "platform.log",
            state_dir=root / "platform-state",
        ) as address:
            modes = [("secagg", True)] + ([] if args.no_plain else [("plain", False)])
            for name, secure in modes:
                _say(f"federation {name}: {args.rounds} rounds x {args.epochs} epochs")
                runs[name] = federate(root, banks, dict(manifest.bank_dirs), address,
                                      f"bench-{name}-{time.time_ns()}", args.rounds,
                                      args.epochs, args.seed, secure, args.proximal_mu)
                _say(f"  pooled AUC {runs[name]['auc']:.5f}, fit_s {runs[name]['fit_s']}")

        cen_again = centralized(scenario, cfg=fixed)
        _say(f"centralized again: AUC {cen_again['auc']:.5f} in {cen_again['train_s']} s")
        _say("bank alone (early stopping)")
        alone = bank_alone(scenario, cfg=TrainConfig(seed=args.seed))
        cen_es = None
        if not args.no_es:
            _say("centralized (early stopping)")
            cen_es = centralized(scenario, cfg=TrainConfig(seed=args.seed))

    fed = runs["secagg"]
    per_bank = [
        {"bank": b, "federated_auc": round(fed["per_bank"][b], 5),
         "alone_auc": round(a["auc"], 5), "centralized_auc": round(c["auc"], 5),
         "federated_minus_alone": round(fed["per_bank"][b] - a["auc"], 5)}
        for b, a, c in zip(banks, alone["per_bank"], cen["per_bank"], strict=True)
    ]
    cen_runs_s = [float(cen["train_s"]), float(cen_again["train_s"])]
    cen_train_s = statistics.mean(cen_runs_s)
    result: dict[str, Any] = {
        "scenario": "default-credit",
        "seed": args.seed,
        "rounds": args.rounds,
        "local_epochs": args.epochs,
        "proximal_mu": args.proximal_mu,
        "federated_auc": round(fed["auc"], 5),
        "federated_ks": round(fed["ks"], 5),
        "federated_auc_from_histograms": round(fed["coordinator_pooled_auc"], 5),
        "federated_auc_by_round": fed["auc_by_round"],
        "centralized_auc": round(cen["auc"], 5),
        "centralized_ks": round(cen["ks"], 5),
        "centralized_es_auc": round(cen_es["auc"], 5) if cen_es else None,
        "bank_alone_auc": round(alone["auc"], 5),
        "federated_minus_centralized": round(fed["auc"] - cen["auc"], 5),
        "per_bank": per_bank,
        "federated_train_s": round(fed["train_s"], 2),
        "federated_fit_s": [round(x, 2) for x in fed["fit_s"]],
        "federated_round_s": round(fed["round_s_mean"], 2),
        "federated_wall_s": round(fed["wall_s"], 2),
        "centralized_train_s": round(cen_train_s, 2),
        "centralized_runs_s": cen_runs_s,
        "centralized_deterministic": cen["auc"] == cen_again["auc"],
        "overhead_ratio": round(fed["train_s"] / cen_train_s, 3),
        "overhead_ratio_with_eval": round(fed["round_s_mean"] * args.rounds / cen_train_s, 3),
    }
    if "plain" in runs:
        plain = runs["plain"]
        result.update({
            "plain_fit_s": [round(x, 2) for x in plain["fit_s"]],
            "plain_auc": round(plain["auc"], 5),
            "secagg_share": round((fed["fit_s_mean"] - plain["fit_s_mean"]) / fed["fit_s_mean"],
                                  4),
        })
    result["targets"] = {
        "federated_vs_centralized": fed["auc"] >= cen["auc"] - 0.005,
        "every_bank_beats_alone_by_0.03": all(b["federated_minus_alone"] >= 0.03
                                              for b in per_bank),
        "overhead_ratio_le_3": result["overhead_ratio"] <= 3.0,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
