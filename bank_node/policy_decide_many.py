"""The column-wise decision path: :func:`decide_many` for many applicants at once.

For portfolio reviews and batch scoring: numpy columns in, :class:`Decisions` out, each
row exactly what :func:`bank_node.policy_decide.decide` gives for that applicant (less
its reasons), bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bank_node.policy import PD_EPS, Outcome, Policy
from bank_node.policy_decide import Decision

#: ``Decisions.outcome`` holds an index into this tuple.
OUTCOMES: tuple[Outcome, ...] = (Outcome.APPROVE, Outcome.REFER, Outcome.DECLINE)
_APPROVE, _REFER, _DECLINE = 0, 1, 2
_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True, eq=False)
class Decisions:
    """Column-wise decisions for many applicants (no reasons), as :func:`decide_many`
    makes them. Row ``i`` is exactly what :func:`~bank_node.policy_decide.decide` gives
    for that applicant, less its reasons; :meth:`row` builds that Decision. The columns
    are read-only. Two Decisions compare by identity (a numpy array has no single truth
    value).
    """

    pd: NDArray[np.float64]  # [n]
    score: NDArray[np.int32]  # [n]
    grade: NDArray[np.int32]  # [n], an index into policy.grades
    outcome: NDArray[np.int8]  # [n], an index into OUTCOMES
    limit: NDArray[np.float64]  # [n], 0 unless approved
    apr: NDArray[np.float64]  # [n], NaN unless approved

    def __len__(self) -> int:
        return len(self.pd)

    def row(self, i: int, policy: Policy) -> Decision:
        """Row ``i`` as the Decision :func:`~bank_node.policy_decide.decide` gives (no
        reasons); ``policy`` must be the one the decisions were made under (it names the
        grades)."""
        outcome = OUTCOMES[int(self.outcome[i])]
        approved = outcome is Outcome.APPROVE
        return Decision(
            pd=float(self.pd[i]),
            score=int(self.score[i]),
            grade=policy.grades[int(self.grade[i])].name,
            outcome=outcome,
            limit=float(self.limit[i]) if approved else 0.0,
            apr=float(self.apr[i]) if approved else None,
        )


def decide_many(
    pd: ArrayLike,
    policy: Policy,
    *,
    requested_amount: ArrayLike | None = None,
) -> Decisions:
    """:func:`~bank_node.policy_decide.decide` for many applicants at once, column by
    column and without reasons.

    Row ``i`` is exactly ``decide(pd[i], policy, requested_amount=requested_amount[i])``,
    bit for bit: the same half-up score rounding and clamping, grade boundaries, cut-offs,
    limit rounding down to the step and capping by the request, and APR rounded as
    Python's ``round(apr, 4)`` rounds it. NaN in ``requested_amount`` means that applicant
    asked for no amount. A bad row raises ValueError naming the first one: a PD that is
    NaN or outside [0, 1], or a requested amount that is negative or infinite.

    The arithmetic is numpy's, in the same order as the scalar path's. Where numpy's
    answer could differ from the standard library's (``np.log`` may be an ulp off
    ``math.log``; ``round`` to decimals is not "multiply, rint, divide") the few rows
    too near a rounding tie for that to be ruled out are redone by the scalar code.
    """
    pds = _pd_column(pd)
    requested = _amount_column(requested_amount, len(pds))

    s = policy.score
    if s.min < _INT32[0] or s.max > _INT32[1]:
        raise ValueError(f"score scale [{s.min}, {s.max}] does not fit the int32 score column")
    # ScoreScale.points and Policy.score_for, column-wise. Python's max(x, lo) is
    # "lo if lo > x else x" and min(x, hi) is "hi if hi < x else x"; np.where says the same.
    p = np.where(pds < PD_EPS, PD_EPS, pds)
    p = np.where(p > 1.0 - PD_EPS, 1.0 - PD_EPS, p)
    log_odds = np.log((1.0 - p) / p)
    factor, offset = s.factor, s.offset
    points = offset + factor * log_odds
    lo, hi = float(s.min), float(s.max)
    clamped = np.where(points < lo, lo, points)
    clamped = np.where(clamped > hi, hi, clamped)
    scores = np.floor(clamped + 0.5)
    # np.log and math.log agree to an ulp or so, which moves the score only when the
    # points sit on a half: redo every row within a wide margin of one (2**22 ulps of the
    # terms, a handful of rows in a million) with the scalar code itself.
    margin = 2.0**-30 * (1.0 + abs(offset) + abs(factor) * (1.0 + np.abs(log_odds)))
    near_half = ~(np.abs(points - (np.floor(points) + 0.5)) > margin)
    for i in np.flatnonzero(near_half).tolist():
        scores[i] = policy.score_for(float(pds[i]))
    score = scores.astype(np.int32)

    # Policy.grade_for: the first (best) grade whose min_score the score reaches; grades
    # are strictly descending, so that is the number of grades with min_score > score.
    mins = np.array([float(g.min_score) for g in policy.grades])
    grade = np.minimum(np.searchsorted(-mins, -scores, side="left"),
                       len(policy.grades) - 1).astype(np.int32)

    # Policy.outcome_for.
    d = policy.decision
    outcome = np.where(scores >= d.approve_min_score, _APPROVE,
                       np.where(scores < d.decline_below_score, _DECLINE, _REFER)
                       ).astype(np.int8)

    approved = np.flatnonzero(outcome == _APPROVE)
    # Policy.limit_for, approved rows only. min(cap, asked) is "asked if asked < cap else
    # cap", so NaN (no request) leaves the grade's limit.
    max_limits = np.array([float(g.max_limit) for g in policy.grades])
    cap = max_limits[grade[approved]]
    if requested is not None:
        asked = requested[approved]
        cap = np.where(asked < cap, asked, cap)
    step = float(policy.limit.step)
    limit = np.zeros(len(pds))
    limit[approved] = _round_column(np.floor(cap / step + 1e-9) * step, 9)

    # AprBand.rate, approved rows only.
    a = policy.apr
    slope = (a.max - a.min) / (a.pd_at_max - a.pd_at_min)
    rate = a.min + slope * (pds[approved] - a.pd_at_min)
    rate = np.where(rate < a.min, a.min, rate)
    rate = np.where(rate > a.max, a.max, rate)
    apr = np.full(len(pds), np.nan)
    apr[approved] = _round_column(rate, 4)

    for column in (pds, score, grade, outcome, limit, apr):
        column.setflags(write=False)
    return Decisions(pd=pds, score=score, grade=grade, outcome=outcome, limit=limit, apr=apr)


# -- helpers ------------------------------------------------------------------------------


def _pd_column(pd: ArrayLike) -> NDArray[np.float64]:
    """PDs as a fresh float64 column, or ValueError naming the first bad row."""
    given = np.asarray(pd)
    if given.ndim != 1:
        raise ValueError(f"pd: an array of shape {given.shape}; expected one dimension, "
                         "a probability of default per applicant")
    if given.dtype.kind not in "fiu":
        raise ValueError(f"pd: an array of {given.dtype}; expected numbers, probabilities "
                         "of default in [0, 1]")
    column = given.astype(np.float64)
    bad = np.flatnonzero(~((column >= 0.0) & (column <= 1.0)))  # NaN fails both
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"pd[{i}] = {given[i].item()!r}; expected a probability of "
                         "default in [0, 1]")
    return column


def _amount_column(amount: ArrayLike | None, n: int) -> NDArray[np.float64] | None:
    """Requested amounts as a float64 column (NaN: no request), or ValueError naming the
    first bad row."""
    if amount is None:
        return None
    given = np.asarray(amount)
    if given.shape != (n,):
        raise ValueError(f"requested_amount: an array of shape {given.shape}; expected "
                         f"({n},), one amount per PD (NaN for no request)")
    if given.dtype.kind not in "fiu":
        raise ValueError(f"requested_amount: an array of {given.dtype}; expected numbers")
    column = given.astype(np.float64)
    bad = np.flatnonzero(~(np.isnan(column) | ((column >= 0.0) & (column < math.inf))))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"requested_amount[{i}] = {given[i].item()!r}; expected a finite "
                         "amount >= 0, or NaN for no request")
    return column


def _round_column(x: NDArray[np.float64], ndigits: int) -> NDArray[np.float64]:
    """``round(v, ndigits)`` for every v in ``x``, bit for bit as Python's round gives it.

    Python rounds the exact binary value half to even at the ndigits-th decimal, then
    returns the float nearest that decimal. ``np.round`` rounds ``x * 10**ndigits``
    instead, and that product's own rounding can tip a value across a tie (np.round(
    0.00125, 4) is 0.0012, round(0.00125, 4) is 0.0013). So: rint(y) with y = x *
    10**ndigits is Python's decimal wherever y is further from a tie than y's rounding
    error (at most half an ulp, so ``|y| * 2**-53``; we ask for 8 times that), and the
    exact integer divided by the exact power of ten is the float nearest that decimal,
    as Python's is. Integral values are their own rounding. The rest (too near a tie,
    too large, not finite) are rounded by Python itself.
    """
    scale = float(10**ndigits)  # exact for ndigits <= 22
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN go to Python below
        y = x * scale
        whole = np.rint(y)
        out = whole / scale
        integral = x == np.floor(x)
        out[integral] = x[integral]
        sure = np.abs(np.abs(y - whole) - 0.5) > np.abs(y) * 2.0**-50
    for i in np.flatnonzero(~(sure | integral)).tolist():
        out[i] = round(float(x[i]), ndigits)
    return out
