"""The synthetic population: valid files, reproducible, chunk-size invariant, and the
documented data-generating process visible in the data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedscore.data.scenarios import ScenarioManifest, load_manifest
from fedscore.data.synth import BANK_SCHEMA, BLOCK, PLATFORM_SCHEMA, synth_population
from fedscore.data.table import PartyTable, load_table

PEOPLE = 20_000


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> ScenarioManifest:
    return synth_population(tmp_path_factory.mktemp("synth"), people=PEOPLE, banks=3, seed=0)


@pytest.fixture(scope="module")
def loaded(small: ScenarioManifest) -> dict[str, PartyTable]:
    out = {"platform": load_table(small.platform_features, small.platform_schema,
                                  require_label=False)}
    for bank in small.banks:
        for part, path in (("train", small.bank_train(bank)), ("test", small.bank_test(bank))):
            out[f"{bank}/{part}"] = load_table(path, small.bank_schema(bank),
                                               require_label=True)
    return out


def bank_frame(loaded: dict[str, PartyTable]) -> pd.DataFrame:
    frames = []
    for name, table in loaded.items():
        if name == "platform":
            continue
        frame = table.features.copy()
        frame["id"] = table.ids
        frame["y"] = table.labels
        frame["bank"] = name.split("/")[0]
        frame["part"] = name.split("/")[1]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_counts_and_manifest(small: ScenarioManifest,
                                    loaded: dict[str, PartyTable]) -> None:
    assert set(files(small.root)) == {
        "scenario.json", "platform/features.parquet", "platform/schema.toml",
        *(f"bank-{k}/{f}" for k in (1, 2, 3)
          for f in ("train.parquet", "test.parquet", "schema.toml")),
    }
    assert load_manifest(small.root) == small
    assert loaded["platform"].schema == PLATFORM_SCHEMA
    assert loaded["bank-1/train"].schema == BANK_SCHEMA
    assert small.platform_rows == len(loaded["platform"])
    frame = bank_frame(loaded)
    assert len(frame) == PEOPLE and frame["id"].is_unique  # everyone in exactly one bank
    assert small.positives == int(frame["y"].sum())
    for bank, stats in small.banks.items():
        assert stats.train_rows == len(loaded[f"{bank}/train"])
        assert stats.test_rows == len(loaded[f"{bank}/test"])
    assert set(loaded["platform"].ids) <= set(frame["id"])
    assert all(re.match(r"^U\d{13}$", i) for i in loaded["platform"].ids)


def test_overlap_share_and_base_rate(small: ScenarioManifest,
                                     loaded: dict[str, PartyTable]) -> None:
    assert abs(small.platform_rows / PEOPLE - 0.85) < 0.01
    for stats in small.banks.values():
        assert abs(stats.on_platform / stats.customers - 0.85) < 0.03
    assert abs(small.default_rate - 0.20) < 0.015
    income = loaded["platform"].features["income_estimate"]
    assert 0.06 < income.isna().mean() < 0.10  # the allow_missing column has gaps


def test_banks_are_not_identical(small: ScenarioManifest) -> None:
    sizes = [b.customers for b in small.banks.values()]
    rates = [b.default_rate for b in small.banks.values()]
    assert sizes[0] > sizes[1] > sizes[2]
    assert rates[0] < rates[1] < rates[2]
    assert rates[2] - rates[0] > 0.1


def test_test_split_per_bank(small: ScenarioManifest) -> None:
    for stats in small.banks.values():
        assert abs(stats.test_rows / stats.customers - 0.2) < 0.005
        assert abs(stats.test_positives / stats.test_rows
                   - stats.train_positives / stats.train_rows) < 0.01


def test_features_move_with_default_as_documented(loaded: dict[str, PartyTable]) -> None:
    bank = bank_frame(loaded)
    bank["utilization"] = bank["balance"] / bank["credit_limit"]
    bank["delinquency"] = bank["delinquency_code"].astype(int)
    corr = bank[["utilization", "delinquency", "credit_limit", "y"]].corr()["y"]
    assert corr["utilization"] > 0.15 and corr["delinquency"] > 0.2
    assert corr["credit_limit"] < -0.1
    platform = loaded["platform"].features.copy()
    platform["id"] = loaded["platform"].ids
    joined = platform.merge(bank[["id", "y"]], on="id")
    joined["repay"] = joined["repay_status_1"].astype(int)
    corr = joined[["repay", "app_tenure_months", "monthly_spend", "y"]].corr()["y"]
    assert corr["repay"] > 0.2
    assert corr["app_tenure_months"] < -0.1 and corr["monthly_spend"] < -0.1


def test_deterministic_for_a_seed(small: ScenarioManifest, tmp_path: Path) -> None:
    again = synth_population(tmp_path / "again", people=PEOPLE, banks=3, seed=0)
    assert files(again.root) == files(small.root)
    other = synth_population(tmp_path / "other", people=PEOPLE, banks=3, seed=1)
    assert files(other.root)["platform/features.parquet"] != files(small.root)[
        "platform/features.parquet"]
    assert not set(load_table(other.platform_features, other.platform_schema).ids) & set(
        load_table(small.platform_features, small.platform_schema).ids)


def test_content_does_not_depend_on_chunk_rows(tmp_path: Path) -> None:
    people = 2 * BLOCK + 1000  # three blocks
    one = synth_population(tmp_path / "one", people=people, banks=2, seed=3, chunk_rows=1)
    big = synth_population(tmp_path / "big", people=people, banks=2, seed=3)
    assert one.to_dict() == big.to_dict()
    pairs = [(one.platform_features, big.platform_features, PLATFORM_SCHEMA)]
    pairs += [(one.bank_train(b), big.bank_train(b), BANK_SCHEMA) for b in ("bank-1", "bank-2")]
    pairs += [(one.bank_test(b), big.bank_test(b), BANK_SCHEMA) for b in ("bank-1", "bank-2")]
    for a, b, schema in pairs:
        ta, tb = load_table(a, schema), load_table(b, schema)
        assert list(ta.ids) == list(tb.ids)
        pd.testing.assert_frame_equal(ta.features, tb.features)
        assert (ta.labels is None) == (tb.labels is None)
        if ta.labels is not None and tb.labels is not None:
            assert np.array_equal(ta.labels, tb.labels)


def test_progress_and_bad_arguments(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    synth_population(tmp_path / "p", people=BLOCK + 10, banks=1, chunk_rows=BLOCK,
                     progress=lambda done, total: seen.append((done, total)))
    assert seen == [(BLOCK, BLOCK + 10), (BLOCK + 10, BLOCK + 10)]
    with pytest.raises(ValueError, match="banks = 0"):
        synth_population(tmp_path / "x", people=1000, banks=0)
    with pytest.raises(ValueError, match=r"platform_share = 1\.5"):
        synth_population(tmp_path / "x", people=1000, banks=1, platform_share=1.5)
    with pytest.raises(ValueError, match="too few"):
        synth_population(tmp_path / "x", people=150, banks=2)
