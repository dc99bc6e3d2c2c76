"""The bank's credit-decision policy: a TOML file the bank owns that turns a probability
of default (PD) into a decision it can explain.

PD → score on a points scale → grade → approve / refer / decline at the cut-offs →
credit limit → APR inside a band, plus up to four reason codes taken from the bank's own
features. The policy is configuration, not code: a credit officer edits the file, and
every mistake in it is refused when it is loaded, naming the file, the dotted key, the
value found and what was expected. ``default_policy.toml`` next to this module spells
out every key with comments.

Scorecard scale (the usual "points to double the odds" form)::

    factor = points_to_double_odds / ln 2
    offset = base_points - factor * ln(base_odds)
    score  = offset + factor * ln((1 - PD) / PD)        clamped to [score.min, score.max]

so PD = 1 / (1 + base_odds) scores exactly ``base_points`` and every doubling of the
good:bad odds adds ``points_to_double_odds``.

This module is the policy itself: its sections, the checks that refuse a bad file, its
loading from TOML, and the per-step rules a decision applies (score, grade, outcome,
limit, APR, reasons). The two decision paths that apply them are their own modules:
:mod:`bank_node.policy_decide` (:func:`~bank_node.policy_decide.decide`, one applicant,
the standard library only) and :mod:`bank_node.policy_decide_many`
(:func:`~bank_node.policy_decide_many.decide_many`, column-wise with numpy, for portfolio
reviews and batch scoring, giving row by row exactly what ``decide`` gives).
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

import grpc

from fedscore.errors import FedscoreError

FallbackMode = Literal["bank-only", "refer"]
FALLBACK_MODES: tuple[FallbackMode, ...] = ("bank-only", "refer")

#: The most reason codes a decision carries (adverse-action notices usually give four).
MAX_REASONS = 4
#: PD is clamped to [PD_EPS, 1 - PD_EPS] before taking odds, so 0 and 1 still score.
PD_EPS = 1e-9

DEFAULT_POLICY_FILE = Path(__file__).with_name("default_policy.toml")

_SECTIONS: dict[str, tuple[str, ...]] = {
    "score": ("base_points", "base_odds", "points_to_double_odds", "min", "max"),
    "grades": ("name", "min_score", "max_limit"),
    "decision": ("approve_min_score", "decline_below_score"),
    "limit": ("step",),
    "apr": ("min", "max", "pd_at_min", "pd_at_max"),
    "reasons": ("max", "codes"),
    "fallback": ("deadline_ms", "mode"),
}


class PolicyError(FedscoreError, ValueError):
    """A policy file (or a Policy built in code) is malformed; the message names the
    file, the dotted key, the value found and what was expected."""

    code = grpc.StatusCode.INVALID_ARGUMENT


# -- the policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreScale:
    """[score]: the points scale PD is reported on."""

    base_points: float = 600
    base_odds: float = 50.0  # good:bad odds that score base_points
    points_to_double_odds: float = 20
    min: int = 300
    max: int = 900

    @property
    def factor(self) -> float:
        """Points per unit of log-odds: points_to_double_odds / ln 2."""
        return self.points_to_double_odds / math.log(2)

    @property
    def offset(self) -> float:
        """The points at even odds: base_points - factor * ln(base_odds)."""
        return self.base_points - self.factor * math.log(self.base_odds)

    def points(self, pd: float) -> float:
        """Unclamped, unrounded points for a PD; the scorecard identities hold exactly here."""
        p = min(max(pd, PD_EPS), 1.0 - PD_EPS)
        return self.offset + self.factor * math.log((1.0 - p) / p)


@dataclass(frozen=True)
class Grade:
    """[[grades]]: scores from ``min_score`` up to the next better grade's min_score."""

    name: str
    min_score: float
    max_limit: float  # the largest credit limit an approved applicant of this grade gets


@dataclass(frozen=True)
class Cutoffs:
    """[decision]: approve at or above one score, decline below another, refer between."""

    approve_min_score: float = 510
    decline_below_score: float = 500


@dataclass(frozen=True)
class LimitRule:
    """[limit]: limits are rounded down to a multiple of ``step``."""

    step: float = 100


