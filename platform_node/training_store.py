"""The platform's durable record of a bank's resumable training (``bank train``).

A bank that opens a session with a ``resume_key`` asks the platform to keep, at every
``EndEpoch``, the whole state of its bottom model (weights, average, optimizer, dropout
stream, epoch snapshots: :meth:`fedscore.ml.training.PlatformBottom.training_state`), so
that the training can go on from the last whole epoch after either side restarted: a
new session (PSI again, if the platform restarted) opened with ``resume_epoch`` starts
from that state instead of fresh weights.

Layout under ``<state-dir>/training/``: ``<bank>/<sha256(key)[:32]>-<epochs:06d>.pt``
(``torch.save``, read back with ``weights_only=True``), written atomically. Without a
state folder the states live in memory (they survive the bank's restart, not the
platform's). Bounded per bank: the last :data:`KEEP_EPOCHS` states of a key (the bank
may be one epoch behind the platform when it stopped) and :data:`MAX_KEYS` keys, the
oldest dropped first.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any

import grpc
import torch

from fedscore.atomic import atomic_write
from fedscore.errors import FedscoreError

KEEP_EPOCHS = 2
MAX_KEYS = 4
MAX_KEY_CHARS = 128


class TrainingStateError(FedscoreError):
    """No kept state for the epoch a bank asked to resume from (FAILED_PRECONDITION), or
    a malformed key (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def _name(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_CHARS:
        raise TrainingStateError(f"resume_key must have 1 to {MAX_KEY_CHARS} characters",
                                 code=grpc.StatusCode.INVALID_ARGUMENT)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class TrainingStore:
    """Kept training states per (bank, key); on disk under ``root`` (None: in memory)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._memory: dict[tuple[str, str], dict[int, bytes]] = {}
        self._order: dict[str, list[str]] = {}  # bank -> its keys, oldest first
        self._lock = threading.Lock()

    def save(self, bank: str, key: str, epochs: int, state: dict[str, Any]) -> None:
        """Keep ``state`` as the training's state after ``epochs`` whole epochs."""
        name = _name(key)
        buf = io.BytesIO()
        torch.save(state, buf)
        with self._lock:
            self._touch(bank, name)
            if self.root is None:
                kept = self._memory.setdefault((bank, name), {})
                kept[epochs] = buf.getvalue()
                for epoch in sorted(kept)[:-KEEP_EPOCHS]:
                    del kept[epoch]
                return
            folder = self.root / bank
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / f"{name}-{epochs:06d}.pt", buf.getvalue())
            files = sorted(folder.glob(f"{name}-*.pt"))
            for path in files[:-KEEP_EPOCHS]:
                path.unlink(missing_ok=True)

    def load(self, bank: str, key: str, epochs: int) -> dict[str, Any]:
        """The state kept after ``epochs`` whole epochs; TrainingStateError if none."""
        name = _name(key)
        with self._lock:
            if self.root is None:
                data = self._memory.get((bank, name), {}).get(epochs)
            else:
                path = self.root / bank / f"{name}-{epochs:06d}.pt"
                data = path.read_bytes() if path.is_file() else None
        if data is None:
            raise TrainingStateError(
                f"no training state kept after epoch {epochs} for this key; start afresh")
        try:
            state: dict[str, Any] = torch.load(io.BytesIO(data), weights_only=True)
        except Exception:  # a torn or foreign file: the bank starts afresh
            raise TrainingStateError(f"the training state kept after epoch {epochs} is "
                                     "unreadable; start afresh") from None
        return state

    def forget(self, bank: str, key: str) -> None:
        """Drop every state of the key (a training started afresh under it)."""
        name = _name(key)
        with self._lock:
            self._memory.pop((bank, name), None)
            if self.root is not None and (self.root / bank).is_dir():
                for f in (self.root / bank).glob(f"{name}-*.pt"):
                    f.unlink(missing_ok=True)

    def _touch(self, bank: str, name: str) -> None:
        """Count the key as the bank's newest; drop the bank's oldest beyond MAX_KEYS."""
        order = self._order.setdefault(bank, [])
        if self.root is not None and not order and (self.root / bank).is_dir():
            files = sorted((self.root / bank).glob("*.pt"), key=lambda f: f.stat().st_mtime)
            order.extend(dict.fromkeys(f.name.rsplit("-", 1)[0] for f in files))
        if name in order:
            order.remove(name)
        order.append(name)
        while len(order) > MAX_KEYS:
            old = order.pop(0)
            self._memory.pop((bank, old), None)
            if self.root is not None:
                for f in (self.root / bank).glob(f"{old}-*.pt"):
                    f.unlink(missing_ok=True)
