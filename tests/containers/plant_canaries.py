"""Plant tests/test_privacy.py's canaries in the compose federation's data volumes.

Run inside the image (as root, after the provision service, before any node starts) with
the platform's and bank-1's data volumes at /datasets/platform and /datasets/bank-1 and
the canaries as JSON on stdin (written on the host by check_capture.py from
tests/test_privacy.py, so the two never drift): ``ids`` replace the platform's and
bank-1's ids of customers both hold (so they go through PSI and split training), and
``limit_bal`` / ``age`` replace the platform's numeric features of those rows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd


def main() -> None:
    """Rewrite the two tables in place, keeping their owners and column order."""
    canaries = json.load(sys.stdin)
    platform_file = Path("/datasets/platform/features.csv")
    bank_file = Path("/datasets/bank-1/train.csv")
    platform = pd.read_csv(platform_file, dtype={"user_id": str})
    bank = pd.read_csv(bank_file, dtype={"user_id": str})
    shared = platform.index[platform["user_id"].isin(set(bank["user_id"]))][: len(canaries["ids"])]
    if len(shared) < len(canaries["ids"]):
        raise SystemExit(f"{platform_file}: only {len(shared)} ids shared with bank-1")
    renamed = dict(zip(platform.loc[shared, "user_id"], canaries["ids"], strict=True))
    platform.loc[shared, "user_id"] = canaries["ids"]
    platform = platform.astype({"LIMIT_BAL": "float64", "AGE": "float64"})
    platform.loc[shared, "LIMIT_BAL"] = canaries["limit_bal"]
    platform.loc[shared, "AGE"] = canaries["age"]
    bank["user_id"] = bank["user_id"].replace(renamed)
    for frame, path in ((platform, platform_file), (bank, bank_file)):
        stat = path.stat()
        frame.to_csv(path, index=False)
        os.chown(path, stat.st_uid, stat.st_gid)
    print(f"planted {len(shared)} canary customers in {platform_file} and {bank_file}")


if __name__ == "__main__":
    main()