@dataclass(frozen=True)
class AprBand:
    """[apr]: APR is linear in PD from (pd_at_min, min) to (pd_at_max, max), clamped."""

    min: float = 0.15
    max: float = 0.24
    pd_at_min: float = 0.02
    pd_at_max: float = 0.30

    def rate(self, pd: float) -> float:
        """The APR for a PD: linear in the band, clamped to it, rounded to 4 decimals."""
        slope = (self.max - self.min) / (self.pd_at_max - self.pd_at_min)
        apr = self.min + slope * (pd - self.pd_at_min)
        return round(min(max(apr, self.min), self.max), 4)


@dataclass(frozen=True)
class ReasonCode:
    """One [reasons.codes] entry: ``key`` is a feature name, or a prefix ending in ``*``."""

    key: str
    code: str
    text: str

    @property
    def is_prefix(self) -> bool:
        """Whether the key is a prefix ("BILL_AMT*") rather than one feature's name."""
        return self.key.endswith("*")

    def matches(self, feature: str) -> bool:
        """Whether this entry covers ``feature`` (by name, or by prefix)."""
        return feature.startswith(self.key[:-1]) if self.is_prefix else feature == self.key


@dataclass(frozen=True)
class ReasonRules:
    """[reasons]: how many reason codes a decision carries and what they say."""

    max: int = MAX_REASONS
    codes: tuple[ReasonCode, ...] = (
        ReasonCode("PAY_6", "R01", "recent repayment status"),
        ReasonCode("BILL_AMT*", "R02", "outstanding balances"),
        ReasonCode("PAY_AMT*", "R03", "repayment amounts"),
    )

    def code_for(self, feature: str) -> tuple[str, str]:
        """(code, text) for a feature: an exact key wins, then the longest matching prefix;
        a feature the policy does not map gets a code made from its own name."""
        # the same few features on every decision: look each up once per policy (an
        # lru_cache keyed on the rules would hash every code on every call)
        found = self._looked_up.get(feature)
        if found is None:
            found = _code_for(self.codes, feature)
            if len(self._looked_up) < 4096:
                self._looked_up[feature] = found
        return found

    @functools.cached_property
    def _looked_up(self) -> dict[str, tuple[str, str]]:
        return {}


def _code_for(codes: tuple[ReasonCode, ...], feature: str) -> tuple[str, str]:
    for rc in codes:
        if not rc.is_prefix and rc.matches(feature):
            return rc.code, rc.text
    prefixes = [rc for rc in codes if rc.is_prefix and rc.matches(feature)]
    if prefixes:
        best = max(prefixes, key=lambda rc: len(rc.key))
        return best.code, best.text
    return derived_code(feature), feature


MIN_DEADLINE_MS = 1
MAX_DEADLINE_MS = 10_000
"""The platform's part of one decision may take 1 ms to 10 s. Above that no caller is
still waiting (a decision engine's own deadline is far shorter), and a value like 1e13
overflowed gRPC's timeout so that every joint call silently timed out (issue 15)."""


@dataclass(frozen=True)
class Fallback:
    """[fallback]: what the bank decides when the platform does not answer in time."""

    deadline_ms: float = 50
    mode: FallbackMode = "bank-only"

    @property
    def deadline_s(self) -> float:
        """The deadline in seconds, as gRPC's timeouts take it."""
        return self.deadline_ms / 1000.0


DEFAULT_GRADES: tuple[Grade, ...] = (
    Grade("A", 600, 50000),
    Grade("B", 570, 30000),
    Grade("C", 540, 15000),
    Grade("D", 510, 5000),
    Grade("E", 300, 0),
)


