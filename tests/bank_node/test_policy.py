"""The bank's decision policy: scorecard maths, grades, cut-offs, limits, APR, reason
codes, fallback, and a named error for every kind of mistake in the policy file."""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bank_node.policy import (
    DEFAULT_POLICY_FILE,
    PD_EPS,
    AprBand,
    Outcome,
    Policy,
    PolicyError,
    Reason,
    derived_code,
)
from bank_node.policy_decide import Decision, decide, fallback_decision
from bank_node.policy_decide_many import OUTCOMES, Decisions, _round_column, decide_many

DEFAULT = Policy()


def pd_at_odds(odds: float) -> float:
    return 1.0 / (1.0 + odds)


def pd_for_score(score: float, policy: Policy = DEFAULT) -> float:
    """The PD whose unrounded points are exactly ``score``."""
    s = policy.score
    return pd_at_odds(s.base_odds * 2 ** ((score - s.base_points) / s.points_to_double_odds))


def write(tmp_path: Path, text: str, name: str = "bank_policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- scorecard --------------------------------------------------------------------------


def test_base_odds_score_base_points() -> None:
    assert DEFAULT.score.points(pd_at_odds(50.0)) == pytest.approx(600.0, abs=1e-9)
    assert DEFAULT.score_for(pd_at_odds(50.0)) == 600


@pytest.mark.parametrize("odds", [0.5, 3.0, 50.0, 400.0])
def test_doubling_the_odds_adds_points_to_double_odds(odds: float) -> None:
    s = DEFAULT.score
    gain = s.points(pd_at_odds(2 * odds)) - s.points(pd_at_odds(odds))
    assert gain == pytest.approx(20.0, abs=1e-9)


def test_scale_follows_the_policy_file() -> None:
    policy = Policy.from_dict({"score": {"base_points": 660, "base_odds": 72,
                                         "points_to_double_odds": 40}})
    s = policy.score
    assert s.points(pd_at_odds(72)) == pytest.approx(660.0)
    assert s.points(pd_at_odds(144)) - s.points(pd_at_odds(72)) == pytest.approx(40.0)
    assert s.factor == pytest.approx(40 / math.log(2))
    assert s.offset == pytest.approx(660 - 40 / math.log(2) * math.log(72))


def test_score_decreases_as_pd_rises() -> None:
    pds = [i / 1000 for i in range(1, 1000)]
    points = [DEFAULT.score.points(p) for p in pds]
    assert all(a > b for a, b in itertools.pairwise(points))
    scores = [DEFAULT.score_for(p) for p in pds]
    assert all(a >= b for a, b in itertools.pairwise(scores))
    assert scores[0] > scores[-1]


def test_score_is_clamped_to_the_scale_and_an_int() -> None:
    assert DEFAULT.score_for(0.0) == 900
    assert DEFAULT.score_for(1e-8) == 900
    assert DEFAULT.score_for(1.0) == 300
    assert DEFAULT.score_for(0.9999) == 300
    assert isinstance(DEFAULT.score_for(0.1), int)
    assert DEFAULT.score_for(0.1) == round(DEFAULT.score.points(0.1))


# -- grades, outcomes, limits -----------------------------------------------------------


@pytest.mark.parametrize(("score", "grade"), [
    (900, "A"), (600, "A"), (599, "B"), (570, "B"), (569, "C"), (540, "C"),
    (539, "D"), (510, "D"), (509, "E"), (300, "E"),
])
def test_grade_boundaries(score: int, grade: str) -> None:
    assert DEFAULT.grade_for(score).name == grade
    decision = decide(pd_for_score(score), DEFAULT)
    assert decision.score == score
    assert decision.grade == grade


@pytest.mark.parametrize(("score", "outcome"), [
    (700, Outcome.APPROVE), (510, Outcome.APPROVE), (509, Outcome.REFER),
    (500, Outcome.REFER), (499, Outcome.DECLINE), (300, Outcome.DECLINE),
])
def test_outcomes_at_the_cutoffs(score: int, outcome: Outcome) -> None:
    assert decide(pd_for_score(score), DEFAULT).outcome is outcome


def test_cutoffs_come_from_the_policy() -> None:
    policy = Policy.from_dict({"decision": {"approve_min_score": 620,
                                            "decline_below_score": 580}})
    assert decide(pd_for_score(620), policy).outcome is Outcome.APPROVE
    assert decide(pd_for_score(619), policy).outcome is Outcome.REFER
    assert decide(pd_for_score(580), policy).outcome is Outcome.REFER
    assert decide(pd_for_score(579), policy).outcome is Outcome.DECLINE
    no_refer = Policy.from_dict({"decision": {"approve_min_score": 550,
                                              "decline_below_score": 550}})
    assert decide(pd_for_score(550), no_refer).outcome is Outcome.APPROVE
    assert decide(pd_for_score(549), no_refer).outcome is Outcome.DECLINE


def test_limit_is_the_grade_limit_capped_and_rounded_down() -> None:
    a = pd_for_score(650)
    assert decide(a, DEFAULT).limit == 50000
    assert decide(a, DEFAULT, requested_amount=12345).limit == 12300
    assert decide(a, DEFAULT, requested_amount=12300).limit == 12300
    assert decide(a, DEFAULT, requested_amount=99.99).limit == 0
    assert decide(a, DEFAULT, requested_amount=1e9).limit == 50000
    assert decide(pd_for_score(520), DEFAULT, requested_amount=12345).limit == 5000  # grade D
    coarse = Policy.from_dict({"limit": {"step": 250}})
    assert decide(a, coarse, requested_amount=1999).limit == 1750
    fine = Policy.from_dict({"limit": {"step": 0.1}})
    assert decide(a, fine, requested_amount=0.3).limit == pytest.approx(0.3)
    assert decide(a, fine, requested_amount=0.3).limit >= 0.3 - 1e-12


@pytest.mark.parametrize("score", [509, 500, 499, 300])
def test_no_limit_and_no_apr_unless_approved(score: int) -> None:
    decision = decide(pd_for_score(score), DEFAULT, requested_amount=5000)
    assert decision.outcome is not Outcome.APPROVE
    assert decision.limit == 0
    assert decision.apr is None


@pytest.mark.parametrize("amount", [-1.0, math.nan, math.inf, True, "100"])
def test_bad_requested_amount_is_refused(amount: Any) -> None:
    with pytest.raises(ValueError, match="requested_amount"):
        decide(0.01, DEFAULT, requested_amount=amount)


@pytest.mark.parametrize("pd", [math.nan, -0.01, 1.01, True, "0.5", None])
def test_bad_pd_is_refused(pd: Any) -> None:
    with pytest.raises(ValueError, match="pd"):
        decide(pd, DEFAULT)


# -- APR --------------------------------------------------------------------------------

APPROVE_ALL = Policy.from_dict({"decision": {"approve_min_score": 300,
                                             "decline_below_score": 300}})


def test_apr_at_the_band_ends() -> None:
    assert decide(0.02, APPROVE_ALL).apr == pytest.approx(0.15)
    assert decide(0.30, APPROVE_ALL).apr == pytest.approx(0.24)
    assert decide(0.001, APPROVE_ALL).apr == pytest.approx(0.15)
    assert decide(0.9, APPROVE_ALL).apr == pytest.approx(0.24)


def test_apr_is_linear_in_pd_between_the_anchors() -> None:
    assert decide(0.16, APPROVE_ALL).apr == pytest.approx(0.195)
    band = AprBand(min=0.10, max=0.20, pd_at_min=0.0, pd_at_max=0.5)
    assert band.rate(0.125) == pytest.approx(0.125)
    assert band.rate(0.25) == pytest.approx(0.15)
    assert band.rate(0.123456) == round(band.rate(0.123456), 4)


def test_apr_never_leaves_the_band() -> None:
    rates = [decide(i / 200, APPROVE_ALL).apr for i in range(201)]
    assert all(r is not None and 0.15 <= r <= 0.24 for r in rates)
    assert rates == sorted(rates)  # type: ignore[type-var]


# -- reason codes -----------------------------------------------------------------------


def test_reasons_are_the_top_four_positive_contributions() -> None:
    contributions = {"PAY_6": 0.05, "AGE": 0.04, "LIMIT_BAL": 0.03, "EDU": 0.02, "SEX": 0.01,
                     "MARRIAGE": -0.2, "X": 0.0}
    reasons = decide(0.1, DEFAULT, contributions=contributions).reasons
    assert [r.feature for r in reasons] == ["PAY_6", "AGE", "LIMIT_BAL", "EDU"]
    assert [r.contribution for r in reasons] == [0.05, 0.04, 0.03, 0.02]
    assert reasons[0].code == "R01"
    assert reasons[0].text == "recent repayment status"
    only_negative = decide(0.1, DEFAULT, contributions={"PAY_6": -0.1, "AGE": 0.0})
    assert only_negative.reasons == ()
    assert decide(0.1, DEFAULT).reasons == ()


def test_reasons_max_is_respected() -> None:
    policy = Policy.from_dict({"reasons": {"max": 2}})
    reasons = decide(0.1, policy, contributions={"a": 3.0, "b": 2.0, "c": 1.0}).reasons
    assert [r.feature for r in reasons] == ["a", "b"]


def test_prefix_mapping_merges_features_under_one_code() -> None:
    contributions = {"BILL_AMT1": 0.01, "BILL_AMT2": 0.03, "BILL_AMT3": -0.5,
                     "PAY_6": 0.035, "PAY_AMT4": 0.001}
    reasons = decide(0.1, DEFAULT, contributions=contributions).reasons
    assert [r.code for r in reasons] == ["R02", "R01", "R03"]
    merged = reasons[0]
    assert merged == Reason("BILL_AMT2", "R02", "outstanding balances", merged.contribution,
                            ("BILL_AMT2", "BILL_AMT1"))
    assert merged.contribution == pytest.approx(0.04)
    assert [r.code for r in reasons].count("R02") == 1


def test_exact_key_beats_prefix_and_longer_prefix_beats_shorter() -> None:
    policy = Policy.from_dict({"reasons": {"codes": {
        "BILL*": "R10 bills", "BILL_AMT*": "R11 bill amounts", "BILL_AMT1": "R12 last bill",
    }}})
    rules = policy.reasons
    assert rules.code_for("BILL_AMT1") == ("R12", "last bill")
    assert rules.code_for("BILL_AMT2") == ("R11", "bill amounts")
    assert rules.code_for("BILLING") == ("R10", "bills")
    assert rules.code_for("PAY_6") == ("PAY_6", "PAY_6")  # the default codes were replaced


def test_code_with_colon_and_catch_all_prefix() -> None:
    policy = Policy.from_dict({"reasons": {"codes": {"*": "R99: other bank data"}}})
    assert policy.reasons.code_for("anything") == ("R99", "other bank data")


def test_unmapped_features_get_a_code_from_their_name() -> None:
    reasons = decide(0.1, DEFAULT, contributions={"months on book": 0.2}).reasons
    assert reasons[0].code == "MONTHS_ON_BOOK" == derived_code("months on book")
    assert reasons[0].text == "months on book"


def test_ties_go_by_feature_name() -> None:
    contributions = {"c": 0.01, "a": 0.01, "d": 0.01, "b": 0.01, "e": 0.01}
    reasons = decide(0.1, DEFAULT, contributions=contributions).reasons
    assert [r.feature for r in reasons] == ["a", "b", "c", "d"]
    merged = decide(0.1, DEFAULT, contributions={"PAY_AMT2": 0.01, "PAY_AMT1": 0.01}).reasons
    assert merged[0].feature == "PAY_AMT1"
    assert merged[0].features == ("PAY_AMT1", "PAY_AMT2")


@pytest.mark.parametrize("bad", [{"PAY_6": math.nan}, {"PAY_6": "0.1"}, {"": 0.1},
                                 {"PAY_6": True}])
def test_bad_contributions_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="contributions"):
        decide(0.1, DEFAULT, contributions=bad)


