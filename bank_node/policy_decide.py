"""The one-applicant decision path: :func:`decide` and :func:`fallback_decision`.

PD → score → grade → approve / refer / decline → limit → APR, plus up to four reason
codes, each step as :class:`bank_node.policy.Policy` defines it. The standard library
only, so a scoring server imports it cheaply; the column-wise twin for many applicants
is :mod:`bank_node.policy_decide_many`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bank_node.policy import FallbackMode, Outcome, Policy, Reason


@dataclass(frozen=True)
class Decision:
    """One applicant's decision. ``limit`` is 0 and ``apr`` None unless approved.

    ``fallback`` says which fallback made it when the platform did not answer in time
    ("bank-only" or "refer"); None for an ordinary decision. ``pd``, ``score`` and
    ``grade`` are None only for a "refer" fallback made without any PD.
    """

    pd: float | None
    score: int | None
    grade: str | None
    outcome: Outcome
    limit: float = 0.0
    apr: float | None = None
    reasons: tuple[Reason, ...] = ()
    fallback: FallbackMode | None = None

    @property
    def approved(self) -> bool:
        """Whether the outcome is approve (only then are limit and APR set)."""
        return self.outcome is Outcome.APPROVE

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: plain str / int / float / None / list / dict only."""
        return {
            "pd": self.pd, "score": self.score, "grade": self.grade,
            "outcome": self.outcome.value, "limit": self.limit, "apr": self.apr,
            "reasons": [r.to_dict() for r in self.reasons], "fallback": self.fallback,
        }

    def describe(self) -> str:
        """A few lines a person can read, e.g. for the CLI."""
        lines = [f"Decision: {self.outcome.value.upper()}"]
        if self.fallback is not None:
            how = ("bank-only model" if self.fallback == "bank-only"
                   else "referred to a credit officer")
            lines.append(f"Fallback: platform did not answer in time; {how}")
        if self.pd is not None:
            lines.append(f"PD:       {self.pd:.2%}")
        if self.score is not None:
            lines.append(f"Score:    {self.score} (grade {self.grade})")
        if self.approved:
            lines.append(f"Limit:    {_money(self.limit)}")
            if self.apr is not None:
                lines.append(f"APR:      {self.apr:.2%} a year")
        if self.reasons:
            lines.append("Reasons:")
            for r in self.reasons:
                lines.append(f"  {r.code}  {r.text} ({', '.join(r.features or (r.feature,))}; "
                             f"PD +{r.contribution:.4f})")
        return "\n".join(lines)


def decide(
    pd: float,
    policy: Policy,
    *,
    contributions: Mapping[str, float] | None = None,
    requested_amount: float | None = None,
) -> Decision:
    """Turn a PD into the bank's decision under ``policy``.

    ``contributions`` maps each of the bank's own features to how much it raised the
    PD (positive = worse for the applicant); the reason codes come from these only.
    ``requested_amount``, when given, caps the credit limit.
    """
    pd = _check_pd("pd", pd)
    requested = _check_amount(requested_amount)
    score = policy.score_for(pd)
    grade = policy.grade_for(score)
    outcome = policy.outcome_for(score)
    approved = outcome is Outcome.APPROVE
    return Decision(
        pd=pd,
        score=score,
        grade=grade.name,
        outcome=outcome,
        limit=policy.limit_for(grade, requested) if approved else 0.0,
        apr=policy.apr.rate(pd) if approved else None,
        reasons=policy.reasons_for(contributions),
    )


def fallback_decision(
    policy: Policy,
    *,
    bank_only_pd: float | None = None,
    contributions: Mapping[str, float] | None = None,
    requested_amount: float | None = None,
) -> Decision:
    """The decision to give when the platform has not answered within
    ``policy.fallback.deadline_ms``, so that a slow platform never hangs an applicant.

    Mode "bank-only" decides on the bank-only model's PD as usual; with no such PD at
    hand it refers. Mode "refer" always refers (to a credit officer), still reporting the
    bank-only score and reasons when a PD is given. A referral has no limit and no APR.
    """
    if policy.fallback.mode == "bank-only" and bank_only_pd is not None:
        made = decide(bank_only_pd, policy, contributions=contributions,
                      requested_amount=requested_amount)
        return Decision(made.pd, made.score, made.grade, made.outcome, made.limit, made.apr,
                        made.reasons, fallback="bank-only")
    _check_amount(requested_amount)
    if bank_only_pd is None:
        return Decision(None, None, None, Outcome.REFER,
                        reasons=policy.reasons_for(contributions), fallback="refer")
    pd = _check_pd("bank_only_pd", bank_only_pd)
    score = policy.score_for(pd)
    return Decision(pd, score, policy.grade_for(score).name, Outcome.REFER,
                    reasons=policy.reasons_for(contributions), fallback="refer")


# -- helpers ------------------------------------------------------------------------------


def _check_pd(name: str, pd: Any) -> float:
    value = float(pd) if isinstance(pd, numbers.Real) and not isinstance(pd, bool) else None
    if value is None or not 0.0 <= value <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"{name} = {pd!r}; expected a probability of default in [0, 1]")
    return value


def _check_amount(amount: Any) -> float | None:
    if amount is None:
        return None
    if (not isinstance(amount, numbers.Real) or isinstance(amount, bool)
            or not math.isfinite(amount) or amount < 0):
        raise ValueError(f"requested_amount = {amount!r}; expected a finite amount >= 0")
    return float(amount)


def _money(amount: float) -> str:
    text = f"{amount:,.2f}"
    return text[:-3] if text.endswith(".00") else text