@dataclass(frozen=True)
class Policy:
    """The whole decision policy; built from TOML by :meth:`load` / :meth:`from_dict`."""

    score: ScoreScale = field(default_factory=ScoreScale)
    grades: tuple[Grade, ...] = DEFAULT_GRADES
    decision: Cutoffs = field(default_factory=Cutoffs)
    limit: LimitRule = field(default_factory=LimitRule)
    apr: AprBand = field(default_factory=AprBand)
    reasons: ReasonRules = field(default_factory=ReasonRules)
    fallback: Fallback = field(default_factory=Fallback)
    # Where the policy was read from, for error messages; not part of equality.
    source: Path | str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Checks that need values only (types are checked while parsing), so a Policy
        built in code is held to the same rules as one read from a file."""
        where = _where(self.source)
        s = self.score
        for name in ("base_points", "base_odds", "points_to_double_odds"):
            _need_number(where, f"score.{name}", getattr(s, name))
        for name in ("min", "max"):
            _need_int(where, f"score.{name}", getattr(s, name))
        if s.base_odds <= 0:
            _fail(where, "score.base_odds", s.base_odds, "a number > 0 (good:bad odds)")
        if s.points_to_double_odds <= 0:
            _fail(where, "score.points_to_double_odds", s.points_to_double_odds,
                  "a number > 0")
        if s.min >= s.max:
            _fail(where, "score.min", s.min, f"an integer < score.max = {_fmt(s.max)}")

        if not self.grades:
            raise PolicyError(f"{where}: grades: no grades; expected at least one [[grades]] "
                              "table with name, min_score and max_limit")
        names: set[str] = set()
        for i, g in enumerate(self.grades):
            key = f"grades[{i}]"
            if not isinstance(g.name, str) or not g.name:
                _fail(where, f"{key}.name", g.name, "a non-empty string")
            if g.name in names:
                _fail(where, f"{key}.name", g.name, "a name not used by an earlier grade")
            names.add(g.name)
            _need_number(where, f"{key}.min_score", g.min_score)
            _need_number(where, f"{key}.max_limit", g.max_limit)
            if g.max_limit < 0:
                _fail(where, f"{key}.max_limit", g.max_limit, "a number >= 0")
            if i == 0 and g.min_score > s.max:
                _fail(where, f"{key}.min_score", g.min_score,
                      f"a score <= score.max = {_fmt(s.max)}, or no score reaches the grade")
            if i > 0 and g.min_score >= self.grades[i - 1].min_score:
                _fail(where, f"{key}.min_score", g.min_score,
                      f"a score < grades[{i - 1}].min_score = "
                      f"{_fmt(self.grades[i - 1].min_score)} (grades go best first, "
                      "strictly descending)")
        last = len(self.grades) - 1
        if self.grades[last].min_score > s.min:
            _fail(where, f"grades[{last}].min_score", self.grades[last].min_score,
                  f"a score <= score.min = {_fmt(s.min)}, so that every score has a grade")

        d = self.decision
        _need_number(where, "decision.approve_min_score", d.approve_min_score)
        _need_number(where, "decision.decline_below_score", d.decline_below_score)
        if d.decline_below_score > d.approve_min_score:
            _fail(where, "decision.decline_below_score", d.decline_below_score,
                  f"a score <= decision.approve_min_score = {_fmt(d.approve_min_score)}")

        _need_number(where, "limit.step", self.limit.step)
        if self.limit.step <= 0:
            _fail(where, "limit.step", self.limit.step, "a number > 0")

        a = self.apr
        for name in ("min", "max", "pd_at_min", "pd_at_max"):
            _need_number(where, f"apr.{name}", getattr(a, name))
        for name in ("min", "max"):
            value = getattr(a, name)
            if not 0 < value < 1:
                _fail(where, f"apr.{name}", value,
                      "a yearly rate as a fraction, 0 < rate < 1 (0.15 is 15%)")
        if a.min > a.max:
            _fail(where, "apr.min", a.min, f"a rate <= apr.max = {_fmt(a.max)}")
        for name in ("pd_at_min", "pd_at_max"):
            value = getattr(a, name)
            if not 0 <= value <= 1:
                _fail(where, f"apr.{name}", value, "a probability in [0, 1]")
        if a.pd_at_min >= a.pd_at_max:
            _fail(where, "apr.pd_at_min", a.pd_at_min,
                  f"a PD < apr.pd_at_max = {_fmt(a.pd_at_max)}")

        r = self.reasons
        _need_int(where, "reasons.max", r.max)
        if not 1 <= r.max <= MAX_REASONS:
            _fail(where, "reasons.max", r.max, f"an integer from 1 to {MAX_REASONS}")
        texts: dict[str, str] = {}
        keys: set[str] = set()
        for rc in r.codes:
            key = f"reasons.codes.{_toml_key(str(rc.key))}"
            if not isinstance(rc.key, str) or not rc.key or "*" in rc.key[:-1]:
                _fail(where, key, rc.key,
                      "a feature name, or a prefix with one trailing '*' (\"BILL_AMT*\")")
            if rc.key in keys:
                raise PolicyError(f"{where}: {key}: listed twice; expected each feature or "
                                  "prefix once")
            keys.add(rc.key)
            if not _is_code(rc.code) or not isinstance(rc.text, str) or not rc.text.strip():
                _fail(where, key, f"{rc.code} {rc.text}",
                      '"CODE text": a code without spaces, then the text, e.g. '
                      '"R02 outstanding balances"')
            if texts.setdefault(rc.code, rc.text) != rc.text:
                _fail(where, key, f"{rc.code} {rc.text}",
                      f"the same text as the other {rc.code!r} entry ({texts[rc.code]!r}); "
                      "one code has one text")

        f = self.fallback
        _need_number(where, "fallback.deadline_ms", f.deadline_ms)
        if not MIN_DEADLINE_MS <= f.deadline_ms <= MAX_DEADLINE_MS:
            _fail(where, "fallback.deadline_ms", f.deadline_ms,
                  f"milliseconds in [{MIN_DEADLINE_MS}, {MAX_DEADLINE_MS}]")
        if f.mode not in FALLBACK_MODES:
            _fail(where, "fallback.mode", f.mode,
                  f"one of {', '.join(_fmt(m) for m in FALLBACK_MODES)}")

    # -- the steps of a decision ---------------------------------------------------------

    def score_for(self, pd: float) -> int:
        """The reported score: points clamped to [score.min, score.max], rounded half up."""
        s = self.score
        points = min(max(s.points(pd), float(s.min)), float(s.max))
        return math.floor(points + 0.5)

    def grade_for(self, score: float) -> Grade:
        """The best grade whose min_score the score reaches (the last grade catches all)."""
        for g in self.grades:
            if score >= g.min_score:
                return g
        return self.grades[-1]

    def outcome_for(self, score: float) -> Outcome:
        """Approve at or above decision.approve_min_score, decline below
        decision.decline_below_score, refer between."""
        if score >= self.decision.approve_min_score:
            return Outcome.APPROVE
        if score < self.decision.decline_below_score:
            return Outcome.DECLINE
        return Outcome.REFER

    def limit_for(self, grade: Grade, requested_amount: float | None = None) -> float:
        """The grade's max_limit, capped by what was asked for, rounded down to limit.step."""
        cap = float(grade.max_limit)
        if requested_amount is not None:
            cap = min(cap, requested_amount)
        step = float(self.limit.step)
        # The small epsilon keeps 0.3 / 0.1 = 2.9999999999999996 from losing a step.
        return round(math.floor(cap / step + 1e-9) * step, 9)

    def reasons_for(self, contributions: Mapping[str, float] | None) -> tuple[Reason, ...]:
        """Up to reasons.max reasons: the features that raised the PD most, one per code.

        Only positive contributions count (a feature that lowered the PD is no reason to
        decline); features that share a code are merged by summing their contributions,
        so a code appears once. Largest first; ties go by feature name.
        """
        if not contributions:
            return ()
        groups: dict[str, list[tuple[str, float]]] = {}
        for feature, value in contributions.items():
            if not isinstance(feature, str) or not feature:
                raise ValueError(f"contributions: feature name {feature!r}; expected a "
                                 "non-empty string")
            if (type(value) is not float and (  # the common case first: ABCs are slow
                    not isinstance(value, numbers.Real) or isinstance(value, bool))
                    ) or not math.isfinite(value):
                raise ValueError(f"contributions[{feature!r}] = {value!r}; expected a finite "
                                 "number (how much the feature raised the PD)")
            if value > 0:
                code, _ = self.reasons.code_for(feature)
                groups.setdefault(code, []).append((feature, float(value)))
        ranked = []  # (-contribution, first feature, code, members): Reasons for the top only
        for code, members in groups.items():
            members.sort(key=lambda m: (-m[1], m[0]))
            ranked.append((-math.fsum(m[1] for m in members), members[0][0], code, members))
        ranked.sort(key=lambda r: (r[0], r[1]))
        return tuple(Reason(first, code, self.reasons.code_for(first)[1], -total,
                            tuple(m[0] for m in members))
                     for total, first, code, members in ranked[: self.reasons.max])

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | str | None = None) -> Policy:
        """Build from parsed TOML; a missing section or key takes its default, an unknown
        one is refused by name."""
        where = _where(source)
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: expected a table of policy sections, got {data!r}")
        _known(where, "", data, tuple(_SECTIONS))
        score = _section(where, data, "score")
        decision = _section(where, data, "decision")
        limit = _section(where, data, "limit")
        apr = _section(where, data, "apr")
        reasons = _section(where, data, "reasons")
        fallback = _section(where, data, "fallback")
        grades = DEFAULT_GRADES if "grades" not in data else _grades(where, data["grades"])

        mode = fallback.get("mode", Fallback.mode)
        if not isinstance(mode, str):
            _fail(where, "fallback.mode", mode,
                  f"a string, one of {', '.join(_fmt(m) for m in FALLBACK_MODES)}")
        return cls(
            score=ScoreScale(
                base_points=_num(where, "score.base_points", score, ScoreScale.base_points),
                base_odds=_num(where, "score.base_odds", score, ScoreScale.base_odds),
                points_to_double_odds=_num(where, "score.points_to_double_odds", score,
                                           ScoreScale.points_to_double_odds),
                min=_int(where, "score.min", score, ScoreScale.min),
                max=_int(where, "score.max", score, ScoreScale.max),
            ),
            grades=grades,
            decision=Cutoffs(
                approve_min_score=_num(where, "decision.approve_min_score", decision,
                                       Cutoffs.approve_min_score),
                decline_below_score=_num(where, "decision.decline_below_score", decision,
                                         Cutoffs.decline_below_score),
            ),
            limit=LimitRule(step=_num(where, "limit.step", limit, LimitRule.step)),
            apr=AprBand(
                min=_num(where, "apr.min", apr, AprBand.min),
                max=_num(where, "apr.max", apr, AprBand.max),
                pd_at_min=_num(where, "apr.pd_at_min", apr, AprBand.pd_at_min),
                pd_at_max=_num(where, "apr.pd_at_max", apr, AprBand.pd_at_max),
            ),
            reasons=ReasonRules(
                max=_int(where, "reasons.max", reasons, ReasonRules.max),
                codes=(ReasonRules.codes if "codes" not in reasons
                       else _codes(where, reasons["codes"])),
            ),
            fallback=Fallback(
                deadline_ms=_num(where, "fallback.deadline_ms", fallback, Fallback.deadline_ms),
                mode=cast(FallbackMode, mode),
            ),
            source=source,
        )

    @classmethod
    def load(cls, path: Path | str) -> Policy:
        """Read and check a policy file; PolicyError names the file and what is wrong."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise PolicyError(f"{path}: policy file not found") from None
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{path}: not valid UTF-8 at byte offset {exc.start}; "
                              "expected a UTF-8 TOML file") from None
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read policy file: {exc.strerror}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, source=path)

    @classmethod
    def default(cls) -> Policy:
        """The policy shipped in ``bank_node/default_policy.toml``."""
        return cls.load(DEFAULT_POLICY_FILE)


# -- the vocabulary of a decision -------------------------------------------------------


class Outcome(StrEnum):
    """What the bank decides for an applicant."""

    APPROVE = "approve"
    REFER = "refer"  # to a credit officer
    DECLINE = "decline"


@dataclass(frozen=True)
class Reason:
    """Why the score is lower: one reason code, and the bank features behind it.

    ``feature`` is the feature that contributed most under this code; ``features`` lists
    every feature merged into it, largest first; ``contribution`` is their summed rise
    in PD.
    """

    feature: str
    code: str
    text: str
    contribution: float
    features: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: plain str / float / list only."""
        return {"feature": self.feature, "code": self.code, "text": self.text,
                "contribution": self.contribution, "features": list(self.features)}