# -- decision output and fallback -------------------------------------------------------


def test_decision_to_dict_is_json_and_describe_reads() -> None:
    decision = decide(pd_for_score(650), DEFAULT, requested_amount=12345,
                      contributions={"PAY_6": 0.02, "BILL_AMT1": 0.01})
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["outcome"] == "approve"
    assert data["score"] == 650
    assert data["grade"] == "A"
    assert data["limit"] == 12300
    assert data["apr"] == decision.apr
    assert [r["code"] for r in data["reasons"]] == ["R01", "R02"]
    assert data["fallback"] is None
    text = decision.describe()
    assert "APPROVE" in text
    assert "650" in text
    assert "12,300" in text
    assert "R01" in text and "recent repayment status" in text
    declined = decide(0.9, DEFAULT).describe()
    assert "DECLINE" in declined and "APR" not in declined and "Limit" not in declined


def test_fallback_bank_only_decides_on_the_bank_only_pd() -> None:
    decision = fallback_decision(DEFAULT, bank_only_pd=pd_for_score(650),
                                 requested_amount=1000)
    assert decision.outcome is Outcome.APPROVE
    assert decision.limit == 1000
    assert decision.fallback == "bank-only"
    assert decision == Decision(**{**decide(pd_for_score(650), DEFAULT,
                                            requested_amount=1000).__dict__,
                                   "fallback": "bank-only"})
    assert "did not answer" in decision.describe()


