"""A synthetic population for scale tests: the ``default-credit`` layout, any size.

Data-generating process, per person (all draws independent across people):

* segment ``s`` in {young, mainstream, affluent} with probabilities 0.30/0.50/0.20;
  ``c_s`` = -1, 0, +1.
* latent creditworthiness ``z ~ N(0, 1)``, independent of the segment; higher is safer.
* default: ``P(default) = sigmoid(alpha - 1.6 z + 0.35 c_young - 0.35 c_affluent)``,
  i.e. a segment offset of +0.35 (young) / 0 / -0.35 (affluent), with ``alpha``
  solved numerically (Gauss-Hermite quadrature) so the base rate is 20%.
* platform user with probability ``platform_share`` (independent of everything else).
  Platform features (behaviour, all driven by ``z`` and the segment, plus noise):
  ``age`` (older with the segment and with z), ``app_tenure_months`` (longer when z is
  high), ``monthly_spend`` (lognormal, higher for affluent and high z),
  ``orders_90d`` (Poisson), ``income_estimate`` (lognormal, higher with z; 8% missing:
  the one ``allow_missing`` column), ``repay_status_1..3`` (codes -1 paid in full,
  0 revolving, 1..6 months late; a latent ``-0.9 z + noise`` with a shared
  per-person component across months, so a low z means late codes), ``device_os``
  and ``city_tier`` (by segment only; no direct link to default).
* bank: every person banks with exactly one of K banks, drawn from a multinomial
  logit ``log w_k + g_k (z + 0.5 c_s)`` with ``w_k`` proportional to 1/k (unequal
  sizes) and ``g_k`` from +0.5 (bank-1, the prime bank) to -0.5 (bank-K), so the
  banks differ in size, in customer mix and in default rate.
  Bank features: ``credit_limit`` (lognormal, higher with z and segment),
  ``balance`` = limit × utilization with utilization = sigmoid(-0.8 z + noise)
  (high utilization means risk), ``payment_amount`` = balance × sigmoid(0.8 z + noise),
  ``months_on_book``, ``num_products`` and ``delinquency_code`` (0..5, from
  ``-0.9 z + noise``, higher means riskier), ``product`` (by segment), plus the label.
* 20% of each bank's customers are its test set, stratified by label within every
  block of people.

So a low ``z`` shows on both sides (late repayment codes, short tenure, low spend
on the platform; high utilization, low limits, delinquency at the bank) and
raises the default probability: each side alone sees a noisy view of ``z``, the two
together see it better.

Ids are ``U`` and 13 digits: a seeded bijection of the person index, so they are
unique, unordered and carry no information. People are generated in fixed blocks
of ``BLOCK`` people, each from its own generator seeded by ``(seed, block)``, so the
content is the same whatever ``chunk_rows`` is; ``chunk_rows`` (rounded up to a
multiple of ``BLOCK``) only sets how many people are held in memory and written per
Parquet row group. Rows are shuffled within each block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fedscore.data.scenarios import (
    ID_COLUMN,
    LABEL_COLUMN,
    TEST_SHARE,
    BankStats,
    ScenarioManifest,
    stratified_test_mask,
)
from fedscore.data.schema import Feature, Schema

BLOCK = 1 << 15
BASE_RATE = 0.20
SEGMENT_PROBS = np.array([0.30, 0.50, 0.20])  # young, mainstream, affluent
_Z_DEFAULT = -1.6  # log-odds of default per unit of z
_SEGMENT_DEFAULT = np.array([0.35, 0.0, -0.35])
_REPAY_CODES = pa.array(["-1", "0", "1", "2", "3", "4", "5", "6"])
_DELINQ_CODES = pa.array(["0", "1", "2", "3", "4", "5"])
_OS = pa.array(["android", "ios", "other"])
_TIERS = pa.array(["1", "2", "3", "4"])
_PRODUCTS = pa.array(["card", "loan", "mortgage"])
_ID_BITS = 40

PLATFORM_SCHEMA = Schema(ID_COLUMN, (
    Feature("age", "numeric"),
    Feature("app_tenure_months", "numeric"),
    Feature("monthly_spend", "numeric"),
    Feature("orders_90d", "numeric"),
    Feature("income_estimate", "numeric", allow_missing=True),
    Feature("repay_status_1", "categorical"),
    Feature("repay_status_2", "categorical"),
    Feature("repay_status_3", "categorical"),
    Feature("device_os", "categorical"),
    Feature("city_tier", "categorical"),
))
BANK_SCHEMA = Schema(ID_COLUMN, (
    Feature("months_on_book", "numeric"),
    Feature("credit_limit", "numeric"),
    Feature("balance", "numeric"),
    Feature("payment_amount", "numeric"),
    Feature("num_products", "numeric"),
    # Declared vocabularies: every bank codes them alike, so their models can be averaged.
    Feature("delinquency_code", "categorical", values=("0", "1", "2", "3", "4", "5")),
    Feature("product", "categorical", values=("card", "loan", "mortgage")),
), LABEL_COLUMN)


def _arrow_schema(schema: Schema) -> pa.Schema:
    fields = [pa.field(schema.id_column, pa.string(), nullable=False)]
    for feat in schema.features:
        kind = pa.float64() if feat.kind == "numeric" else pa.string()
        fields.append(pa.field(feat.name, kind, nullable=feat.allow_missing))
    if schema.label_column is not None:
        fields.append(pa.field(schema.label_column, pa.int8(), nullable=False))
    return pa.schema(fields)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def _solve_intercept() -> float:
    """alpha with E[sigmoid(alpha + _Z_DEFAULT z + segment offset)] = BASE_RATE."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()

    def rate(alpha: float) -> float:
        logits = alpha + _Z_DEFAULT * nodes[None, :] + _SEGMENT_DEFAULT[:, None]
        return float(SEGMENT_PROBS @ (_sigmoid(logits) @ weights))

    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) < BASE_RATE else (lo, mid)
    return (lo + hi) / 2