def derived_code(feature: str) -> str:
    """The reason code of a feature the policy does not map: its name, upper case, with
    anything but letters and digits turned into '_'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", feature).strip("_").upper() or "FEATURE"


# -- helpers ------------------------------------------------------------------------------


def _where(source: Path | str | None) -> str:
    return str(source) if source is not None else "<policy>"


def _fmt(value: Any) -> str:
    """A value as the policy file would spell it (true, "text", 20)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _fail(where: str, key: str, value: Any, expected: str) -> NoReturn:
    raise PolicyError(f"{where}: {key} = {_fmt(value)}; expected {expected}")


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _need_number(where: str, key: str, value: Any) -> None:
    if not _is_number(value):
        _fail(where, key, value, "a finite number")


def _need_int(where: str, key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(where, key, value, "an integer")


def _known(where: str, prefix: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key, value in table.items():
        if key not in allowed:
            shown = "" if isinstance(value, Mapping | list) else f" = {_fmt(value)}"
            raise PolicyError(f"{where}: unknown key {prefix}{_toml_key(str(key))}{shown}; "
                              f"expected only {', '.join(prefix + k for k in allowed)}")


def _section(where: str, data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        _fail(where, name, table, f"a table [{name}]")
    _known(where, f"{name}.", table, _SECTIONS[name])
    return cast(Mapping[str, Any], table)


def _num(where: str, key: str, table: Mapping[str, Any], default: float) -> float:
    value = table.get(key.rsplit(".", 1)[-1], default)
    _need_number(where, key, value)
    return cast(float, value)


def _int(where: str, key: str, table: Mapping[str, Any], default: int) -> int:
    value = table.get(key.rsplit(".", 1)[-1], default)
    _need_int(where, key, value)
    return cast(int, value)


def _grades(where: str, raw: Any) -> tuple[Grade, ...]:
    if not isinstance(raw, list) or not raw:
        _fail(where, "grades", raw, "one or more [[grades]] tables, best grade first")
    grades: list[Grade] = []
    for i, g in enumerate(raw):
        key = f"grades[{i}]"
        if not isinstance(g, Mapping):
            _fail(where, key, g, "a [[grades]] table with name, min_score and max_limit")
        _known(where, f"{key}.", g, _SECTIONS["grades"])
        for name in _SECTIONS["grades"]:
            if name not in g:
                raise PolicyError(f"{where}: {key}: missing key {name!r}; expected name, "
                                  "min_score and max_limit in every [[grades]] table")
        if not isinstance(g["name"], str) or not g["name"]:
            _fail(where, f"{key}.name", g["name"], "a non-empty string")
        grades.append(Grade(g["name"], _num(where, f"{key}.min_score", g, 0),
                            _num(where, f"{key}.max_limit", g, 0)))
    return tuple(grades)


def _codes(where: str, raw: Any) -> tuple[ReasonCode, ...]:
    if not isinstance(raw, Mapping):
        _fail(where, "reasons.codes", raw,
              'a table [reasons.codes] of feature = "CODE text" lines')
    codes: list[ReasonCode] = []
    for feature, spec in raw.items():
        key = f"reasons.codes.{_toml_key(feature)}"
        parts = spec.strip().split(None, 1) if isinstance(spec, str) else []
        if len(parts) != 2:
            _fail(where, key, spec, '"CODE text", e.g. "R02 outstanding balances"')
        code = parts[0].rstrip(":")  # "R02: outstanding balances" reads as well
        codes.append(ReasonCode(feature, code, parts[1].strip()))
    return tuple(codes)


def _is_code(code: Any) -> bool:
    return isinstance(code, str) and bool(code) and not any(c.isspace() for c in code)


def _toml_key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    return name if bare else json.dumps(name, ensure_ascii=False)
