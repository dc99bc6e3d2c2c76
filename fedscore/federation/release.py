"""Model releases: the bundle a bank's scoring server loads, signed by the coordinator.

A release folder holds ``bank_model.npz`` (the global bank-side weights),
``preprocessing.json`` (the banks' pooled preprocessing statistics: with its own
schema, a bank rebuilds the transforms the weights were trained on),
``manifest.json`` (release version, run, round, the platform bottom-model version the
weights pair with, each bank's preprocessing fingerprint, metrics, the run's settings,
the differential-privacy budget spent, the banks whose updates went into each round
(``contributors``, and ``banks_last_round`` for the weights released), and the SHA-256
of every file) and
``manifest.sig`` (Ed25519 over the manifest bytes, by the coordinator's signing key
from its startup kit). :func:`verify_release` raises
on any change to any file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedscore.atomic import atomic_write
from fedscore.crypto.primitives import SignatureError, SigningPrivateKey, VerifyKey
from fedscore.errors import FedscoreError
from fedscore.federation.arrays import ArraysError, npz_bytes, read_arrays
from fedscore.federation.statistics import PooledStatistics

FORMAT = "fedscore-release/1"
MODEL_FILE = "bank_model.npz"
PREPROCESSING_FILE = "preprocessing.json"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


class ReleaseError(FedscoreError, RuntimeError):
    """A release is incomplete, altered, or not signed by the expected coordinator."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_release(
    folder: Path,
    arrays: list[np.ndarray],
    *,
    signer: SigningPrivateKey,
    signer_name: str,
    run_id: str,
    round_: int,
    platform_version: str,
    fingerprints: dict[str, str],
    metrics: dict[str, Any],
    config: dict[str, Any],
    statistics: PooledStatistics,
    privacy: dict[str, Any] | None = None,
    contributors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Write and sign a release into ``folder`` (replaced if it exists); return the manifest.

    ``privacy``: the run's final (ε, δ) per DP mechanism, the last ``privacy.jsonl`` line
    of each (``{}``: DP was off). ``contributors``: round (a string; "0" is the pooled
    statistics) -> the banks whose updates went into it; a bank lost in a round is not
    named there, so a reader of the release knows whose data the weights rest on."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    atomic_write(folder / MODEL_FILE, npz_bytes(arrays))
    atomic_write(folder / PREPROCESSING_FILE, json.dumps(statistics.to_json()).encode())
    manifest = {
        "format": FORMAT,
        "version": f"{run_id}-r{round_:04d}",
        "run_id": run_id,
        "round": round_,
        "platform_model_version": platform_version,
        "preprocessing_fingerprints": dict(sorted(fingerprints.items())),
        "metrics": metrics,
        "config": config,
        "signed_by": signer_name,
        "preprocessing_layout": statistics.layout,
        "privacy": privacy or {},
        "contributors": {r: sorted(b) for r, b in (contributors or {}).items()},
        "banks_last_round": sorted((contributors or {}).get(str(round_), [])),
        "files": {name: _sha256(folder / name) for name in (MODEL_FILE, PREPROCESSING_FILE)},
    }
    body = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    atomic_write(folder / MANIFEST, body)
    atomic_write(folder / SIGNATURE, signer.sign(body))
    return manifest


def verify_release(folder: Path, key: VerifyKey) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(manifest, weights) of a release whose signature and file hashes check out."""
    try:
        body = (folder / MANIFEST).read_bytes()
        signature = (folder / SIGNATURE).read_bytes()
    except OSError as exc:
        raise ReleaseError(f"{folder}: incomplete release: {exc}") from None
    try:
        key.verify(signature, body)
    except SignatureError as exc:
        raise ReleaseError(f"{folder / MANIFEST}: signature does not verify: {exc}") from None
    manifest = json.loads(body)
    if manifest.get("format") != FORMAT:
        raise ReleaseError(f"{folder / MANIFEST}: format {manifest.get('format')!r}, "
                           f"expected {FORMAT!r}")
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            raise ReleaseError(f"{path}: missing or altered (SHA-256 differs from the manifest)")
    try:
        return manifest, read_arrays(folder / MODEL_FILE)
    except ArraysError as exc:
        raise ReleaseError(exc.message) from None
