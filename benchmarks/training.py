"""Split training between two processes vs centralized training of the same model.

Same rows (one bank of default-credit with the platform's features), same model,
same epochs (early stopping off), same seed, one torch thread per process; the
federated run has the platform node in its own process, mutual TLS gRPC, sealed
payloads. Wall times cover training only (process start-up and PSI excluded).

    python benchmarks/training.py [--bank bank-1] [--epochs 10]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from bank_node.trainer import run_bank
from fedscore.cli.local import platform_process
from fedscore.data.scenarios import prepare_default_credit
from fedscore.data.table import find_table
from fedscore.federation.provision import load_kit, provision
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.metrics import auc
from fedscore.ml.training import TrainConfig
from fedscore.research.baselines import PlatformSide, load_scenario, train_and_score


def main() -> None:
    """Train one bank split across two processes, then centralized; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", default="bank-1")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # A fixed number of epochs on both sides: no early stop, no refit pass.
    cfg = TrainConfig(epochs=args.epochs, patience=args.epochs, seed=args.seed, refit=False)
    arch = SplitArchitecture()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        manifest = prepare_default_credit(tmp / "data", seed=args.seed)
        provision(tmp / "kits", parties=("platform", *manifest.bank_dirs))
        scenario = load_scenario(tmp / "data")
        index = list(manifest.bank_dirs).index(args.bank)
        train, test = scenario.banks[index]
        platform = PlatformSide(scenario.platform, None)

        def centralized() -> tuple[float, float]:
            (pd_test,), info = train_and_score(platform, train, [test], arch, cfg, None)
            assert test.labels is not None
            return info["train_s"], auc(test.labels, pd_test)

        cen_before, cen_auc = centralized()
        with platform_process(
            tmp / "kits" / "platform",
            find_table(manifest.platform_dir, "features"),
            manifest.platform_schema,
        ) as address:
            fed = run_bank(load_kit(tmp / "kits" / args.bank), manifest.bank_dirs[args.bank],
                           address, cfg, arch=arch)
        cen_after, _ = centralized()

    centralized_s = statistics.mean([cen_before, cen_after])
    batches = cfg.epochs * -(-round(fed.n_train * (1 - cfg.validation_share)) // cfg.batch_size)
    print(json.dumps({
        "bank": args.bank,
        "rows": fed.n_train,
        "epochs": cfg.epochs,
        "batches": batches,
        "federated_s": round(fed.train_seconds, 3),
        "centralized_s": round(centralized_s, 3),
        "centralized_runs_s": [round(cen_before, 3), round(cen_after, 3)],
        "ratio": round(fed.train_seconds / centralized_s, 3),
        "overhead_ms_per_batch": round(1000 * (fed.train_seconds - centralized_s) / batches, 3),
        "federated_test_auc": round(fed.test_auc, 5),
        "centralized_test_auc": round(cen_auc, 5),
    }))


if __name__ == "__main__":
    main()