def test_fallback_without_a_pd_or_in_refer_mode_refers() -> None:
    no_pd = fallback_decision(DEFAULT)
    assert (no_pd.outcome, no_pd.pd, no_pd.score, no_pd.limit, no_pd.apr, no_pd.fallback) == (
        Outcome.REFER, None, None, 0, None, "refer")
    json.dumps(no_pd.to_dict())
    refer = Policy.from_dict({"fallback": {"mode": "refer", "deadline_ms": 200}})
    assert refer.fallback.deadline_s == pytest.approx(0.2)
    decision = fallback_decision(refer, bank_only_pd=pd_for_score(650),
                                 contributions={"PAY_6": 0.1})
    assert decision.outcome is Outcome.REFER
    assert decision.score == 650
    assert decision.limit == 0 and decision.apr is None
    assert [r.code for r in decision.reasons] == ["R01"]
    assert decision.fallback == "refer"


# -- the policy file --------------------------------------------------------------------


def test_default_policy_file_is_the_built_in_default() -> None:
    loaded = Policy.load(DEFAULT_POLICY_FILE)
    assert loaded == Policy.default() == Policy() == Policy.from_dict({})
    assert loaded.score.base_points == 600 and loaded.score.base_odds == 50
    assert loaded.score.points_to_double_odds == 20
    assert (loaded.apr.min, loaded.apr.max) == (0.15, 0.24)
    assert loaded.reasons.max == 4
    assert loaded.fallback.deadline_ms == 50 and loaded.fallback.mode == "bank-only"
    assert [g.name for g in loaded.grades] == ["A", "B", "C", "D", "E"]