ALPHA = _solve_intercept()


def bank_weights(banks: int) -> np.ndarray:
    """Expected bank shares, proportional to 1/k so the banks differ in size."""
    w = 1.0 / np.arange(1, banks + 1)
    return np.asarray(w / w.sum())


def _bank_slopes(banks: int) -> np.ndarray:
    return np.linspace(0.5, -0.5, banks) if banks > 1 else np.zeros(1)


def _ids(index: np.ndarray, seed: int) -> pa.Array:
    """A seeded bijection of [0, 2^40) applied to person indices, as 'U' + 13 digits."""
    mask = np.uint64((1 << _ID_BITS) - 1)
    key = np.uint64(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]) & mask
    x = (index.astype(np.uint64) ^ key) & mask
    x = (x * np.uint64(0x9E3779B97F4A7C15 & ((1 << _ID_BITS) - 1) | 1)) & mask
    x ^= x >> np.uint64(19)
    x = (x * np.uint64(0xBF58476D1CE4E5B9 & ((1 << _ID_BITS) - 1) | 1)) & mask
    digits = pc.utf8_lpad(pc.cast(pa.array(x), pa.string()), 13, "0")
    return pc.binary_join_element_wise("U", digits, "")


@dataclass
class _Block:
    platform: pa.Table
    banks: list[tuple[pa.Table, pa.Table]]  # (train, test) per bank
    stats: list[dict[str, int]] = field(default_factory=list)


