import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedscore.data.preprocess import PreprocessConfig, Preprocessor
from fedscore.data.schema import Feature, Schema
from fedscore.data.table import PartyTable

SCHEMA = Schema(
    "user_id",
    (
        Feature("STATUS", "categorical"),
        Feature("INCOME", "numeric"),
        Feature("AGE", "numeric", allow_missing=True),
        Feature("BILL1", "numeric"),
        Feature("BILL2", "numeric"),
        Feature("BILL3", "numeric"),
        Feature("PAID1", "numeric"),
        Feature("PAID2", "numeric"),
        Feature("PAID3", "numeric"),
    ),
    "default",
)


def make_table(n: int, seed: int) -> PartyTable:
    rng = np.random.default_rng(seed)
    feats = pd.DataFrame(
        {
            "STATUS": rng.choice(np.array(["-1", "0", "1", "2"], dtype=object), n),
            "INCOME": np.exp(rng.normal(10, 1, n)),  # heavy right tail: gets a log
            "AGE": np.where(rng.random(n) < 0.1, np.nan, rng.integers(20, 70, n)).astype(float),
            **{f"BILL{k}": rng.normal(5000, 3000, n) for k in (1, 2, 3)},
            **{f"PAID{k}": rng.exponential(1000, n) for k in (1, 2, 3)},
        }
    )
    feats["STATUS"] = feats["STATUS"].astype(object)
    ids = np.array([f"U{seed}-{i}" for i in range(n)], dtype=object)
    labels = rng.integers(0, 2, n).astype(np.int8)
    return PartyTable(SCHEMA, Path("memory.csv"), ids, feats, labels)


BINNED = PreprocessConfig(n_bins=16)


def test_layout_and_shapes() -> None:
    pre = Preprocessor.fit(make_table(500, 0), BINNED)
    enc = pre.transform(make_table(200, 1))
    assert enc.numeric.dtype == np.float32 and enc.categorical.dtype == np.int64
    assert enc.numeric.shape == (200, pre.n_numeric)
    assert enc.categorical.shape == (200, len(pre.cat_cardinalities))
    # 8 numeric + 2 groups x 6 stats + 2 ratios + 1 missing indicator
    assert pre.n_numeric == 8 + 12 + 2 + 1
    assert pre.numeric_names[-1] == "AGE:missing"
    assert "BILL*:mean" in pre.numeric_names and "PAID*/BILL*" in pre.numeric_names
    assert pre.cat_cardinalities[0] == 5  # 4 statuses + unknown
    assert (enc.categorical < np.array(pre.cat_cardinalities)).all()
    assert np.isfinite(enc.numeric).all()
    assert np.abs(enc.numeric).max() <= 5.0


def test_fitted_on_train_rows_only() -> None:
    train = make_table(500, 0)
    pre = Preprocessor.fit(train)
    before = pre.fingerprint()
    pre.transform(make_table(300, 7))  # other rows, other distribution draws
    assert pre.fingerprint() == before
    # standardised on the training rows: mean ~0, std ~1 there, not elsewhere
    enc = pre.transform(train)
    income = list(pre.numeric_names).index("INCOME")
    assert abs(float(enc.numeric[:, income].mean())) < 0.05
    assert abs(float(enc.numeric[:, income].std()) - 1.0) < 0.05


def test_log_chosen_by_skew() -> None:
    pre = Preprocessor.fit(make_table(500, 0))
    spec = {n["name"]: n for n in pre.to_dict()["numeric"]}
    assert spec["INCOME"]["log"] is True
    assert spec["BILL1"]["log"] is False  # symmetric: the log would skew it


def test_unknown_and_missing_categories_map_to_zero() -> None:
    pre = Preprocessor.fit(make_table(500, 0))
    t = make_table(4, 3)
    t.features["STATUS"] = np.array(["-1", "never-seen", None, ""], dtype=object)
    enc = pre.transform(t)
    assert enc.categorical[0, 0] > 0
    assert list(enc.categorical[1:, 0]) == [0, 0, 0]


def test_missing_numeric_gets_indicator_and_bin_zero() -> None:
    pre = Preprocessor.fit(make_table(500, 0), BINNED)
    t = make_table(10, 4)
    t.features.loc[:, "AGE"] = [np.nan] * 5 + [30.0] * 5
    enc = pre.transform(t)
    names = list(pre.numeric_names)
    assert list(enc.numeric[:, names.index("AGE:missing")]) == [1.0] * 5 + [0.0] * 5
    assert (enc.numeric[:5, names.index("AGE")] == 0).all()
    age_bin = list(pre.categorical_names).index("AGE:bin")
    assert (enc.categorical[:5, age_bin] == 0).all()
    assert (enc.categorical[5:, age_bin] > 0).all()