def test_default_policy_file_spells_out_every_key() -> None:
    data = tomllib.loads(DEFAULT_POLICY_FILE.read_text(encoding="utf-8"))
    assert set(data) == {"score", "grades", "decision", "limit", "apr", "reasons", "fallback"}
    assert set(data["score"]) == {"base_points", "base_odds", "points_to_double_odds",
                                  "min", "max"}
    assert all(set(g) == {"name", "min_score", "max_limit"} for g in data["grades"])
    assert set(data["decision"]) == {"approve_min_score", "decline_below_score"}
    assert set(data["limit"]) == {"step"}
    assert set(data["apr"]) == {"min", "max", "pd_at_min", "pd_at_max"}
    assert set(data["reasons"]) == {"max", "codes"}
    assert set(data["fallback"]) == {"deadline_ms", "mode"}


def test_a_partial_policy_keeps_the_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[apr]\nmin = 0.12\n\n[[grades]]\nname = "ALL"\n'
                 "min_score = 300\nmax_limit = 1000\n")
    policy = Policy.load(path)
    assert policy.apr.min == 0.12 and policy.apr.max == 0.24
    assert [g.name for g in policy.grades] == ["ALL"]
    assert policy.score == Policy().score
    assert policy.source == path


GRADES_OK = '[[grades]]\nname = "A"\nmin_score = 600\nmax_limit = 100\n' \
            '[[grades]]\nname = "B"\nmin_score = 300\nmax_limit = 0\n'


@pytest.mark.parametrize(("text", "key", "value"), [
    pytest.param("[score]\nbase_pts = 600\n", "score.base_pts", "600", id="unknown-key"),
    pytest.param("[scores]\nmin = 1\n", "scores", "scores", id="unknown-section"),
    pytest.param('[score]\nbase_odds = "50"\n', "score.base_odds", '"50"', id="string-number"),
    pytest.param("[limit]\nstep = true\n", "limit.step", "true", id="bool-for-number"),
    pytest.param("[score]\npoints_to_double_odds = -20\n", "score.points_to_double_odds",
                 "-20", id="negative-pdo"),
    pytest.param("[score]\nbase_odds = nan\n", "score.base_odds", "nan", id="nan"),
    pytest.param("[score]\nmin = 300.5\n", "score.min", "300.5", id="float-for-int"),
    pytest.param("[score]\nmin = 900\n", "score.min", "900", id="min-not-below-max"),
    pytest.param('[[grades]]\nname = "A"\nmin_score = 600\nmax_limit = 1\n'
                 '[[grades]]\nname = "B"\nmin_score = 650\nmax_limit = 1\n',
                 "grades[1].min_score", "650", id="grades-not-descending"),
    pytest.param('[[grades]]\nname = "A"\nmin_score = 600\nmax_limit = 1\n'
                 '[[grades]]\nname = "A"\nmin_score = 300\nmax_limit = 1\n',
                 "grades[1].name", '"A"', id="duplicate-grade"),
    pytest.param('[[grades]]\nname = "A"\nmin_score = 600\nmax_limit = 1\n'
                 '[[grades]]\nname = "B"\nmin_score = 400\nmax_limit = 1\n',
                 "grades[1].min_score", "400", id="last-grade-misses-score-min"),
    pytest.param('[[grades]]\nname = "A"\nmin_score = 300\nmax_limit = -5\n',
                 "grades[0].max_limit", "-5", id="negative-limit"),
    pytest.param('[[grades]]\nname = "A"\nmin_score = 300\nmax_limit = 1\ncolour = "red"\n',
                 "grades[0].colour", '"red"', id="unknown-grade-key"),
    pytest.param("[decision]\napprove_min_score = 600\ndecline_below_score = 650\n",
                 "decision.decline_below_score", "650", id="decline-above-approve"),
    pytest.param("[apr]\nmin = 0.3\nmax = 0.24\n", "apr.min", "0.3", id="apr-min-above-max"),
    pytest.param("[apr]\nmax = 1.5\n", "apr.max", "1.5", id="apr-above-1"),
    pytest.param("[apr]\nmin = 0\n", "apr.min", "0", id="apr-zero"),
    pytest.param("[apr]\npd_at_min = 0.4\n", "apr.pd_at_min", "0.4", id="apr-pd-order"),
    pytest.param("[limit]\nstep = 0\n", "limit.step", "0", id="zero-step"),
    pytest.param("[reasons]\nmax = 5\n", "reasons.max", "5", id="five-reasons"),
    pytest.param("[reasons]\nmax = 2.0\n", "reasons.max", "2.0", id="float-reasons-max"),
    pytest.param('[reasons.codes]\n"BILL*AMT" = "R02 balances"\n', 'reasons.codes."BILL*AMT"',
                 "BILL*AMT", id="star-inside-key"),
    pytest.param('[reasons.codes]\nPAY_6 = "R01"\n', "reasons.codes.PAY_6", '"R01"',
                 id="code-without-text"),
    pytest.param('[reasons.codes]\nPAY_6 = 1\n', "reasons.codes.PAY_6", "1",
                 id="code-not-a-string"),
    pytest.param('[reasons.codes]\nA = "R01 one"\nB = "R01 two"\n', "reasons.codes.B",
                 "R01 two", id="one-code-two-texts"),
    pytest.param('[fallback]\nmode = "wait"\n', "fallback.mode", '"wait"', id="bad-mode"),
    pytest.param("[fallback]\nmode = 1\n", "fallback.mode", "1", id="mode-not-a-string"),
    pytest.param("[fallback]\ndeadline_ms = 0\n", "fallback.deadline_ms", "0",
                 id="zero-deadline"),
    pytest.param("score = 600\n", "score", "600", id="section-not-a-table"),
])
def test_bad_policy_names_file_key_and_value(tmp_path: Path, text: str, key: str,
                                             value: str) -> None:
    if "[[grades]]" not in text and "grades" in key:
        text = GRADES_OK + text
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    message = str(info.value)
    assert path.name in message
    assert key in message
    assert value in message
    assert "expected" in message


