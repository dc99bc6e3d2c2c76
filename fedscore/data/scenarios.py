"""Reference scenarios: every party's files, built reproducibly from one seed.

``default-credit`` splits the bundled UCI "default of credit card clients" table
(30,000 people; see ``bundled/ATTRIBUTION.md``) between an internet lending platform
and three partner banks:

* the platform holds LIMIT_BAL, SEX, EDUCATION, MARRIAGE, AGE and the repayment
  statuses PAY_0, PAY_2..PAY_5 of a seeded random 85% of the people;
* every person is the customer of exactly one bank, which holds PAY_6,
  BILL_AMT1..6, PAY_AMT1..6 and the default label;
* the banks are not identically distributed (see ``_BANK_PREFERENCE``): a person's
  bank is drawn from a multinomial logit on standardized log LIMIT_BAL, AGE and the
  label, with intercepts calibrated so the expected shares are 50/30/20%. bank-1
  leans to older, high-limit, non-defaulting customers; bank-3 to young, low-limit,
  defaulting ones; the spread of default rates is about 9 points;
* 20% of each bank's customers, stratified by label, are its held-out test set;
* the join key is ``user_id = f"U{ID:08d}"`` and every file's rows are shuffled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedscore.data.schema import Feature, Schema
from fedscore.data.table import PartyTable, load_table, write_table
from fedscore.errors import FedscoreError

BUNDLED = Path(__file__).parent / "bundled"
DEFAULT_CREDIT_CSV = BUNDLED / "default_credit.csv.gz"

ID_COLUMN = "user_id"
LABEL_COLUMN = "default"
MANIFEST = "scenario.json"
TEST_SHARE = 0.2

PLATFORM_NUMERIC = ("LIMIT_BAL", "AGE")
PLATFORM_FEATURES: tuple[Feature, ...] = (
    Feature("LIMIT_BAL", "numeric"),
    Feature("SEX", "categorical"),
    Feature("EDUCATION", "categorical"),
    Feature("MARRIAGE", "categorical"),
    Feature("AGE", "numeric"),
    *(Feature(f"PAY_{k}", "categorical") for k in (0, 2, 3, 4, 5)),
)
BANK_FEATURES: tuple[Feature, ...] = (
    # Declared so that every bank codes PAY_6 alike (the UCI codebook's range).
    Feature("PAY_6", "categorical", values=tuple(str(v) for v in range(-2, 10))),
    *(Feature(f"BILL_AMT{k}", "numeric") for k in range(1, 7)),
    *(Feature(f"PAY_AMT{k}", "numeric") for k in range(1, 7)),
)
PLATFORM_SCHEMA = Schema(ID_COLUMN, PLATFORM_FEATURES)
BANK_SCHEMA = Schema(ID_COLUMN, BANK_FEATURES, LABEL_COLUMN)
# The raw UCI table as bundled.
RAW_SCHEMA = Schema("ID", PLATFORM_FEATURES + BANK_FEATURES, "default.payment.next.month")

BANK_SHARES = {"bank-1": 0.5, "bank-2": 0.3, "bank-3": 0.2}
# Multinomial-logit coefficients per bank on (z log LIMIT_BAL, z AGE, centred label).
_BANK_PREFERENCE = np.array([
    [0.20, 0.12, -0.14],   # bank-1: prime, older, fewer defaults
    [-0.08, 0.08, 0.0],    # bank-2: mainstream
    [-0.24, -0.20, 0.22],  # bank-3: young, low limits, more defaults
])


class ScenarioError(FedscoreError, ValueError):
    """An unknown scenario, or a scenario folder whose manifest is missing or malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class BankStats:
    """One bank's row counts in a scenario folder, as its manifest records them."""

    customers: int
    train_rows: int
    test_rows: int
    train_positives: int
    test_positives: int
    on_platform: int  # customers who are also platform users (the vertical overlap)
    train_on_platform: int
    test_on_platform: int

    @property
    def positives(self) -> int:
        """Defaulters among the bank's customers, train and test."""
        return self.train_positives + self.test_positives

    @property
    def default_rate(self) -> float:
        """Share of the bank's customers who default (0 for a bank without customers)."""
        return self.positives / self.customers if self.customers else 0.0