def test_fingerprint_stable_and_sensitive() -> None:
    a = Preprocessor.fit(make_table(500, 0))
    b = Preprocessor.fit(make_table(500, 0))
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64
    assert Preprocessor.fit(make_table(500, 1)).fingerprint() != a.fingerprint()
    assert (
        Preprocessor.fit(make_table(500, 0), PreprocessConfig(n_bins=8)).fingerprint()
        != a.fingerprint()
    )


def test_round_trip_through_json() -> None:
    pre = Preprocessor.fit(make_table(500, 0), PreprocessConfig(n_bins=16, pair_lags=(1,)))
    back = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert back.fingerprint() == pre.fingerprint()
    t = make_table(100, 5)
    x, y = pre.transform(t), back.transform(t)
    np.testing.assert_array_equal(x.numeric, y.numeric)
    np.testing.assert_array_equal(x.categorical, y.categorical)


def test_bad_state_and_missing_column_are_named() -> None:
    pre = Preprocessor.fit(make_table(50, 0))
    d = pre.to_dict()
    del d["vocabularies"]
    with pytest.raises(ValueError, match="missing field 'vocabularies'"):
        Preprocessor.from_dict(d)
    t = make_table(10, 1)
    t = PartyTable(t.schema, t.source, t.ids, t.features, t.labels)
    object.__setattr__(t, "features", t.features.drop(columns=["BILL2"]))
    with pytest.raises(ValueError, match="BILL2"):
        pre.transform(t)


# ---------------------------------------------------------------- federated statistics

FED_SCHEMA = Schema(
    "user_id",
    tuple(
        Feature("STATUS", "categorical", values=("-1", "0", "1", "2")) if f.name == "STATUS"
        else f
        for f in SCHEMA.features
    ),
    "default",
    source=Path("bank.schema.toml"),
)


def fed_table(n: int, seed: int, shift: float = 0.0) -> PartyTable:
    t = make_table(n, seed)
    t.features["INCOME"] *= np.exp(shift)  # banks with different customers
    t.features["BILL1"] += 2000 * shift
    return PartyTable(FED_SCHEMA, Path(f"bank{seed}.csv"), t.ids, t.features, t.labels)


def concat(tables: list[PartyTable]) -> PartyTable:
    return PartyTable(
        FED_SCHEMA, Path("pooled.csv"), np.concatenate([t.ids for t in tables]),
        pd.concat([t.features for t in tables], ignore_index=True),
        np.concatenate([np.asarray(t.labels) for t in tables]),
    )


def test_summed_moments_fit_what_the_pooled_rows_fit() -> None:
    banks = [fed_table(700, 0, 0.0), fed_table(300, 1, 1.5), fed_table(200, 2, -1.0)]
    local = [Preprocessor.fit(t).to_dict()["numeric"] for t in banks]
    pooled = Preprocessor.fit(concat(banks)).to_dict()["numeric"]
    moments = Preprocessor.moments(banks[0])
    for t in banks[1:]:
        moments = moments + Preprocessor.moments(t)
    fed = [Preprocessor.fit(t, moments=moments) for t in banks]
    # every bank ends with the same transforms, those of the pooled fit
    assert len({p.fingerprint() for p in fed}) == 1
    for got, want in zip(fed[0].to_dict()["numeric"], pooled, strict=True):
        assert got["log"] == want["log"], got["name"]
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-9, abs=1e-12), got["name"]
        assert got["std"] == pytest.approx(want["std"], rel=1e-9), got["name"]
    # and they are not what each bank fits alone
    income = [n["name"] for n in pooled].index("INCOME")
    assert len({round(spec[income]["mean"], 6) for spec in local}) == 3


def test_moments_match_numpy_on_one_party() -> None:
    t = fed_table(500, 0)
    spec = {n["name"]: n for n in Preprocessor.fit(t).to_dict()["numeric"]}
    bill = t.features["BILL1"].to_numpy()
    assert spec["BILL1"]["mean"] == pytest.approx(bill.mean(), rel=1e-12)
    assert spec["BILL1"]["std"] == pytest.approx(bill.std(), rel=1e-9)
    age = t.features["AGE"].to_numpy()
    assert spec["AGE"]["mean"] == pytest.approx(np.nanmean(age), rel=1e-12)  # finite only


def test_federated_fit_refusals_are_named() -> None:
    with pytest.raises(ValueError, match=r"features\.STATUS.*declare"):
        Preprocessor.moments(make_table(50, 0))  # codes learnt from each bank's rows
    with pytest.raises(ValueError, match="n_bins = 16"):
        Preprocessor.moments(fed_table(50, 0), BINNED)
    other = Preprocessor.moments(fed_table(50, 0), PreprocessConfig(derive_groups=False))
    with pytest.raises(ValueError, match="another column layout"):
        Preprocessor.fit(fed_table(50, 1), moments=other)
    with pytest.raises(ValueError, match="two different column layouts"):
        _ = other + Preprocessor.moments(fed_table(50, 0))
