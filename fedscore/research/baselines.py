"""Quality baselines on one scenario split, all in one harness.

* ``federated_reference``: per bank, the split model trained with that bank's own
  platform bottom through :class:`LocalPlatformLink` — exactly what the gRPC run
  computes, in one process. The bank-side models are not shared between banks here.
* ``centralized``: the same architecture and the same loop on all banks' training
  rows pooled (one bank model, one platform bottom).
* ``bank_alone``: each bank on its own features, no platform at all.
* ``gbdt``: scikit-learn HistGradientBoosting on the pooled raw data, platform
  features missing for people the platform does not know.

Every function scores the banks' test sets and reports AUC/KS over the three test
sets pooled, plus per bank. Alignment here is a plaintext join of ids: baselines
only; the federated system aligns with PSI.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedscore.data.preprocess import Encoded, PreprocessConfig, Preprocessor
from fedscore.data.table import PartyTable, load_table
from fedscore.ml import metrics
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.training import (
    BankData,
    LocalPlatformLink,
    NoPlatformLink,
    PlatformBottom,
    TrainConfig,
    predict,
    train_bank_model,
)


@dataclass
class Scenario:
    """A scenario folder loaded in memory: the platform's table and each bank's train and test."""

    platform: PartyTable
    banks: list[tuple[PartyTable, PartyTable]]  # (train, test) per bank


def load_scenario(directory: Path) -> Scenario:
    """Read a scenario folder written by ``fedscore data prepare`` (via its manifest)."""
    from fedscore.data.scenarios import load_manifest

    m = load_manifest(Path(directory))
    return Scenario(
        platform=load_table(m.platform_features, m.platform_schema, require_label=False),
        banks=[
            (
                load_table(m.bank_train(b), m.bank_schema(b), require_label=True),
                load_table(m.bank_test(b), m.bank_schema(b), require_label=True),
            )
            for b in m.bank_dirs
        ],
    )


def default_credit(seed: int = 0, directory: Path | None = None) -> Scenario:
    """Prepare ``default-credit`` for ``seed`` (in a temporary folder unless given) and
    load it."""
    import tempfile

    from fedscore.data.scenarios import prepare_default_credit

    if directory is not None:
        prepare_default_credit(Path(directory), seed)
        return load_scenario(Path(directory))
    with tempfile.TemporaryDirectory() as tmp:
        prepare_default_credit(Path(tmp), seed)
        return load_scenario(Path(tmp))


def align(platform_ids: np.ndarray, bank_ids: np.ndarray) -> np.ndarray:
    """Platform row of each bank row, -1 where the platform does not know the id."""
    index = pd.Index(np.asarray(platform_ids, dtype=object))
    return np.asarray(index.get_indexer(np.asarray(bank_ids, dtype=object)), dtype=np.int64)


def _summary(ys: list[np.ndarray], ps: list[np.ndarray], extra: list[dict[str, Any]]) -> dict:
    y, p = np.concatenate(ys), np.concatenate(ps)
    per_bank = []
    for yk, pk, ek in zip(ys, ps, extra, strict=True):
        per_bank.append({"auc": metrics.auc(yk, pk), "ks": metrics.ks(yk, pk), "n_test": yk.size,
                         **ek})
    return {"auc": metrics.auc(y, p), "ks": metrics.ks(y, p), "per_bank": per_bank}


def _labels(t: PartyTable) -> np.ndarray:
    if t.labels is None:
        raise ValueError("bank table without labels")
    return np.asarray(t.labels, dtype=np.int64)


def _concat(tables: list[PartyTable]) -> PartyTable:
    """Pool tables of one schema (the centralized baseline's privilege)."""
    first = tables[0]
    ids = np.concatenate([t.ids for t in tables])
    feats = pd.concat([t.features for t in tables], ignore_index=True)
    labels = np.concatenate([_labels(t) for t in tables]).astype(np.int8)
    return PartyTable(
        schema=first.schema, source=first.source, ids=ids, features=feats, labels=labels
    )


class PlatformSide:
    """The platform's preprocessor, fitted on all its rows (it has no labels)."""

    def __init__(self, platform: PartyTable, pre_cfg: PreprocessConfig | None) -> None:
        self.pre = Preprocessor.fit(platform, pre_cfg)
        self.encoded: Encoded = self.pre.transform(platform)
        self.ids = platform.ids


def train_and_score(
    platform: PlatformSide | None,
    train: PartyTable,
    tests: list[PartyTable],
    arch: SplitArchitecture,
    cfg: TrainConfig,
    pre_cfg: PreprocessConfig | None,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Fit the bank's preprocessor on ``train``, train one bank model (with the platform
    when given, else bank alone), return PDs for each of ``tests`` and run facts."""
    bank_pre = Preprocessor.fit(train, pre_cfg)
    bank_cfg = arch.bank_bottom(bank_pre.n_numeric, bank_pre.cat_cardinalities)
    tables = [train, *tests]
    if platform is None:
        link: Any = NoPlatformLink(arch.platform_out)
        handles = [np.full(len(t.ids), -1, np.int64) for t in tables]
    else:
        rows = [align(platform.ids, t.ids) for t in tables]
        all_rows = np.concatenate(rows)
        aligned = all_rows[all_rows >= 0]
        # handles are positions in the aligned list, as after PSI
        handle_of_row = np.full(len(platform.ids), -1, np.int64)
        handle_of_row[aligned] = np.arange(aligned.size)
        handles = [np.where(r >= 0, handle_of_row[np.maximum(r, 0)], -1) for r in rows]
        plat_cfg = arch.platform_bottom(platform.pre.n_numeric, platform.pre.cat_cardinalities)
        link = LocalPlatformLink(PlatformBottom(platform.encoded, plat_cfg, cfg), aligned)
    data = [
        BankData(bank_pre.transform(t), _labels(t), h)
        for t, h in zip(tables, handles, strict=True)
    ]
    trained = train_bank_model(data[0], link, bank_cfg, arch.top(), cfg)
    preds = [predict(trained.model, d, link, cfg.eval_batch_size) for d in data[1:]]
    info = {"best_epoch": trained.best_epoch, "epochs_run": trained.epochs_run,
            "refit_epochs": trained.refit_epochs, "train_s": round(trained.wall_s, 2),
            "n_train": len(train.ids)}
    return preds, info


def _per_bank(
    sc: Scenario, platform: PlatformSide | None, arch: SplitArchitecture, cfg: TrainConfig,
    pre_cfg: PreprocessConfig | None,
) -> dict[str, Any]:
    ys, ps, extra = [], [], []
    for train, test in sc.banks:
        (p,), info = train_and_score(platform, train, [test], arch, cfg, pre_cfg)
        ys.append(_labels(test))
        ps.append(p)
        extra.append(info)
    return _summary(ys, ps, extra)


def federated_reference(
    sc: Scenario,
    arch: SplitArchitecture | None = None,
    cfg: TrainConfig | None = None,
    pre_cfg: PreprocessConfig | None = None,
) -> dict[str, Any]:
    """Per bank: a fresh platform bottom and a bank model trained together."""
    platform = PlatformSide(sc.platform, pre_cfg)
    return _per_bank(sc, platform, arch or SplitArchitecture(), cfg or TrainConfig(), pre_cfg)


def bank_alone(
    sc: Scenario,
    arch: SplitArchitecture | None = None,
    cfg: TrainConfig | None = None,
    pre_cfg: PreprocessConfig | None = None,
) -> dict[str, Any]:
    """Per bank, its own features only (every row takes the absent-platform path)."""
    return _per_bank(sc, None, arch or SplitArchitecture(), cfg or TrainConfig(), pre_cfg)


def centralized(
    sc: Scenario,
    arch: SplitArchitecture | None = None,
    cfg: TrainConfig | None = None,
    pre_cfg: PreprocessConfig | None = None,
) -> dict[str, Any]:
    """All banks' training rows pooled; same architecture, same loop."""
    arch, cfg = arch or SplitArchitecture(), cfg or TrainConfig()
    platform = PlatformSide(sc.platform, pre_cfg)
    pooled = _concat([tr for tr, _ in sc.banks])
    tests = [te for _, te in sc.banks]
    ps, info = train_and_score(platform, pooled, tests, arch, cfg, pre_cfg)
    ys = [_labels(te) for te in tests]
    out = _summary(ys, ps, [{} for _ in tests])
    out.update(info)
    return out


def _raw_frame(sc_platform: PartyTable, t: PartyTable) -> pd.DataFrame:
    """Bank features plus the platform's (NaN where absent); categoricals that parse as
    numbers stay numbers (ordinal repayment statuses), others become category codes."""
    rows = align(sc_platform.ids, t.ids)
    plat = sc_platform.features.iloc[np.maximum(rows, 0)].reset_index(drop=True)
    plat = plat.astype(object).where(np.repeat((rows >= 0)[:, None], plat.shape[1], axis=1))
    plat.columns = [f"platform:{c}" for c in plat.columns]
    return pd.concat([t.features.reset_index(drop=True), plat], axis=1)


def _gbdt_matrix(frames: list[pd.DataFrame]) -> tuple[list[np.ndarray], list[bool]]:
    pooled = pd.concat(frames, ignore_index=True)
    cols, is_cat = [], []
    for c in pooled.columns:
        s = pooled[c]
        num = pd.to_numeric(s, errors="coerce")
        if s.dtype.kind in "fiu" or (num.notna() == s.notna()).all():
            cols.append(num.to_numpy(np.float64))
            is_cat.append(False)
        else:
            codes = pd.Categorical(s.astype("string")).codes.astype(np.float64)
            codes[codes < 0] = np.nan
            cols.append(codes)
            is_cat.append(True)
    x = np.column_stack(cols)
    bounds = np.cumsum([0] + [len(f) for f in frames])
    return [x[a:b] for a, b in itertools.pairwise(bounds)], is_cat


def gbdt(sc: Scenario, seed: int = 0, validation_share: float = 0.2) -> dict[str, Any]:
    """HistGradientBoosting on pooled raw rows, early-stopped on a validation share.

    The settings (small trees, slow learning rate) were the best of four tried on
    default-credit seeds 0-2, on the test sets: if anything this flatters the reference.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    frames = [_raw_frame(sc.platform, tr) for tr, _ in sc.banks]
    frames += [_raw_frame(sc.platform, te) for _, te in sc.banks]
    mats, is_cat = _gbdt_matrix(frames)
    k = len(sc.banks)
    x_train = np.concatenate(mats[:k])
    y_train = np.concatenate([_labels(tr) for tr, _ in sc.banks])
    t0 = time.perf_counter()
    clf = HistGradientBoostingClassifier(
        learning_rate=0.03,
        max_iter=2000,
        max_leaf_nodes=8,
        min_samples_leaf=80,
        l2_regularization=1.0,
        early_stopping=True,
        validation_fraction=validation_share,
        n_iter_no_change=50,
        categorical_features=np.array(is_cat) if any(is_cat) else None,
        random_state=seed,
    )
    with threadpool_limits(limits=1, user_api="openmp"):  # see gbdt_tuned
        clf.fit(x_train, y_train)
        ps = [clf.predict_proba(m)[:, 1] for m in mats[k:]]
    ys = [_labels(te) for _, te in sc.banks]
    out = _summary(ys, ps, [{} for _ in ys])
    out.update({"n_iter": int(clf.n_iter_), "train_s": round(time.perf_counter() - t0, 2)})
    return out


def parse_seeds(text: str) -> list[int]:
    """``"0-4"``, ``"0,1,2"`` or a mix (``"0-2,7"``): the seeds, in order, no repeats.

    Bad input is a ValueError naming the part that is not a seed or a range.
    """
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            got = range(int(lo), int(hi) + 1) if sep else [int(part)]
        except ValueError:
            raise ValueError(
                f"--seeds: {part!r} is not a seed (an integer >= 0) or a range like 0-4"
            ) from None
        if not got or min(got) < 0:
            raise ValueError(f"--seeds: {part!r} is empty or negative")
        seeds += [s for s in got if s not in seeds]
    return seeds


# The hand-picked settings of :func:`gbdt`, always among the tuned search's candidates.
GBDT_HAND_PICKED: dict[str, Any] = {"learning_rate": 0.03, "max_leaf_nodes": 8,
                                    "min_samples_leaf": 80, "l2_regularization": 1.0}
GBDT_SPACE: dict[str, list[Any]] = {
    "learning_rate": [0.02, 0.03, 0.05, 0.1],
    "max_leaf_nodes": [4, 8, 15, 31, 63],
    "min_samples_leaf": [20, 50, 100, 200, 400],
    "l2_regularization": [0.0, 0.1, 1.0, 10.0],
}


def gbdt_tuned(
    sc: Scenario, seed: int = 0, candidates: int = 8, folds: int = 3
) -> dict[str, Any]:
    """HistGradientBoosting tuned by cross-validation on the pooled training rows only.

    ``candidates`` settings (the hand-picked ones of :func:`gbdt` plus random draws from
    :data:`GBDT_SPACE`, seeded) are scored by ``folds``-fold stratified cross-validated
    AUC; every fit stops early on a validation share of its own training rows, so the
    number of trees (``max_iter``, up to 2,000) is tuned too. The best setting is refitted
    on all training rows and scores the test sets, which the search never sees: this is
    the pooled reference a risk team would run if privacy did not matter.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GridSearchCV, ParameterSampler, StratifiedKFold
    from threadpoolctl import threadpool_limits

    frames = [_raw_frame(sc.platform, tr) for tr, _ in sc.banks]
    frames += [_raw_frame(sc.platform, te) for _, te in sc.banks]
    mats, is_cat = _gbdt_matrix(frames)
    k = len(sc.banks)
    x_train = np.concatenate(mats[:k])
    y_train = np.concatenate([_labels(tr) for tr, _ in sc.banks])
    t0 = time.perf_counter()
    drawn = list(ParameterSampler(GBDT_SPACE, n_iter=max(candidates - 1, 0), random_state=seed))
    grid = [{name: [value] for name, value in c.items()} for c in [GBDT_HAND_PICKED, *drawn]]
    base = HistGradientBoostingClassifier(
        max_iter=2000, early_stopping=True, validation_fraction=0.1, n_iter_no_change=40,
        categorical_features=np.array(is_cat) if any(is_cat) else None, random_state=seed,
    )
    search = GridSearchCV(
        base, grid, scoring="roc_auc", refit=True, n_jobs=1,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
    )
    # one OpenMP thread: on a shared, loaded machine more threads spin at every barrier and
    # a search of minutes took tens of minutes; the fitted trees are the same either way
    with threadpool_limits(limits=1, user_api="openmp"):
        search.fit(x_train, y_train)
        clf = search.best_estimator_
        ps = [clf.predict_proba(m)[:, 1] for m in mats[k:]]
    ys = [_labels(te) for _, te in sc.banks]
    out = _summary(ys, ps, [{} for _ in ys])
    out.update({"params": {**search.best_params_, "max_iter": int(clf.n_iter_)},
                "cv_auc": float(search.best_score_), "candidates": len(grid),
                "train_s": round(time.perf_counter() - t0, 2), "test_pd": ps})
    return out


class _ResampledAuc:
    """ROC AUC of one score vector on bootstrap resamples of its rows, without sorting
    per resample: rows are grouped by score once, and a resample is a count per row."""

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.y = np.asarray(y, np.float64)
        _, self.group = np.unique(np.asarray(p, np.float64), return_inverse=True)
        self.groups = int(self.group.max()) + 1

    def __call__(self, counts: np.ndarray) -> float:
        pos = np.bincount(self.group, counts * self.y, self.groups)  # per score, ascending
        neg = np.bincount(self.group, counts * (1.0 - self.y), self.groups)
        below = np.cumsum(neg) - neg  # negatives scored strictly lower; ties count half
        return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def paired_bootstrap(
    ys: list[np.ndarray], pa: list[np.ndarray], pb: list[np.ndarray],
    resamples: int = 1000, seed: int = 0,
) -> dict[str, float]:
    """AUC of model a minus model b, averaged over several test sets (one per seed), with
    a paired bootstrap: each resample draws every test set's rows with replacement and
    scores BOTH models on the same draw, so the interval reflects only how the two
    differ on these rows. Returns the point estimate, the 2.5% and 97.5% quantiles and
    the share of resamples where a beats b."""
    if not len(ys) == len(pa) == len(pb) or not ys:
        raise ValueError("paired_bootstrap: one label vector and two score vectors per test set")
    rng = np.random.default_rng(seed)
    aucs = [(_ResampledAuc(y, a), _ResampledAuc(y, b)) for y, a, b in zip(ys, pa, pb,
                                                                          strict=True)]
    point = float(np.mean([a(np.ones(len(y))) - b(np.ones(len(y)))
                           for y, (a, b) in zip(ys, aucs, strict=True)]))
    diffs = np.empty(resamples)
    for r in range(resamples):
        per_set = []
        for y, (a, b) in zip(ys, aucs, strict=True):
            counts = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y))
            per_set.append(a(counts) - b(counts))
        diffs[r] = np.mean(per_set)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {"diff": point, "ci95_low": float(lo), "ci95_high": float(hi),
            "share_positive": float((diffs > 0).mean()), "resamples": resamples}


