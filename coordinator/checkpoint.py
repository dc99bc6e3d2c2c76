"""The coordinator's durable record of a run: one folder per finished round, and a log.

Layout under ``<state-dir>/<run-id>/``:

* ``round-<r:04d>/weights.npz``: the global bank-side model after round r (arrays in
  the model's ``state_dict`` order, named ``arr_0``, ``arr_1``, ...);
* ``round-<r:04d>/round.json``: the platform model version it pairs with, the rows and
  banks that went into it, and, once the banks have evaluated it, the metrics;
* ``progress.jsonl``: one line per event (round trained, round evaluated, release),
  appended and fsynced, which ``fedscore demo`` tails for its progress display.

A round folder is written under a temporary name and renamed into place, so a crash
leaves whole rounds only; a restarted run resumes after the last whole round.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedscore.atomic import atomic_write, fsync_dir
from fedscore.errors import FedscoreError
from fedscore.federation.arrays import ArraysError, npz_bytes, read_arrays


class CheckpointError(FedscoreError, RuntimeError):
    """A checkpoint folder is unreadable; names the file."""

    code = grpc.StatusCode.DATA_LOSS


@dataclass(frozen=True)
class Checkpoint:
    """One finished round as saved: the global weights and its ``round.json``."""

    round: int
    arrays: list[np.ndarray]
    platform_version: str
    info: dict[str, Any]


class Checkpoints:
    """A run's folder of round checkpoints and its progress log (layout: module doc)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.progress = run_dir / "progress.jsonl"

    def _dir(self, round_: int) -> Path:
        return self.run_dir / f"round-{round_:04d}"

    def save(self, round_: int, arrays: list[np.ndarray], platform_version: str,
             info: dict[str, Any]) -> Path:
        """Write round ``round_``'s folder atomically (replacing an older one)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        final = self._dir(round_)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.run_dir))
        try:
            atomic_write(tmp / "weights.npz", npz_bytes(arrays))
            doc = {"round": round_, "platform_version": platform_version, **info}
            atomic_write(tmp / "round.json", (json.dumps(doc, indent=1) + "\n").encode())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.run_dir)
        return final

    def update(self, round_: int, **info: Any) -> None:
        """Add keys (the evaluation) to a saved round's ``round.json``, atomically."""
        path = self._dir(round_) / "round.json"
        try:  # a round never saved stays FileNotFoundError: the caller's mistake
            doc = json.loads(path.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{path}: unreadable: {exc}") from None
        if not isinstance(doc, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        doc.update(info)
        atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode())

    def rounds(self) -> list[int]:
        """The rounds saved whole (both files present), in order."""
        if not self.run_dir.is_dir():
            return []
        out = []
        for p in self.run_dir.glob("round-[0-9][0-9][0-9][0-9]"):
            if (p / "round.json").is_file() and (p / "weights.npz").is_file():
                out.append(int(p.name.split("-")[1]))
        return sorted(out)

    def load(self, round_: int) -> Checkpoint:
        """Round ``round_``'s checkpoint; CheckpointError names an unreadable file."""
        folder = self._dir(round_)
        try:
            info = json.loads((folder / "round.json").read_text())
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise CheckpointError(f"{folder / 'round.json'}: unreadable: {exc}") from None
        if not isinstance(info, dict) or not isinstance(info.get("platform_version", ""), str):
            raise CheckpointError(f"{folder / 'round.json'}: expected a JSON object with a "
                                  "string platform_version")
        try:
            arrays = read_arrays(folder / "weights.npz")
        except ArraysError as exc:
            raise CheckpointError(exc.message) from None
        return Checkpoint(round_, arrays, str(info.get("platform_version", "")), info)

    def latest(self) -> Checkpoint | None:
        """The last whole round's checkpoint, None before the first."""
        rounds = self.rounds()
        return self.load(rounds[-1]) if rounds else None

    def log(self, event: str, **fields: Any) -> None:
        """Append one line to ``progress.jsonl`` and sync it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "time": time.time(), **fields}) + "\n"
        with self.progress.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
