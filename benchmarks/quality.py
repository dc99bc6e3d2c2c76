"""Test AUC/KS on default-credit: the split model trained between the platform node and
each bank (real processes, mutual TLS gRPC) against the baselines on the same split.

* federated: one bank-side model per bank with the platform (the cross-bank federation
  is the next step); the three banks' test sets pooled.
* centralized: the same architecture and training loop on all banks' rows pooled.
* bank alone: each bank's own features only.
* gbdt: scikit-learn HistGradientBoosting on the pooled raw data (platform features
  missing for the 15% of people who are not platform users).

    python benchmarks/quality.py [--seed 0]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from fedscore.cli.vertical import run_vertical
from fedscore.data.scenarios import prepare_default_credit
from fedscore.ml.training import TrainConfig
from fedscore.research.baselines import bank_alone, centralized, gbdt, load_scenario


def main() -> None:
    """Train the split model between real node processes and the baselines; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = TrainConfig(seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prepare_default_credit(tmp / "data", seed=args.seed)
        fed = run_vertical(str(tmp / "data"), tmp / "run", seed=args.seed, cfg=cfg)
        scenario = load_scenario(tmp / "data")
        cen = centralized(scenario, cfg=cfg)
        alone = bank_alone(scenario, cfg=cfg)
        boosted = gbdt(scenario, seed=args.seed)
    per_bank = [
        {"bank": b["party"], "federated_auc": round(b["test_auc"], 5),
         "bank_alone_auc": round(a["auc"], 5), "centralized_auc": round(c["auc"], 5)}
        for b, a, c in zip(fed["banks"], alone["per_bank"], cen["per_bank"], strict=True)
    ]
    result = {
        "seed": args.seed,
        "federated_auc": round(fed["pooled_auc"], 5),
        "federated_ks": round(fed["pooled_ks"], 5),
        "centralized_auc": round(cen["auc"], 5),
        "centralized_ks": round(cen["ks"], 5),
        "bank_alone_auc": round(alone["auc"], 5),
        "gbdt_auc": round(boosted["auc"], 5),
        "gbdt_ks": round(boosted["ks"], 5),
        "federated_minus_centralized": round(fed["pooled_auc"] - cen["auc"], 5),
        "per_bank": per_bank,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
