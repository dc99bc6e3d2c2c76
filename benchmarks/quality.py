"""Test AUC/KS, as the mean over seeds: the split model trained between the platform node
and each bank (real processes, mutual TLS gRPC) against the baselines on the same split.

* federated: one bank-side model per bank with the platform (the cross-bank federation
  is ``benchmarks/federation.py``); the banks' test sets pooled.
* centralized: the same architecture and training loop on all banks' rows pooled.
* bank alone: each bank's own features only.
* gbdt: scikit-learn HistGradientBoosting on the pooled raw data (platform features
  missing for the people who are not platform users), hand-picked settings.
* gbdt_tuned: the same, tuned by cross-validation on the pooled training rows only.

A single seed's gap moves by about 0.005 with the initialisation alone (issue 17), so
every figure is the mean over ``--seeds`` with its standard deviation beside it
(``*_std``); ``federated_minus_gbdt_tuned_bootstrap`` is a paired bootstrap over the test
rows of every seed (``--resamples``, 1,000 by default) with its 95% interval.

    python benchmarks/quality.py [--seeds 0-4] [--scenario default-credit|synth] [--people N]
                                 [--jobs 1]

The last stdout line is one JSON object; one line per seed goes to stderr as it ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedscore.cli.vertical import run_vertical
from fedscore.data.scenarios import prepare_default_credit
from fedscore.ml.training import TrainConfig
from fedscore.research.baselines import (
    bank_alone,
    centralized,
    gbdt,
    gbdt_tuned,
    load_scenario,
    paired_bootstrap,
    parse_seeds,
)

FIGURES = ("federated_auc", "federated_ks", "centralized_auc", "centralized_ks",
           "bank_alone_auc", "gbdt_auc", "gbdt_ks", "gbdt_tuned_auc", "gbdt_tuned_ks",
           "federated_minus_centralized", "federated_minus_gbdt_tuned")


def prepare(scenario: str, out: Path, seed: int, people: int) -> None:
    """Write the scenario's party files for ``seed`` under ``out``."""
    if scenario == "default-credit":
        prepare_default_credit(out, seed=seed)
    else:
        from fedscore.data.synth import synth_population

        synth_population(out, people=people, banks=3, seed=seed)


def one_seed(scenario: str, seed: int, people: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every model for ``seed``: (its figures, the pooled test labels and both PDs the
    bootstrap pairs)."""
    cfg = TrainConfig(seed=seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prepare(scenario, tmp / "data", seed, people)
        fed = run_vertical(str(tmp / "data"), tmp / "run", seed=seed, cfg=cfg)
        sc = load_scenario(tmp / "data")
    cen = centralized(sc, cfg=cfg)
    alone = bank_alone(sc, cfg=cfg)
    boosted = gbdt(sc, seed=seed)
    tuned = gbdt_tuned(sc, seed=seed)
    labels = np.concatenate([np.asarray(te.labels) for _, te in sc.banks])
    if not np.array_equal(labels, fed["test_labels"]):
        raise RuntimeError("the federated run's test rows are not the baselines' (bank order?)")
    row = {
        "seed": seed,
        "federated_auc": fed["pooled_auc"], "federated_ks": fed["pooled_ks"],
        "centralized_auc": cen["auc"], "centralized_ks": cen["ks"],
        "bank_alone_auc": alone["auc"],
        "gbdt_auc": boosted["auc"], "gbdt_ks": boosted["ks"],
        "gbdt_tuned_auc": tuned["auc"], "gbdt_tuned_ks": tuned["ks"],
        "federated_minus_centralized": fed["pooled_auc"] - cen["auc"],
        "federated_minus_gbdt_tuned": fed["pooled_auc"] - tuned["auc"],
        "gbdt_tuned_params": tuned["params"],
        "per_bank": [
            {"bank": b["party"], "federated_auc": b["test_auc"], "bank_alone_auc": a["auc"],
             "centralized_auc": c["auc"], "gbdt_tuned_auc": g["auc"]}
            for b, a, c, g in zip(fed["banks"], alone["per_bank"], cen["per_bank"],
                                  tuned["per_bank"], strict=True)
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    paired = {"labels": labels, "federated": fed["test_pd"],
              "gbdt_tuned": np.concatenate(tuned["test_pd"])}
    return row, paired


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's mean over seeds (under its own key) with ``*_std`` beside it."""
    out: dict[str, Any] = {}
    for key in FIGURES:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = round(float(values.mean()), 5)
        out[f"{key}_std"] = round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 5)
    return out


def main() -> None:
    """Train every model for every seed; print one JSON object last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4",
                        help="seeds: 0-4, 0,1,2 or a mix (default 0-4: at least 5)")
    parser.add_argument("--scenario", choices=("default-credit", "synth"),
                        default="default-credit")
    parser.add_argument("--people", type=int, default=200_000,
                        help="people in the synth scenario (default 200,000)")
    parser.add_argument("--resamples", type=int, default=1000,
                        help="paired bootstrap resamples of the test rows (default 1,000)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (default 1)")
    args = parser.parse_args()
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        parser.error(str(exc))
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    torch.set_num_threads(1)
    rows, paired = [], []
    with ProcessPoolExecutor(args.jobs) as pool:  # each seed is deterministic on its own
        runs = [pool.submit(one_seed, args.scenario, s, args.people) for s in seeds]
        for run in runs:
            row, pair = run.result()
            print(json.dumps(row, default=float), file=sys.stderr, flush=True)
            rows.append(row)
            paired.append(pair)
    boot = paired_bootstrap([p["labels"] for p in paired], [p["federated"] for p in paired],
                            [p["gbdt_tuned"] for p in paired], resamples=args.resamples)
    result: dict[str, Any] = {"scenario": args.scenario, "seeds": seeds, **summarise(rows)}
    if args.scenario == "synth":
        result["people"] = args.people
    result["federated_minus_gbdt_tuned_bootstrap"] = {
        k: round(v, 5) if isinstance(v, float) else v for k, v in boot.items()}
    result["per_seed"] = [
        {k: round(v, 5) if isinstance(v, float) else v for k, v in r.items() if k != "per_bank"}
        for r in rows
    ]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
