"""Durable store of the platform bottom models a federated run commits, one per round.

Layout under ``root``: ``<run_id>/round-<r:04d>.pt`` (a torch state dict) and
``<run_id>/state.json`` (``last_round``, ``version`` and the version of every round
of the run's lineage). Every file is written atomically: a temporary file in the same
folder, fsync, ``os.replace``, then fsync of the folder, so a crash leaves either the
old file or the new one, never a partial one. Opening a store reads every model it
names: a missing or damaged file (StoreError naming it) stops the platform from
starting rather than failing every query for that model. Round 0 is a run's initial
model; it is stored (so evaluations can name it) but is not a finished round.

Finishing round r again (a coordinator that restarted round r from base r - 1)
replaces round r and drops the later rounds of the old lineage: they were trained
from a model that is no longer the run's; a new round 0 (round 1 restarted with
another seed) drops every finished round. Versions of every earlier round are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from fedscore.atomic import atomic_write
from fedscore.errors import FedscoreError
from fedscore.federation.arrays import NonFiniteError, check_finite
from fedscore.wire.limits import quote

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"r(\d+)-[0-9a-f]{12}")
StateDict = dict[str, torch.Tensor]


class StoreError(FedscoreError):
    """A run id, round or version the store cannot accept or does not hold."""

    code = grpc.StatusCode.INTERNAL


class UnknownVersion(StoreError):
    """No committed model has this version."""

    code = grpc.StatusCode.NOT_FOUND


def model_version(round_: int, state: Mapping[str, torch.Tensor]) -> str:
    """``r<round>-<first 12 hex of SHA-256 over the weights>``: names a committed model."""
    digest = hashlib.sha256()
    for name, value in sorted(state.items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return f"r{round_}-{digest.hexdigest()[:12]}"


def check_run_id(run_id: str) -> str:
    """A run id is a folder name: letters, digits, '.', '_', '-'; no path tricks."""
    if not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise StoreError(
            f"invalid run id {quote(run_id)}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return run_id


def round_of_version(version: str) -> int:
    """The round a version names; UnknownVersion when it is not a version."""
    match = _VERSION.fullmatch(version)
    if match is None:
        raise UnknownVersion(f"{quote(version)} is not a platform model version "
                             "(r<round>-<12 hex>)")
    return int(match.group(1))


@dataclass
class _Run:
    last_round: int = 0  # last finished round (>= 1), 0 when none
    rounds: dict[int, str] = field(default_factory=dict)  # round -> version (0: initial)
    states: dict[int, StateDict] = field(default_factory=dict)  # cache

    def to_json(self) -> bytes:
        doc = {
            "last_round": self.last_round,
            "version": self.rounds.get(self.last_round, "") if self.last_round else "",
            "rounds": {str(r): v for r, v in sorted(self.rounds.items())},
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


class ModelStore:
    """Committed platform bottom models per run; ``root=None`` keeps them in memory only."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._runs: dict[str, _Run] = {}
        self._lock = threading.RLock()
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            for state_file in sorted(root.glob("*/state.json")):
                run_id = state_file.parent.name
                if _RUN_ID.fullmatch(run_id):
                    self._runs[run_id] = self._read_state(state_file)
            # Read every stored model once now: a missing or damaged one stops the node
            # from starting, naming the file, instead of failing every query for it later.
            for run_id, run in self._runs.items():
                for round_, version in run.rounds.items():
                    self._read_model(run_id, round_, version)

    @staticmethod
    def _read_state(path: Path) -> _Run:
        try:
            doc = json.loads(path.read_text())
            rounds = {int(r): str(v) for r, v in doc["rounds"].items()}
            run = _Run(last_round=int(doc["last_round"]), rounds=rounds)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{path}: unreadable model store state: {exc}") from None
        if run.last_round and run.last_round not in rounds:
            raise StoreError(f"{path}: last_round {run.last_round} has no version")
        return run

    def _dir(self, run_id: str) -> Path:
        assert self.root is not None
        return self.root / check_run_id(run_id)

    def _file(self, run_id: str, round_: int) -> Path:
        return self._dir(run_id) / f"round-{round_:04d}.pt"

    def save(self, run_id: str, round_: int, state: Mapping[str, torch.Tensor]) -> str:
        """Store round ``round_``'s model durably; return its version."""
        check_run_id(run_id)
        if round_ < 0:
            raise StoreError(f"round must be >= 0, got {round_}")
        copy = {k: v.detach().cpu().clone() for k, v in state.items()}
        try:  # never store (and serve, and start rounds from) a spoilt model
            check_finite(copy.items(), f"run {run_id!r} round {round_}")
        except NonFiniteError as exc:
            raise StoreError(exc.message, code=grpc.StatusCode.INVALID_ARGUMENT) from None
        version = model_version(round_, copy)
        with self._lock:
            old = self._runs.get(run_id, _Run())
            run = _Run(old.last_round, dict(old.rounds), dict(old.states))
            run.rounds[round_] = version
            run.states[round_] = copy
            # Later rounds were trained from the model this one replaces: drop them (a new
            # round 0 is a new lineage: the run has no finished round any more).
            dropped = [r for r in run.rounds if r > round_]
            for r in dropped:
                del run.rounds[r]
                run.states.pop(r, None)
            run.last_round = round_
            if self.root is not None:
                buffer = io.BytesIO()
                torch.save(copy, buffer)
                atomic_write(self._file(run_id, round_), buffer.getvalue())
                atomic_write(self._dir(run_id) / "state.json", run.to_json())
                for r in dropped:
                    self._file(run_id, r).unlink(missing_ok=True)
            self._runs[run_id] = run
        return version

    def load(self, run_id: str, round_: int) -> StateDict:
        """The model of round ``round_`` of ``run_id`` (a copy)."""
        check_run_id(run_id)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or round_ not in run.rounds:
                raise StoreError(f"run {run_id!r} has no model for round {round_}")
            state = run.states.get(round_)
            if state is None:
                state = self._read_model(run_id, round_, run.rounds[round_])
                run.states[round_] = state
        return {k: v.clone() for k, v in state.items()}

    def _read_model(self, run_id: str, round_: int, version: str) -> StateDict:
        path = self._file(run_id, round_)
        if not path.is_file():
            raise StoreError(f"{path}: missing; {path.parent / 'state.json'} names its "
                             f"model {version}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file: UnpicklingError, EOFError, RuntimeError...
            raise StoreError(f"{path}: cannot read the stored model: {exc}") from None
        if (
            not isinstance(state, dict)
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                       for k, v in state.items())
        ):
            raise StoreError(f"{path}: not a platform model (a dict of named tensors)")
        try:
            check_finite(state.items(), str(path))
        except NonFiniteError as exc:
            raise StoreError(exc.message) from None
        if model_version(round_, state) != version:
            raise StoreError(f"{path}: content does not match its version {version}")
        return state

    def last(self, run_id: str) -> tuple[int, str] | None:
        """(last finished round, its version), or None when no round has finished."""
        check_run_id(run_id)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.last_round == 0:
                return None
            return run.last_round, run.rounds[run.last_round]

    def version(self, run_id: str, round_: int) -> str | None:
        """The version of round ``round_`` of ``run_id``; None when the store has none."""
        with self._lock:
            run = self._runs.get(check_run_id(run_id))
            return None if run is None else run.rounds.get(round_)

    def find(self, version: str) -> tuple[str, int]:
        """(run id, round) of a stored version; raises :class:`UnknownVersion`."""
        round_ = round_of_version(version)
        with self._lock:
            for run_id, run in sorted(self._runs.items()):
                if run.rounds.get(round_) == version:
                    return run_id, round_
        raise UnknownVersion(f"no committed platform model has version {version!r}")

    def by_version(self, version: str) -> StateDict:
        """The model with this version, whatever its run."""
        run_id, round_ = self.find(version)
        return self.load(run_id, round_)