def test_unknown_key_lists_the_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "[fallback]\ndeadline = 50\n")
    with pytest.raises(PolicyError, match=r"fallback\.deadline_ms, fallback\.mode"):
        Policy.load(path)


def test_grade_missing_a_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[[grades]]\nname = "A"\nmin_score = 300\n')
    with pytest.raises(PolicyError, match=r"bank_policy\.toml: grades\[0\]: missing key "
                                          r"'max_limit'"):
        Policy.load(path)


def test_unreadable_policy_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        Policy.load(tmp_path / "missing.toml")
    with pytest.raises(PolicyError, match="not valid TOML"):
        Policy.load(write(tmp_path, "[score\n"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("# caf\xe9\n".encode("latin-1"))
    with pytest.raises(PolicyError, match="UTF-8"):
        Policy.load(bad)


def test_policy_built_in_code_is_checked_too() -> None:
    with pytest.raises(PolicyError, match=r"^<policy>: apr\.min = 0\.3; expected"):
        Policy(apr=AprBand(min=0.3))
    with pytest.raises(PolicyError, match=r"<policy>: grades"):
        Policy(grades=())
    with pytest.raises(PolicyError, match=r"^<policy>: reasons\.max = 0"):
        Policy.from_dict({"reasons": {"max": 0}})


# -- decide_many: the column-wise path --------------------------------------------------

# A policy unlike the default in every part decide_many reads: another scale (reaching
# down to score 0), grades with fractional boundaries and limits too large for the fast
# rounding path, no refer band, a fine limit step, and an APR band over all PDs.
CUSTOM = Policy.from_dict({
    "score": {"base_points": 660, "base_odds": 72, "points_to_double_odds": 40,
              "min": 0, "max": 1000},
    "grades": [
        {"name": "P", "min_score": 812.5, "max_limit": 5e7},
        {"name": "Q", "min_score": 700, "max_limit": 250000.5},
        {"name": "R", "min_score": 600.25, "max_limit": 1234.56},
        {"name": "S", "min_score": 0, "max_limit": 0},
    ],
    "decision": {"approve_min_score": 650, "decline_below_score": 650},
    "limit": {"step": 0.1},
    "apr": {"min": 0.0599, "max": 0.3333, "pd_at_min": 0.0, "pd_at_max": 1.0},
})
MANY_POLICIES = [pytest.param(DEFAULT, id="default"), pytest.param(CUSTOM, id="custom")]
N_MANY = 200_000


def ulps_around(values: Any, reach: int) -> np.ndarray:
    """Every float within ``reach`` ulps of each value."""
    bits = np.asarray(values, dtype=np.float64).reshape(-1, 1).view(np.int64)
    return (bits + np.arange(-reach, reach + 1)).ravel().view(np.float64)


def edge_pds(policy: Policy) -> np.ndarray:
    """PDs on and next to every place a decision can change: each whole and half score
    (where rounding turns), grade boundaries and cut-offs, the APR band's ends and every
    APR rounding tie, the PD clamp, 0 and 1."""
    s, a = policy.score, policy.apr
    scores = [float(k) + h for k in range(s.min - 1, s.max + 2) for h in (0.0, 0.5)]
    scores += [g.min_score + h for g in policy.grades for h in (-0.5, 0.0, 0.5)]
    scores += [c + h for c in (policy.decision.approve_min_score,
                               policy.decision.decline_below_score) for h in (-0.5, 0.0, 0.5)]
    slope = (a.max - a.min) / (a.pd_at_max - a.pd_at_min)
    ties = (np.arange(round(a.min * 1e4) - 1, round(a.max * 1e4) + 1) + 0.5) / 1e4
    pds = np.concatenate([
        ulps_around([pd_for_score(x, policy) for x in scores], 3),
        ulps_around(a.pd_at_min + (ties - a.min) / slope, 2),
        ulps_around([a.pd_at_min, a.pd_at_max, PD_EPS, 1 - PD_EPS, 0.5], 2),
        [0.0, -0.0, 1.0, 5e-324, 1e-300, 1e-12, 1e-9, np.nextafter(1.0, 0.0)],
    ])
    return pds[(pds >= 0.0) & (pds <= 1.0)]


def many_pds(policy: Policy, n: int = N_MANY, seed: int = 7) -> np.ndarray:
    """``n`` PDs covering [0, 1] densely: the edges, then uniform, log-uniform down to
    1e-9 at both ends, shuffled."""
    rng = np.random.default_rng(seed)
    edges = edge_pds(policy)
    rest = n - len(edges)
    third = rest // 3
    pds = np.concatenate([
        edges,
        rng.uniform(0.0, 1.0, rest - 2 * third),
        10.0 ** rng.uniform(-9.0, 0.0, third),
        1.0 - 10.0 ** rng.uniform(-9.0, 0.0, third),
    ])
    assert len(pds) == n
    return rng.permutation(pds)


def many_amounts(policy: Policy, n: int = N_MANY, seed: int = 8) -> np.ndarray:
    """Requested amounts: none (NaN), 0, below one step, exact multiples of the step and
    their neighbours (in ulps, and within the 1e-9 steps limit_for forgives), each
    grade's limit and its neighbours, and random amounts up to twice the largest limit."""
    rng = np.random.default_rng(seed)
    step = policy.limit.step
    top = max(g.max_limit for g in policy.grades)
    k = rng.integers(1, int(top / step) + 2, n).astype(np.float64)
    limits = [float(g.max_limit) for g in policy.grades]
    kinds = [
        np.full(n, np.nan),
        np.zeros(n),
        np.full(n, -0.0),
        rng.uniform(0.0, step, n),
        k * step,
        np.nextafter(k * step, 0.0),
        np.nextafter(k * step, np.inf),
        (k - 5e-10) * step,
        (k - 2e-9) * step,
        rng.choice(ulps_around(limits, 2), n),
        rng.uniform(0.0, 2 * top + step, n),
        np.full(n, 1e15),
    ]
    return np.stack(kinds)[rng.integers(0, len(kinds), n), np.arange(n)]


def reference_columns(pds: np.ndarray, policy: Policy,
                      amounts: np.ndarray | None) -> tuple[list[Decision], dict[str, np.ndarray]]:
    """decide() row by row, and its answers as Decisions' columns."""
    asked = [None] * len(pds) if amounts is None else [
        None if math.isnan(x) else x for x in amounts.tolist()]
    made = [decide(p, policy, requested_amount=r) for p, r in zip(pds.tolist(), asked,
                                                                    strict=True)]
    grade_index = {g.name: i for i, g in enumerate(policy.grades)}
    outcome_index = {o: i for i, o in enumerate(OUTCOMES)}
    columns: dict[str, np.ndarray] = {
        "pd": np.array([d.pd for d in made], dtype=np.float64),
        "score": np.array([d.score for d in made], dtype=np.int32),
        "grade": np.array([grade_index[d.grade] for d in made], dtype=np.int32),  # type: ignore[index]
        "outcome": np.array([outcome_index[d.outcome] for d in made], dtype=np.int8),
        "limit": np.array([d.limit for d in made], dtype=np.float64),
        "apr": np.array([math.nan if d.apr is None else d.apr for d in made],
                        dtype=np.float64),
    }
    return made, columns


def assert_same_columns(got: Decisions, want: dict[str, np.ndarray]) -> None:
    """Equal column by column, floats to the bit (NaN where NaN)."""
    for name, expected in want.items():
        column = getattr(got, name)
        assert column.dtype == expected.dtype, name
        assert column.shape == expected.shape, name
        if column.dtype.kind == "f":
            assert np.array_equal(np.isnan(column), np.isnan(expected)), name
            live = ~np.isnan(expected)
            bad = np.flatnonzero(column[live].view(np.int64) != expected[live].view(np.int64))
            assert bad.size == 0, (name, column[live][bad[:5]], expected[live][bad[:5]])
        else:
            bad = np.flatnonzero(column != expected)
            assert bad.size == 0, (name, bad[:5], column[bad[:5]], expected[bad[:5]])


@pytest.mark.parametrize("policy", MANY_POLICIES)
@pytest.mark.parametrize("with_amounts", [False, True], ids=["no-request", "requested"])
def test_decide_many_equals_decide_row_by_row(policy: Policy, with_amounts: bool) -> None:
    pds = many_pds(policy)
    amounts = many_amounts(policy) if with_amounts else None
    made, want = reference_columns(pds, policy, amounts)
    got = decide_many(pds, policy, requested_amount=amounts)

    assert len(got) == N_MANY
    assert_same_columns(got, want)
    rng = np.random.default_rng(9)
    for i in rng.choice(N_MANY, 3000, replace=False).tolist():
        assert got.row(i, policy) == made[i], i
    # The data reach every grade and outcome, and the limit caps bite.
    assert set(np.unique(got.grade).tolist()) == set(range(len(policy.grades)))
    expected_outcomes = {0, 2} if policy is CUSTOM else {0, 1, 2}
    assert set(np.unique(got.outcome).tolist()) == expected_outcomes
    if with_amounts:
        approved = got.outcome == 0
        assert len(np.unique(got.limit[approved])) > 100


def test_the_data_would_catch_np_round() -> None:
    """np.round(apr, 4) is not Python's round(apr, 4); the test data includes rows where
    they differ, so the equality test above would catch a decide_many that used it."""
    pds = many_pds(DEFAULT)
    got = decide_many(pds, DEFAULT)
    approved = np.flatnonzero(got.outcome == 0)
    a = DEFAULT.apr
    slope = (a.max - a.min) / (a.pd_at_max - a.pd_at_min)
    raw = np.clip(a.min + slope * (pds[approved] - a.pd_at_min), a.min, a.max)
    assert np.count_nonzero(np.round(raw, 4) != got.apr[approved]) > 10
    # ... and the scores include rows whose points sit on a half, where an ulp decides.
    s = DEFAULT.score
    points = np.array([s.points(p) for p in pds.tolist()])
    assert np.count_nonzero(points == np.floor(points) + 0.5) > 100


@pytest.mark.parametrize("policy", MANY_POLICIES)
@pytest.mark.parametrize("ulps", [-2, -1, 1, 2])
def test_decide_many_scores_survive_an_inexact_log(policy: Policy, ulps: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """np.log and math.log may differ by an ulp, which moves a score sitting on a half;
    decide_many must still give decide's scores with a log a few ulps off."""
    pds = edge_pds(policy)
    _, want = reference_columns(pds, policy, None)
    real_log = np.log
    direction = math.inf if ulps > 0 else -math.inf

    def inexact_log(x: Any, *args: Any, **kwargs: Any) -> Any:
        out = real_log(x, *args, **kwargs)
        for _ in range(abs(ulps)):
            out = np.nextafter(out, direction)
        return out

    monkeypatch.setattr(np, "log", inexact_log)
    s = policy.score
    naive = np.floor(np.clip(s.offset + s.factor * np.log((1 - np.clip(pds, PD_EPS, 1 - PD_EPS))
                                                        / np.clip(pds, PD_EPS, 1 - PD_EPS)),
                             s.min, s.max) + 0.5)
    assert np.count_nonzero(naive != want["score"]) > 0  # so the log's error does bite
    assert_same_columns(decide_many(pds, policy), want)


def test_decide_many_columns_types_and_row() -> None:
    pds = np.array([0.0, pd_for_score(650), pd_for_score(505), 0.9, 1.0])
    got = decide_many(pds, DEFAULT, requested_amount=np.array([1.0, 12345.0, 5.0, 7.0, np.nan]))
    assert (got.pd.dtype, got.score.dtype, got.grade.dtype, got.outcome.dtype, got.limit.dtype,
            got.apr.dtype) == (np.float64, np.int32, np.int32, np.int8, np.float64, np.float64)
    assert got.score.tolist() == [900, 650, 505, 424, 300]
    assert [DEFAULT.grades[g].name for g in got.grade] == ["A", "A", "E", "E", "E"]
    assert [OUTCOMES[o] for o in got.outcome] == [Outcome.APPROVE, Outcome.APPROVE,
                                                  Outcome.REFER, Outcome.DECLINE,
                                                  Outcome.DECLINE]
    assert got.limit.tolist() == [0.0, 12300.0, 0.0, 0.0, 0.0]
    assert np.isnan(got.apr[2:]).all() and got.apr[1] == decide(pds[1], DEFAULT).apr
    assert got.row(1, DEFAULT) == decide(pds[1], DEFAULT, requested_amount=12345.0)
    assert got.row(2, DEFAULT).apr is None and got.row(2, DEFAULT).limit == 0.0
    with pytest.raises(ValueError, match="read-only"):
        got.score[0] = 1
    assert pds[0] == 0.0  # the caller's array is copied, not frozen
    pds[0] = 0.5
    assert len(decide_many(np.array([]), DEFAULT)) == 0
    # Lists and integer arrays are numbers too; a float32 PD is decided as its float64 value.
    assert decide_many([0, 1], DEFAULT).score.tolist() == [900, 300]
    half = np.float32(0.1)
    assert decide_many(np.array([half]), DEFAULT).row(0, DEFAULT) == decide(float(half),
                                                                            DEFAULT)


@pytest.mark.parametrize(("pds", "row", "value"), [
    ([0.1, 0.2, 0.3, math.nan, -1.0], 3, "nan"),
    ([0.1, -0.01], 1, "-0.01"),
    ([1.0, 1.5, math.nan], 1, "1.5"),
    ([math.inf], 0, "inf"),
    ([2], 0, "2"),
])
def test_decide_many_names_the_first_bad_pd(pds: list[float], row: int, value: str) -> None:
    with pytest.raises(ValueError, match=rf"^pd\[{row}\] = {re.escape(value)}; expected a "
                                         r"probability of default in \[0, 1\]$"):
        decide_many(np.array(pds), DEFAULT)


def test_decide_many_names_a_bad_row_deep_in_a_large_array() -> None:
    pds = np.full(150_001, 0.05)
    pds[150_000] = 1.0000001
    with pytest.raises(ValueError, match=r"^pd\[150000\] = 1\.0000001;"):
        decide_many(pds, DEFAULT)


@pytest.mark.parametrize(("amounts", "row", "value"), [
    ([1.0, -1.0, math.nan], 1, "-1.0"),
    ([math.nan, 5.0, math.inf], 2, "inf"),
    ([-math.inf, -1.0, 0.0], 0, "-inf"),
])
def test_decide_many_names_the_first_bad_amount(amounts: list[float], row: int,
                                                value: str) -> None:
    with pytest.raises(ValueError, match=rf"^requested_amount\[{row}\] = {re.escape(value)}; "
                                         "expected a finite amount >= 0, or NaN"):
        decide_many(np.array([0.01, 0.02, 0.03]), DEFAULT, requested_amount=np.array(amounts))


@pytest.mark.parametrize(("pds", "amounts", "match"), [
    (np.array([True, False]), None, r"^pd: an array of bool"),
    (np.array(["0.5"]), None, r"^pd: an array of <U3"),
    (np.array([[0.1, 0.2]]), None, r"^pd: an array of shape \(1, 2\)"),
    (np.float64(0.1), None, r"^pd: an array of shape \(\)"),
    (np.array([0.1, 0.2]), np.array([1.0]), r"^requested_amount: an array of shape \(1,\); "
                                            r"expected \(2,\)"),
    (np.array([0.1]), np.array([True]), r"^requested_amount: an array of bool"),
])
def test_decide_many_refuses_what_is_not_a_column_of_numbers(pds: Any, amounts: Any,
                                                             match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decide_many(pds, DEFAULT, requested_amount=amounts)


@pytest.mark.parametrize("ndigits", [4, 9])
def test_round_column_is_pythons_round(ndigits: int) -> None:
    rng = np.random.default_rng(11)
    tenth = 10.0 ** -ndigits
    ties = (np.arange(-2000, 200_000) + 0.5) * tenth
    values = np.concatenate([
        ulps_around(ties, 2),
        ulps_around(rng.integers(0, 10**6, 2000) * tenth, 1),
        rng.uniform(-1.0, 1.0, 20_000),
        10.0 ** rng.uniform(-12.0, 18.0, 20_000),
        -(10.0 ** rng.uniform(-12.0, 18.0, 2000)),
        [0.0, -0.0, 1.0, 2.0**52 + 1, 2.0**53, 1e300, 5e-324, math.inf, -math.inf, math.nan],
    ])
    got = _round_column(values, ndigits)
    want = np.array([round(v, ndigits) for v in values.tolist()])
    assert np.array_equal(np.isnan(got), np.isnan(want))
    live = ~np.isnan(want)
    bad = np.flatnonzero(got[live].view(np.int64) != want[live].view(np.int64))
    assert bad.size == 0, (values[live][bad[:5]], got[live][bad[:5]], want[live][bad[:5]])
    with np.errstate(over="ignore"):  # np.round(1e300, 9) overflows on the way
        assert np.count_nonzero(np.round(values[live], ndigits) != want[live]) > 100


def test_decide_many_runs_on_a_hundred_thousand_rows() -> None:
    rng = np.random.default_rng(12)
    pds = rng.uniform(0.0, 1.0, 100_000)
    amounts = np.where(rng.uniform(size=100_000) < 0.5, np.nan,
                       rng.uniform(0.0, 60_000.0, 100_000))
    got = decide_many(pds, DEFAULT, requested_amount=amounts)
    assert len(got) == 100_000
    assert set(np.unique(got.outcome).tolist()) == {0, 1, 2}
    assert ((got.limit == 0) | (got.outcome == 0)).all()
    assert (np.isnan(got.apr) == (got.outcome != 0)).all()