def run_all(
    sc: Scenario,
    arch: SplitArchitecture | None = None,
    cfg: TrainConfig | None = None,
    pre_cfg: PreprocessConfig | None = None,
) -> dict[str, Any]:
    """Every baseline on one split; the keys the quality benchmark prints."""
    cfg = cfg or TrainConfig()
    fed = federated_reference(sc, arch, cfg, pre_cfg)
    cen = centralized(sc, arch, cfg, pre_cfg)
    alone = bank_alone(sc, arch, cfg, pre_cfg)
    gb = gbdt(sc, cfg.seed)
    return {
        "federated_auc": fed["auc"],
        "federated_ks": fed["ks"],
        "centralized_auc": cen["auc"],
        "centralized_ks": cen["ks"],
        "bank_alone_auc": alone["auc"],
        "bank_alone_ks": alone["ks"],
        "gbdt_auc": gb["auc"],
        "gbdt_ks": gb["ks"],
        "details": {"federated": fed, "centralized": cen, "bank_alone": alone, "gbdt": gb},
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m fedscore.research.baselines --seed 0``: every baseline on default-credit.

    Prints JSON.
    """
    import argparse
    import json

    import torch

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-refit", action="store_true",
                    help="keep the early-stopped model instead of refitting on all rows")
    ap.add_argument("--scenario-dir", type=Path, default=None,
                    help="an existing `fedscore data prepare` folder (default: prepare one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sc = load_scenario(args.scenario_dir) if args.scenario_dir else default_credit(args.seed)
    out = run_all(sc, cfg=TrainConfig(seed=args.seed, refit=not args.no_refit))
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
