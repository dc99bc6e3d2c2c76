"""The platform's half of a federated run: open rounds, per-session contributions, averaging.

The coordinator starts round r of a run; every bank session opened with
``federation_round=r`` starts from the round's base model (round r - 1's average, or
a fresh model from the run's seed for round 1) and, once it commits, contributes a
copy of its scoring weights and the number of training rows the platform itself
forwarded for it. Finishing the round averages the contributions weighted by those
rows and stores the result durably. The averaging is done by the platform, so its
result does not depend on the order or timing in which banks finish.

One round per run is open at a time. Starting a round again (a restarted coordinator)
discards what was collected for it and starts from round r - 1's committed model.

Embedding DP: a round may be started with a Gaussian mechanism (``fedscore.crypto.dp``); every
session of the run opened from then on (training in the round, evaluation with the
round's model) noises what it sends and counts it per platform row, and the counts
since the last start are what the coordinator's accountant reads (:meth:`releases`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import torch

from fedscore.crypto.dp import DpSettings, ReleaseCounter
from fedscore.errors import FedscoreError
from fedscore.federation.arrays import check_finite
from fedscore.ops import metrics
from platform_node.model_store import (
    ModelStore,
    StateDict,
    StoreError,
    UnknownVersion,
    check_run_id,
)

BaseFactory = Callable[[int], StateDict]
"""seed -> the initial platform bottom weights of a run (round 0)."""

log = logging.getLogger(__name__)

MAX_BANKS = 1024
"""The most banks one FinishRound may name (a federation's manifest holds fewer)."""


class FederationError(FedscoreError):
    """A federation call that cannot be served; most often a round that is not open
    (FAILED_PRECONDITION), else the raise names its ``code``."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class FinishedRound:
    """A finished round: its committed version, the sessions averaged and their rows."""

    version: str
    sessions: int
    rows: int


@dataclass
class _OpenRound:
    round: int
    base_version: str
    base: StateDict
    # session id -> (the bank whose session it is, its committed weights, its rows)
    contributions: dict[bytes, tuple[str, StateDict, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPrivacy:
    """A run's embedding mechanism and the releases counted since its last StartRound."""

    settings: DpSettings
    releases: ReleaseCounter


def weighted_average(parts: Sequence[tuple[Mapping[str, torch.Tensor], int]]) -> StateDict:
    """Row-weighted mean of state dicts (float64 accumulation); integer tensors from the first."""
    total = sum(rows for _, rows in parts)
    first = parts[0][0]
    out: StateDict = {}
    for name, ref in first.items():
        if not torch.is_floating_point(ref):
            out[name] = ref.clone()
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for state, rows in parts:
            acc += state[name].to(torch.float64) * (rows / total)
        out[name] = acc.to(ref.dtype)
    return out


class Federation:
    """Round bookkeeping for every run on this platform node; thread-safe."""

    def __init__(self, store: ModelStore, make_base: BaseFactory, party: str = "platform"
                 ) -> None:
        self.store = store
        self.party = party  # the node's party: a label of its round metrics
        self._started: dict[str, float] = {}  # run -> when its open round started
        self._make_base = make_base
        self._open: dict[str, _OpenRound] = {}
        self._privacy: dict[str, RunPrivacy] = {}  # runs with embedding DP on
        self._version_run: dict[str, str] = {}  # model version -> the run that made it
        self._lock = threading.Lock()

    def _run_id(self, run_id: str) -> str:
        try:
            return check_run_id(run_id)
        except StoreError as exc:
            raise FederationError(str(exc), code=grpc.StatusCode.INVALID_ARGUMENT) from None

    def run_state(self, run_id: str) -> tuple[int, str]:
        """(last finished round, its version); (0, "") when none."""
        last = self.store.last(self._run_id(run_id))
        return last if last is not None else (0, "")

    def start_round(
        self, run_id: str, round_: int, seed: int, embedding_dp: DpSettings | None = None
    ) -> str:
        """Open round ``round_``; return the version it starts from. ``embedding_dp``
        (None or noise 0: off) applies to the run's sessions opened from now on, and the
        release counts start again from 0."""
        self._run_id(run_id)
        if round_ < 1:
            raise FederationError(f"rounds are 1-based, got {round_}",
                                  code=grpc.StatusCode.INVALID_ARGUMENT)
        if not 0 <= seed < 2**62:
            raise FederationError(f"seed must be in [0, 2**62), got {seed}",
                                  code=grpc.StatusCode.INVALID_ARGUMENT)
        with self._lock:
            last, _ = self.run_state(run_id)
            if round_ > last + 1:
                raise FederationError(
                    f"run {run_id!r} cannot start round {round_}: its last finished round "
                    f"is {last}, so the next is {last + 1}",
                )
            if round_ == 1:
                base = self._make_base(seed)
                version = self.store.version(run_id, 0)
                if version is None or self._differs(run_id, base):
                    version = self.store.save(run_id, 0, base)
            else:
                base = self.store.load(run_id, round_ - 1)
                version = self.store.version(run_id, round_ - 1)
            assert version is not None
            self._open[run_id] = _OpenRound(round_, version, base)
            self._started[run_id] = time.monotonic()
            self._version_run[version] = run_id
            if embedding_dp is not None and embedding_dp.enabled:
                self._privacy[run_id] = RunPrivacy(embedding_dp, ReleaseCounter())
            else:
                self._privacy.pop(run_id, None)
            return version

    def privacy(self, run_id: str = "", version: str = "") -> RunPrivacy | None:
        """The embedding mechanism a session must apply: that of the run that made
        ``version`` when this node knows it, else of ``run_id``; None: DP is off."""
        with self._lock:
            run = self._version_run.get(version, run_id) if version else run_id
            return self._privacy.get(run)

    def releases(self, run_id: str) -> tuple[int, int]:
        """(most releases of one platform row, rows released) since the run's last
        StartRound; (0, 0) when its embedding DP is off."""
        found = self.privacy(run_id)
        return (found.releases.max(), found.releases.rows()) if found else (0, 0)

    def _differs(self, run_id: str, base: StateDict) -> bool:
        stored = self.store.load(run_id, 0)
        return stored.keys() != base.keys() or any(
            not torch.equal(stored[k], base[k]) for k in base
        )

    def open_round(self, run_id: str) -> int:
        """The round of ``run_id`` that is open now; 0 when none."""
        with self._lock:
            current = self._open.get(run_id)
            return current.round if current else 0

    def base(self, run_id: str, round_: int) -> tuple[StateDict, str]:
        """(weights, version) a session of round ``round_`` starts from."""
        self._run_id(run_id)
        with self._lock:
            current = self._check_open(run_id, round_, "open a session for")
            return {k: v.clone() for k, v in current.base.items()}, current.base_version

    def _check_open(self, run_id: str, round_: int, what: str) -> _OpenRound:
        current = self._open.get(run_id)
        if current is None or current.round != round_:
            now = f"round {current.round} is open" if current else "no round is open"
            raise FederationError(
                f"cannot {what} round {round_} of run {run_id!r}: {now}"
            )
        return current

    def contribute(
        self, run_id: str, round_: int, session: bytes, state: Mapping[str, torch.Tensor],
        rows: int, bank: str = "",
    ) -> None:
        """Count bank ``bank``'s committed session weights in the round (again: replaces
        its last).

        Weights with a NaN or an infinity (a bank's huge gradients can overflow them even
        when every gradient was finite) are refused, NonFiniteError (INVALID_ARGUMENT)
        naming the tensor, and never averaged into the round."""
        copy = {k: v.detach().clone() for k, v in state.items()}
        check_finite(copy.items(), f"round {round_} of run {run_id!r}: the session's platform "
                     "model")
        with self._lock:
            current = self._check_open(run_id, round_, "commit in")
            current.contributions[session] = (bank, copy, int(rows))

    def finish_round(self, run_id: str, round_: int, banks: Sequence[str] = ()
                     ) -> FinishedRound:
        """Average the round's contributions by training rows, store them, close the round.

        ``banks``: the banks whose bank-side updates the coordinator aggregated; only
        their sessions count (a bank lost between its commit here and its update reaching
        the coordinator's sum would otherwise count on the platform's side only). Every
        one of them must have committed; empty: every committed session counts."""
        self._run_id(run_id)
        if len(banks) > MAX_BANKS:
            raise FederationError(f"FinishRound names {len(banks)} banks; at most {MAX_BANKS}",
                                  code=grpc.StatusCode.INVALID_ARGUMENT)
        with self._lock:
            current = self._check_open(run_id, round_, "finish")
            wanted = set(banks)
            committed = {bank for bank, _, _ in current.contributions.values()}
            missing = sorted(wanted - committed)
            if missing:
                raise FederationError(
                    f"round {round_} of run {run_id!r}: the coordinator aggregated "
                    f"{', '.join(missing)[:200]}, which committed no session here",
                )
            parts = [(state, rows) for bank, state, rows in current.contributions.values()
                     if not wanted or bank in wanted]
            rows = sum(r for _, r in parts)
            if not parts:
                raise FederationError(
                    f"round {round_} of run {run_id!r} has no committed bank session",
                )
            if rows <= 0:
                raise FederationError(
                    f"round {round_} of run {run_id!r}: no committed session forwarded a "
                    "training row",
                )
            version = self.store.save(run_id, round_, weighted_average(parts))
            del self._open[run_id]
            self._version_run[version] = run_id
            seconds = time.monotonic() - self._started.pop(run_id, time.monotonic())
        metrics.observe_round(self.party, seconds)
        log.info("run %s: round %d finished in %.1f s: %d bank sessions, %d training rows, "
                 "model %s", run_id, round_, seconds, len(parts), rows, version,
                 extra={"event": "round-finished", "run": run_id, "round": round_,
                        "seconds": round(seconds, 3)})
        return FinishedRound(version, len(parts), rows)

    def by_version(self, version: str) -> StateDict:
        """The committed model with ``version``; FederationError NOT_FOUND if none."""
        try:
            return self.store.by_version(version)
        except UnknownVersion as exc:
            raise FederationError(str(exc), code=grpc.StatusCode.NOT_FOUND) from None