def _generate_block(seed: int, block: int, start: int, size: int, banks: int,
                    platform_share: float) -> _Block:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
    n = size
    seg = rng.choice(3, size=n, p=SEGMENT_PROBS)
    c = seg.astype(np.float64) - 1.0
    z = rng.standard_normal(n)
    p_default = _sigmoid(ALPHA + _Z_DEFAULT * z + _SEGMENT_DEFAULT[seg])
    y = (rng.random(n) < p_default).astype(np.int8)
    on_platform = rng.random(n) < platform_share

    # platform behaviour
    age = np.clip(np.round(np.array([26.0, 38.0, 47.0])[seg] + 2.0 * z
                           + np.array([4.0, 8.0, 9.0])[seg] * rng.standard_normal(n)), 18, 80)
    tenure = np.clip(np.round(np.exp(2.8 + 0.35 * z + 0.2 * c + 0.6 * rng.standard_normal(n))),
                     1, 180)
    spend = np.round(np.exp(7.0 + 0.4 * c + 0.3 * z + 0.6 * rng.standard_normal(n)), 2)
    orders = rng.poisson(np.exp(1.5 + 0.2 * c + 0.15 * z)).astype(np.float64)
    income = np.round(np.exp(10.2 + 0.35 * c + 0.25 * z + 0.4 * rng.standard_normal(n)), -2)
    income_missing = rng.random(n) < 0.08
    shared = rng.standard_normal(n)
    repay = []
    for _ in range(3):
        latent = -0.9 * z + 0.5 * shared + 0.5 * rng.standard_normal(n)
        code = np.where(latent < -0.4, 0, np.where(latent < 0.8, 1,
                        np.minimum(7, 2 + ((latent - 0.8) / 0.5).astype(np.int64))))
        repay.append(pc.take(_REPAY_CODES, pa.array(code)))
    os_p = np.array([[0.65, 0.30, 0.05], [0.60, 0.35, 0.05], [0.35, 0.62, 0.03]])[seg]
    device = (rng.random(n)[:, None] > np.cumsum(os_p, axis=1)[:, :-1]).sum(axis=1)
    tier_p = np.array([[0.30, 0.30, 0.25, 0.15], [0.20, 0.30, 0.30, 0.20],
                       [0.50, 0.30, 0.15, 0.05]])[seg]
    tier = (rng.random(n)[:, None] > np.cumsum(tier_p, axis=1)[:, :-1]).sum(axis=1)

    # bank side
    limit = np.round(np.exp(9.3 + 0.5 * c + 0.4 * z + 0.4 * rng.standard_normal(n)), -2)
    utilization = _sigmoid(-0.3 - 0.8 * z + 0.8 * rng.standard_normal(n))
    balance = np.round(limit * utilization, 2)
    payment = np.round(balance * _sigmoid(-0.5 + 0.8 * z + 0.6 * rng.standard_normal(n)), 2)
    months = np.clip(np.round(np.exp(3.3 + 0.3 * c + 0.2 * z + 0.7 * rng.standard_normal(n))),
                     1, 360)
    products = (1 + rng.poisson(np.exp(0.2 + 0.3 * c))).astype(np.float64)
    delinq_latent = -0.9 * z + 0.7 * rng.standard_normal(n)
    delinq = np.clip(np.floor((delinq_latent - 0.3) / 0.45) + 1, 0, 5).astype(np.int64)
    prod_p = np.array([[0.75, 0.23, 0.02], [0.55, 0.35, 0.10], [0.45, 0.25, 0.30]])[seg]
    product = (rng.random(n)[:, None] > np.cumsum(prod_p, axis=1)[:, :-1]).sum(axis=1)

    logits = (np.log(bank_weights(banks))[None, :]
              + _bank_slopes(banks)[None, :] * (z + 0.5 * c)[:, None])
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    bank = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)[:, :-1]).sum(axis=1)
    test = stratified_test_mask(bank, y, TEST_SHARE, rng)

    order = rng.permutation(n)  # row order carries nothing
    ids = _ids(np.arange(start, start + n, dtype=np.int64), seed)

    def col(values: np.ndarray, rows: np.ndarray) -> pa.Array:
        return pa.array(values[rows])

    plat_rows = order[on_platform[order]]
    plat_idx = pa.array(plat_rows)
    income_arr = pa.array(income[plat_rows], mask=income_missing[plat_rows])
    platform = pa.Table.from_arrays([
        ids.take(plat_idx), col(age, plat_rows), col(tenure, plat_rows),
        col(spend, plat_rows), col(orders, plat_rows), income_arr,
        repay[0].take(plat_idx), repay[1].take(plat_idx), repay[2].take(plat_idx),
        pc.take(_OS, pa.array(device[plat_rows])), pc.take(_TIERS, pa.array(tier[plat_rows])),
    ], schema=_arrow_schema(PLATFORM_SCHEMA))

    out = _Block(platform, [])
    for k in range(banks):
        tables = []
        for is_test in (False, True):
            rows = order[(bank[order] == k) & (test[order] == is_test)]
            tables.append(pa.Table.from_arrays([
                ids.take(pa.array(rows)), col(months, rows), col(limit, rows),
                col(balance, rows), col(payment, rows), col(products, rows),
                pc.take(_DELINQ_CODES, pa.array(delinq[rows])),
                pc.take(_PRODUCTS, pa.array(product[rows])), col(y, rows),
            ], schema=_arrow_schema(BANK_SCHEMA)))
        in_bank = bank == k
        out.banks.append((tables[0], tables[1]))
        out.stats.append({
            "train_rows": tables[0].num_rows,
            "test_rows": tables[1].num_rows,
            "train_positives": int(y[in_bank & ~test].sum()),
            "test_positives": int(y[in_bank & test].sum()),
            "on_platform": int(on_platform[in_bank].sum()),
            "train_on_platform": int(on_platform[in_bank & ~test].sum()),
            "test_on_platform": int(on_platform[in_bank & test].sum()),
        })
    return out


