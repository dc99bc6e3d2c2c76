"""The quality harness's own arithmetic: seeds, the paired bootstrap, the tuned GBDT."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedscore.research.baselines import (
    GBDT_HAND_PICKED,
    _ResampledAuc,
    gbdt_tuned,
    paired_bootstrap,
    parse_seeds,
)
from tests.conftest import Federation


def test_parse_seeds() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3,1, 2-3,7") == [3, 1, 2, 7]
    for bad, named in (("a", "'a'"), ("1-x", "'1-x'"), ("4-2", "'4-2'"), ("-1", "'-1'")):
        with pytest.raises(ValueError, match=named):
            parse_seeds(bad)


def test_resampled_auc_is_the_auc_of_the_resampled_rows() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.random(500) + 0.3 * y, 2)  # rounded: many ties
    resampled = _ResampledAuc(y, p)
    assert resampled(np.ones(500)) == pytest.approx(roc_auc_score(y, p))
    for _ in range(5):
        idx = rng.integers(0, 500, 500)
        counts = np.bincount(idx, minlength=500)
        assert resampled(counts) == pytest.approx(roc_auc_score(y[idx], p[idx]))


def test_paired_bootstrap_interval() -> None:
    rng = np.random.default_rng(1)
    ys = [rng.integers(0, 2, 2000) for _ in range(3)]
    good = [y + rng.normal(0, 0.8, y.size) for y in ys]
    noisy = [g + rng.normal(0, 1.5, g.size) for g in good]
    better = paired_bootstrap(ys, good, noisy, resamples=300)
    assert better["ci95_low"] > 0 and better["share_positive"] == 1.0
    assert better["ci95_low"] < better["diff"] < better["ci95_high"]
    expected = np.mean([roc_auc_score(y, g) - roc_auc_score(y, n)
                        for y, g, n in zip(ys, good, noisy, strict=True)])
    assert better["diff"] == pytest.approx(expected)
    # the same scores: every resample's difference is exactly 0
    same = paired_bootstrap(ys, good, good, resamples=50)
    assert same["ci95_low"] == same["ci95_high"] == same["diff"] == 0.0
    # reversed: the interval is mirrored
    worse = paired_bootstrap(ys, noisy, good, resamples=300)
    assert worse["ci95_high"] < 0
    with pytest.raises(ValueError, match="one label vector"):
        paired_bootstrap(ys, good, noisy[:2])


def test_gbdt_tuned_searches_on_training_rows_only(federation: Federation) -> None:
    from fedscore.research.baselines import load_scenario

    sc = load_scenario(federation.data.root)
    out = gbdt_tuned(sc, seed=0, candidates=3, folds=2)
    assert out["candidates"] == 3
    assert set(GBDT_HAND_PICKED) <= set(out["params"]) and out["params"]["max_iter"] >= 1
    assert 0.5 < out["cv_auc"] <= 1.0 and 0.5 < out["auc"] <= 1.0
    assert [p.shape[0] for p in out["test_pd"]] == [len(te.ids) for _, te in sc.banks]
    # the search never saw a test row: the test sets' labels may change freely
    for _, te in sc.banks:
        assert te.labels is not None
        te.labels[:] = 1 - te.labels
    again = gbdt_tuned(sc, seed=0, candidates=3, folds=2)
    assert again["params"] == out["params"] and again["cv_auc"] == out["cv_auc"]
    assert again["auc"] == pytest.approx(1 - out["auc"])
