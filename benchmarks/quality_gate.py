"""CI's quality gate: the federated split model must stay within 0.003 test AUC of the
centralized model of the same architecture, on the mean over seeds of default-credit.

One seed cannot tell a better model from a luckier initialisation (a single seed's gap
moves by about 0.005 with the initialisation alone: issue 17), so the gate averages
several. Both models are deterministic for a seed, so the gate is too. The federated
side is :func:`fedscore.research.baselines.federated_reference`: the same loop and the
same random draws as the gRPC run, in one process (bit for bit, see
``fedscore.ml.training``), so the gate costs no process start-up or TLS per seed.

    python benchmarks/quality_gate.py [--seeds 0-13] [--tolerance 0.003] [--jobs 1]

Exit status 1 (and the reason on stderr) when the federated mean is below the
centralized mean minus the tolerance. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from fedscore.research.baselines import parse_seeds

DEFAULT_SEEDS = "0-13"
DEFAULT_TOLERANCE = 0.003


def one_seed(seed: int) -> dict[str, Any]:
    """The federated (in-process reference) and centralized test AUCs for ``seed``."""
    import torch

    from fedscore.ml.training import TrainConfig
    from fedscore.research.baselines import centralized, default_credit, federated_reference

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sc = default_credit(seed)
    cfg = TrainConfig(seed=seed)
    fed = federated_reference(sc, cfg=cfg)
    cen = centralized(sc, cfg=cfg)
    return {"seed": seed, "federated_auc": round(fed["auc"], 5),
            "centralized_auc": round(cen["auc"], 5), "seconds": round(time.perf_counter() - t0, 1)}


def verdict(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The means over ``rows`` and whether the federated one passes the gate."""
    n = len(rows)
    fed = sum(r["federated_auc"] for r in rows) / n
    cen = sum(r["centralized_auc"] for r in rows) / n
    gap = round(fed - cen, 5)  # the AUCs have 5 digits: no float noise at the bound
    return {"seeds": [r["seed"] for r in rows], "federated_mean": round(fed, 5),
            "centralized_mean": round(cen, 5), "federated_minus_centralized": gap,
            "tolerance": tolerance, "passed": gap >= -tolerance}


def main(argv: list[str] | None = None) -> int:
    """Run the seeds, print one JSON object last; 1 when the gate fails, 2 on bad flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=DEFAULT_SEEDS,
                        help=f"seeds: 0-13, 0,1,2 or a mix (default {DEFAULT_SEEDS})")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="how far the federated mean AUC may fall below the centralized")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        parser.error(str(exc))
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    t0 = time.perf_counter()
    if args.jobs == 1:
        rows = [one_seed(s) for s in seeds]
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(one_seed, seeds))
    for r in rows:
        print(json.dumps(r), file=sys.stderr)
    out = verdict(rows, args.tolerance)
    out["per_seed"] = rows
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if not out["passed"]:
        print(
            f"quality gate FAILED: federated mean AUC {out['federated_mean']:.5f} is "
            f"{-out['federated_minus_centralized']:.5f} below the centralized mean "
            f"{out['centralized_mean']:.5f} over seeds {args.seeds} (allowed: {args.tolerance})",
            file=sys.stderr,
        )
    print(json.dumps(out))
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