def synth_population(
    out: Path,
    people: int,
    banks: int,
    seed: int = 0,
    platform_share: float = 0.85,
    chunk_rows: int = 1_000_000,
    progress: Callable[[int, int], None] | None = None,
) -> ScenarioManifest:
    """Write a synthetic scenario (Parquet) under ``out`` and return its manifest.

    ``progress(done, people)`` is called after each chunk is written."""
    if people < 1:
        raise ValueError(f"people = {people}; expected at least 1")
    if banks < 1:
        raise ValueError(f"banks = {banks}; expected at least 1")
    if people < 100 * banks:
        raise ValueError(f"people = {people} is too few for {banks} banks; expected at "
                         f"least {100 * banks} (100 per bank) so every bank has customers")
    if not 0.0 < platform_share <= 1.0:
        raise ValueError(f"platform_share = {platform_share}; expected a share in (0, 1]")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows = {chunk_rows}; expected at least 1")
    out = Path(out)
    names = [f"bank-{k + 1}" for k in range(banks)]
    platform_dir = out / "platform"
    bank_dirs = {name: out / name for name in names}
    for d in (platform_dir, *bank_dirs.values()):
        d.mkdir(parents=True, exist_ok=True)
    PLATFORM_SCHEMA.dump(platform_dir / "schema.toml")
    for d in bank_dirs.values():
        BANK_SCHEMA.dump(d / "schema.toml")

    blocks_per_chunk = max(1, math.ceil(chunk_rows / BLOCK))
    n_blocks = math.ceil(people / BLOCK)
    plat_schema = _arrow_schema(PLATFORM_SCHEMA)
    bank_schema = _arrow_schema(BANK_SCHEMA)
    totals = [dict.fromkeys(("train_rows", "test_rows", "train_positives", "test_positives",
                             "on_platform", "train_on_platform", "test_on_platform"), 0)
              for _ in names]
    platform_rows = 0
    writers: list[pq.ParquetWriter] = []
    try:
        plat_writer = pq.ParquetWriter(platform_dir / "features.parquet", plat_schema,
                                       compression="zstd")
        writers.append(plat_writer)
        bank_writers = []
        for d in bank_dirs.values():
            pair = (pq.ParquetWriter(d / "train.parquet", bank_schema, compression="zstd"),
                    pq.ParquetWriter(d / "test.parquet", bank_schema, compression="zstd"))
            writers.extend(pair)
            bank_writers.append(pair)
        for first in range(0, n_blocks, blocks_per_chunk):
            parts = []
            for b in range(first, min(first + blocks_per_chunk, n_blocks)):
                start = b * BLOCK
                parts.append(_generate_block(seed, b, start, min(BLOCK, people - start),
                                             banks, platform_share))
            plat = pa.concat_tables([p.platform for p in parts])
            platform_rows += plat.num_rows
            plat_writer.write_table(plat, row_group_size=max(plat.num_rows, 1))
            for k, (train_w, test_w) in enumerate(bank_writers):
                for j, writer in enumerate((train_w, test_w)):
                    table = pa.concat_tables([p.banks[k][j] for p in parts])
                    if table.num_rows:
                        writer.write_table(table, row_group_size=table.num_rows)
                for p in parts:
                    for key, value in p.stats[k].items():
                        totals[k][key] += value
            if progress is not None:
                progress(min((first + blocks_per_chunk) * BLOCK, people), people)
    finally:
        for w in writers:
            w.close()

    stats = {
        name: BankStats(customers=t["train_rows"] + t["test_rows"], **t)
        for name, t in zip(names, totals, strict=True)
    }
    manifest = ScenarioManifest(
        root=out,
        scenario="synth",
        seed=seed,
        people=people,
        positives=sum(s.positives for s in stats.values()),
        file_format="parquet",
        platform_dir=platform_dir,
        platform_rows=platform_rows,
        bank_dirs=bank_dirs,
        banks=stats,
        params={"banks": banks, "platform_share": platform_share, "base_rate": BASE_RATE,
                "test_share": TEST_SHARE, "block": BLOCK},
    )
    manifest.write()
    return manifest