@dataclass(frozen=True)
class ScenarioManifest:
    """What a scenario folder holds: paths by party, row counts, default rates, overlaps."""

    root: Path
    scenario: str
    seed: int
    people: int
    positives: int
    file_format: str  # "csv" or "parquet"
    platform_dir: Path
    platform_rows: int
    bank_dirs: dict[str, Path]
    banks: dict[str, BankStats]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def default_rate(self) -> float:
        """Share of the whole population who default."""
        return self.positives / self.people if self.people else 0.0

    @property
    def platform_features(self) -> Path:
        """Path of the platform's feature table."""
        return self.platform_dir / f"features.{self.file_format}"

    @property
    def platform_schema(self) -> Path:
        """Path of the platform's schema file."""
        return self.platform_dir / "schema.toml"

    def bank_train(self, bank: str) -> Path:
        """Path of ``bank``'s training table."""
        return self.bank_dirs[bank] / f"train.{self.file_format}"

    def bank_test(self, bank: str) -> Path:
        """Path of ``bank``'s held-out test table."""
        return self.bank_dirs[bank] / f"test.{self.file_format}"

    def bank_schema(self, bank: str) -> Path:
        """Path of ``bank``'s schema file."""
        return self.bank_dirs[bank] / "schema.toml"

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data, paths relative to the folder."""
        banks: dict[str, Any] = {}
        for name, b in self.banks.items():
            banks[name] = {
                "dir": self.bank_dirs[name].relative_to(self.root).as_posix(),
                "customers": b.customers,
                "share": _r(b.customers / self.people),
                "train_rows": b.train_rows,
                "test_rows": b.test_rows,
                "train_positives": b.train_positives,
                "test_positives": b.test_positives,
                "default_rate": _r(b.default_rate),
                "train_default_rate": _r(b.train_positives / max(b.train_rows, 1)),
                "test_default_rate": _r(b.test_positives / max(b.test_rows, 1)),
                "on_platform": b.on_platform,
                "train_on_platform": b.train_on_platform,
                "test_on_platform": b.test_on_platform,
            }
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "format": self.file_format,
            "people": self.people,
            "positives": self.positives,
            "default_rate": _r(self.default_rate),
            "platform": {
                "dir": self.platform_dir.relative_to(self.root).as_posix(),
                "rows": self.platform_rows,
                "share": _r(self.platform_rows / self.people),
            },
            "banks": banks,
            "overlap": {name: b.on_platform for name, b in self.banks.items()},
            "params": self.params,
        }

    def write(self) -> None:
        """Write the manifest file into the scenario folder."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        (self.root / MANIFEST).write_text(text, encoding="utf-8")


def _r(x: float) -> float:
    return round(float(x), 6)


