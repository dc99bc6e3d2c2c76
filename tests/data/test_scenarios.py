"""The default-credit scenario: reproducible, non-identical banks, honest splits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedscore.cli.data import app
from fedscore.data.scenarios import (
    BANK_SCHEMA,
    PLATFORM_SCHEMA,
    ScenarioError,
    ScenarioManifest,
    load_default_credit,
    load_manifest,
    prepare_default_credit,
    prepare_scenario,
)
from fedscore.data.schema import Schema
from fedscore.data.table import PartyTable, load_table

BANKS = ("bank-1", "bank-2", "bank-3")


@pytest.fixture(scope="module")
def raw() -> PartyTable:
    return load_default_credit()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> ScenarioManifest:
    return prepare_default_credit(tmp_path_factory.mktemp("seed0"), seed=0)


@pytest.fixture(scope="module")
def tables(built: ScenarioManifest) -> dict[str, PartyTable]:
    out = {"platform": load_table(built.platform_features, built.platform_schema,
                                  require_label=False)}
    for bank in BANKS:
        out[f"{bank}/train"] = load_table(built.bank_train(bank), built.bank_schema(bank),
                                          require_label=True)
        out[f"{bank}/test"] = load_table(built.bank_test(bank), built.bank_schema(bank),
                                         require_label=True)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def customers(tables: dict[str, PartyTable], bank: str) -> tuple[np.ndarray, np.ndarray]:
    train, test = tables[f"{bank}/train"], tables[f"{bank}/test"]
    assert train.labels is not None and test.labels is not None
    return (np.concatenate([train.ids, test.ids]),
            np.concatenate([train.labels, test.labels]))


def test_bundled_table(raw: PartyTable) -> None:
    assert len(raw) == 30_000
    assert raw.labels is not None and int(raw.labels.sum()) == 6_636
    assert len(raw.schema.features) == 23


def test_layout_and_schemas(built: ScenarioManifest) -> None:
    names = set(files(built.root))
    expected = {"scenario.json", "platform/features.csv", "platform/schema.toml"}
    for bank in BANKS:
        expected |= {f"{bank}/train.csv", f"{bank}/test.csv", f"{bank}/schema.toml"}
    assert names == expected
    assert Schema.load(built.platform_schema) == PLATFORM_SCHEMA
    assert PLATFORM_SCHEMA.label_column is None
    assert PLATFORM_SCHEMA.feature_names == ("LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE",
                                             "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5")
    assert PLATFORM_SCHEMA.numeric == ("LIMIT_BAL", "AGE")
    for bank in BANKS:
        assert Schema.load(built.bank_schema(bank)) == BANK_SCHEMA
    assert BANK_SCHEMA.label_column == "default"
    assert BANK_SCHEMA.categorical == ("PAY_6",)
    assert len(BANK_SCHEMA.numeric) == 12


def test_same_seed_same_bytes_other_seed_differs(
    built: ScenarioManifest, tmp_path: Path
) -> None:
    again = prepare_default_credit(tmp_path / "again", seed=0)
    assert again.to_dict() == built.to_dict()
    assert files(again.root) == files(built.root)
    other = files(prepare_default_credit(tmp_path / "other", seed=1).root)
    for name, data in files(built.root).items():
        if not name.endswith("schema.toml"):
            assert other[name] != data, name


def test_manifest_round_trip_and_counts(
    built: ScenarioManifest, tables: dict[str, PartyTable]
) -> None:
    loaded = load_manifest(built.root)
    assert loaded == built
    assert built.people == 30_000 and built.positives == 6_636
    assert built.platform_rows == len(tables["platform"])
    platform = set(tables["platform"].ids)
    for bank in BANKS:
        stats = built.banks[bank]
        assert stats.train_rows == len(tables[f"{bank}/train"])
        assert stats.test_rows == len(tables[f"{bank}/test"])
        ids, labels = customers(tables, bank)
        assert stats.positives == int(labels.sum())
        assert stats.on_platform == len(platform.intersection(ids))


def test_every_person_in_exactly_one_bank(tables: dict[str, PartyTable]) -> None:
    all_ids = np.concatenate([customers(tables, bank)[0] for bank in BANKS])
    assert len(all_ids) == 30_000
    assert len(set(all_ids)) == 30_000


def test_bank_shares_and_default_rates(tables: dict[str, PartyTable]) -> None:
    shares = [len(customers(tables, bank)[0]) / 30_000 for bank in BANKS]
    for share, target in zip(shares, (0.5, 0.3, 0.2), strict=True):
        assert abs(share - target) <= 0.02
    rates = [float(customers(tables, bank)[1].mean()) for bank in BANKS]
    assert max(rates) - min(rates) >= 0.05
    assert rates[0] < rates[1] < rates[2]  # bank-1 is the safest, bank-3 the riskiest


def test_banks_differ_in_feature_mix(tables: dict[str, PartyTable], raw: PartyTable) -> None:
    limit = dict(zip([f"U{int(i):08d}" for i in raw.ids],
                     raw.features["LIMIT_BAL"].to_numpy(), strict=True))
    medians = [float(np.median([limit[i] for i in customers(tables, bank)[0]]))
               for bank in BANKS]
    assert medians[0] > medians[2] * 1.5


def test_platform_covers_85_percent(built: ScenarioManifest,
                                    tables: dict[str, PartyTable]) -> None:
    assert abs(len(tables["platform"]) / 30_000 - 0.85) <= 0.01
    everyone = set(np.concatenate([customers(tables, bank)[0] for bank in BANKS]))
    assert set(tables["platform"].ids) <= everyone
    # every bank has customers on and off the platform
    for bank in BANKS:
        stats = built.banks[bank]
        assert 0.8 < stats.on_platform / stats.customers < 0.9


def test_ids_are_strings_from_uci_id_and_rows_shuffled(
    tables: dict[str, PartyTable], raw: PartyTable
) -> None:
    pattern = re.compile(r"^U\d{8}$")
    for table in tables.values():
        assert all(isinstance(i, str) and pattern.match(i) for i in table.ids)
        numbers = np.array([int(i[1:]) for i in table.ids])
        assert not np.all(np.diff(numbers) > 0)  # not in id order
    everyone = np.concatenate([customers(tables, bank)[0] for bank in BANKS])
    assert set(everyone) == {f"U{int(i):08d}" for i in raw.ids}
    assert "U00000001" in set(everyone)


def test_values_and_labels_match_the_raw_table(
    tables: dict[str, PartyTable], raw: PartyTable
) -> None:
    assert raw.labels is not None
    row_of = {f"U{int(i):08d}": k for k, i in enumerate(raw.ids)}
    for name, table in tables.items():
        rows = np.array([row_of[i] for i in table.ids])
        for column in table.schema.feature_names:
            assert table.features[column].tolist() == raw.features[column].iloc[rows].tolist()
        if table.labels is not None:
            assert np.array_equal(table.labels, raw.labels[rows]), name


def test_test_split_is_20_percent_and_stratified(tables: dict[str, PartyTable]) -> None:
    for bank in BANKS:
        train, test = tables[f"{bank}/train"], tables[f"{bank}/test"]
        assert train.labels is not None and test.labels is not None
        assert abs(len(test) / (len(train) + len(test)) - 0.2) < 0.002
        assert abs(test.labels.mean() - train.labels.mean()) < 0.003
        assert not set(train.ids) & set(test.ids)


def test_unknown_scenario(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'; known scenarios: "
                                            "default-credit"):
        prepare_scenario("nope", tmp_path)
    with pytest.raises(ScenarioError, match=r"scenario\.json: not found"):
        load_manifest(tmp_path)


def test_cli_prepare(tmp_path: Path, built: ScenarioManifest) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "default-credit", "--out", str(tmp_path / "dc")])
    assert result.exit_code == 0, result.output
    assert "bank-3" in result.output
    assert files(tmp_path / "dc") == files(built.root)
    result = runner.invoke(app, ["prepare", "credit", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "unknown scenario 'credit'; known scenarios: default-credit" in result.output
    assert "Traceback" not in result.output