def load_manifest(out: Path) -> ScenarioManifest:
    """Read ``out/scenario.json`` back; paths are resolved against ``out``."""
    out = Path(out)
    path = out / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{path}: not found; is {out} a scenario folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    try:
        banks = {
            name: BankStats(
                customers=int(b["customers"]),
                train_rows=int(b["train_rows"]),
                test_rows=int(b["test_rows"]),
                train_positives=int(b["train_positives"]),
                test_positives=int(b["test_positives"]),
                on_platform=int(b["on_platform"]),
                train_on_platform=int(b["train_on_platform"]),
                test_on_platform=int(b["test_on_platform"]),
            )
            for name, b in data["banks"].items()
        }
        fmt = str(data["format"])
        if fmt not in ("csv", "parquet"):
            raise ScenarioError(f"{path}: format = {fmt!r}; expected 'csv' or 'parquet'")
        return ScenarioManifest(
            root=out,
            scenario=str(data["scenario"]),
            seed=int(data["seed"]),
            people=int(data["people"]),
            positives=int(data["positives"]),
            file_format=fmt,
            platform_dir=out / data["platform"]["dir"],
            platform_rows=int(data["platform"]["rows"]),
            bank_dirs={name: out / b["dir"] for name, b in data["banks"].items()},
            banks=banks,
            params=dict(data.get("params", {})),
        )
    except KeyError as exc:
        raise ScenarioError(f"{path}: missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, ScenarioError):
            raise
        raise ScenarioError(f"{path}: malformed manifest: {exc}") from None


# -- default-credit --------------------------------------------------------------------------


def load_default_credit() -> PartyTable:
    """The bundled raw table, validated like any party's table."""
    return load_table(DEFAULT_CREDIT_CSV, RAW_SCHEMA, require_label=True)


def user_ids(raw_ids: np.ndarray) -> np.ndarray:
    """The string join key for a UCI ID: ``U`` and eight digits."""
    return np.array([f"U{int(i):08d}" for i in raw_ids], dtype=object)


def _bank_probabilities(raw: PartyTable) -> np.ndarray:
    """P(bank | person): a multinomial logit whose intercepts give 50/30/20% on average."""
    assert raw.labels is not None
    log_limit = np.log(raw.features["LIMIT_BAL"].to_numpy(dtype=np.float64))
    age = raw.features["AGE"].to_numpy(dtype=np.float64)
    y = raw.labels.astype(np.float64)
    x = np.stack([
        (log_limit - log_limit.mean()) / log_limit.std(),
        (age - age.mean()) / age.std(),
        y - y.mean(),
    ], axis=1)
    target = np.array(list(BANK_SHARES.values()))
    intercept = np.log(target)
    for _ in range(100):  # fixed-point calibration of the intercepts; converges fast
        logits = x @ _BANK_PREFERENCE.T + intercept
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        intercept += np.log(target / p.mean(axis=0))
    return np.asarray(p)


def stratified_test_mask(
    groups: np.ndarray, labels: np.ndarray, share: float, rng: np.random.Generator
) -> np.ndarray:
    """Mark round(share * size) random rows of every (group, label) cell as test rows."""
    n = len(labels)
    key = rng.random(n)
    order = np.lexsort((key, labels, groups))
    g, lab = groups[order], labels[order]
    new_cell = np.ones(n, dtype=bool)
    new_cell[1:] = (g[1:] != g[:-1]) | (lab[1:] != lab[:-1])
    starts = np.flatnonzero(new_cell)
    sizes = np.diff(np.append(starts, n))
    cell = np.cumsum(new_cell) - 1
    rank = np.arange(n) - starts[cell]
    n_test = np.floor(sizes * share + 0.5).astype(np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[order] = rank < n_test[cell]
    return mask


def prepare_default_credit(out: Path, seed: int = 0) -> ScenarioManifest:
    """Write the ``default-credit`` scenario under ``out``; the same seed gives the same
    bytes."""
    out = Path(out)
    raw = load_default_credit()
    assert raw.labels is not None
    n = len(raw)
    ids = user_ids(raw.ids)
    labels = raw.labels
    rng_platform, rng_bank, rng_split, rng_shuffle = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )

    on_platform = np.zeros(n, dtype=bool)
    on_platform[rng_platform.permutation(n)[: round(0.85 * n)]] = True

    probs = _bank_probabilities(raw)
    u = rng_bank.random(n)
    bank = (u[:, None] > np.cumsum(probs, axis=1)[:, :-1]).sum(axis=1)
    test = stratified_test_mask(bank, labels, TEST_SHARE, rng_split)

    base = PartyTable(RAW_SCHEMA, raw.source, ids, raw.features, labels)

    def party(rows: np.ndarray, schema: Schema) -> PartyTable:
        rows = rows[rng_shuffle.permutation(len(rows))]
        cols = list(schema.feature_names)
        return PartyTable(
            schema=schema,
            source=raw.source,
            ids=base.ids[rows],
            features=base.features[cols].iloc[rows].reset_index(drop=True),
            labels=None if schema.label_column is None else labels[rows],
        )

    platform_dir = out / "platform"
    platform_dir.mkdir(parents=True, exist_ok=True)
    PLATFORM_SCHEMA.dump(platform_dir / "schema.toml")
    platform_rows = np.flatnonzero(on_platform)
    write_table(party(platform_rows, PLATFORM_SCHEMA), platform_dir / "features.csv")

    bank_dirs: dict[str, Path] = {}
    stats: dict[str, BankStats] = {}
    for k, name in enumerate(BANK_SHARES):
        bank_dir = out / name
        bank_dir.mkdir(parents=True, exist_ok=True)
        BANK_SCHEMA.dump(bank_dir / "schema.toml")
        train_rows = np.flatnonzero((bank == k) & ~test)
        test_rows = np.flatnonzero((bank == k) & test)
        write_table(party(train_rows, BANK_SCHEMA), bank_dir / "train.csv")
        write_table(party(test_rows, BANK_SCHEMA), bank_dir / "test.csv")
        bank_dirs[name] = bank_dir
        stats[name] = BankStats(
            customers=len(train_rows) + len(test_rows),
            train_rows=len(train_rows),
            test_rows=len(test_rows),
            train_positives=int(labels[train_rows].sum()),
            test_positives=int(labels[test_rows].sum()),
            on_platform=int(on_platform[bank == k].sum()),
            train_on_platform=int(on_platform[train_rows].sum()),
            test_on_platform=int(on_platform[test_rows].sum()),
        )

    manifest = ScenarioManifest(
        root=out,
        scenario="default-credit",
        seed=seed,
        people=n,
        positives=int(labels.sum()),
        file_format="csv",
        platform_dir=platform_dir,
        platform_rows=len(platform_rows),
        bank_dirs=bank_dirs,
        banks=stats,
        params={"platform_share": 0.85, "bank_shares": BANK_SHARES, "test_share": TEST_SHARE},
    )
    manifest.write()
    return manifest


SCENARIOS: dict[str, Callable[[Path, int], ScenarioManifest]] = {
    "default-credit": prepare_default_credit,
}


def prepare_scenario(name: str, out: Path, seed: int = 0) -> ScenarioManifest:
    """Build the scenario ``name`` into ``out`` from ``seed``; unknown names raise ScenarioError."""
    try:
        build = SCENARIOS[name]
    except KeyError:
        raise ScenarioError(f"unknown scenario {name!r}; known scenarios: "
                            f"{', '.join(sorted(SCENARIOS))}") from None
    return build(out, seed)
