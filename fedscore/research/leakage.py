"""Measured leakage of split learning: what each party can infer from what it receives.

The wire types carry no raw feature (see ``tests/test_privacy.py``), but the
embeddings and gradients that do cross are functions of raw data. Issue 5 asks how
much of it they give away, with and without differential privacy. Two attacks, each
run on exactly what crosses the boundary in training and scoring:

Embedding inversion (a bank attacks the platform)
    A bank receives one platform embedding per aligned customer, per training batch
    and per scoring request. Worst case: the bank also holds the platform's raw
    numeric features for a slice of those customers (a leaked extract, a shared
    customer survey, its own copy of some of the same facts). It trains a regressor
    embedding -> feature on that slice and applies it to everyone else. We report
    the out-of-sample R² per feature: 1 means the embedding reveals the feature,
    0 means no better than guessing the mean (the attacker learns nothing a mean
    would not tell it), below 0 worse than that.

Label leakage (the platform attacks a bank)
    The platform receives dL/d(embedding) for every aligned customer of a training
    batch. Without any labelled data it can score each gradient and rank customers
    (Li et al. 2021, "Label Leakage and Protection in Two-party Split Learning"):
    by its norm (with a rare positive class, defaulters get larger gradients) and by
    its direction (dL/dlogit = p - y changes sign with the label, so gradients of
    the two classes point to opposite sides). We report the AUC of each score
    against the true labels; 0.5 is no leakage, 1 is the labels in the clear.

:func:`collect` trains the split model in process exactly as
:func:`fedscore.research.baselines.federated_reference` does, through a
:class:`RecordingLink` that keeps copies of what crosses, optionally behind a
:class:`NoisyLink` (the platform's embedding-side mechanism, e.g.
:func:`gaussian_mechanism`); :func:`measure` runs both attacks on the recording.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from fedscore.crypto import dp
from fedscore.data.preprocess import PreprocessConfig, Preprocessor
from fedscore.data.table import PartyTable
from fedscore.ml import metrics
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.training import (
    BankData,
    LocalPlatformLink,
    PlatformBottom,
    PlatformLink,
    RestartableLink,
    TrainConfig,
    predict,
    train_bank_model,
)
from fedscore.research.baselines import PlatformSide, Scenario, align, load_scenario

EmbeddingNoise = Callable[[torch.Tensor], torch.Tensor]
"""Maps the platform's embeddings [B, d] to what the bank receives [B, d]; must be
differentiable (the platform back-propagates the bank's gradient through it)."""

MEAN_R2 = "mean_r2"
"""Key of the summary in :func:`embedding_inversion`'s result (not a feature name)."""

_MIN_ROWS = 10  # fewer finite targets than this on either side: R² is NaN


# --------------------------------------------------------------------------- attacks
def embedding_inversion(
    embeddings: np.ndarray,
    raw: pd.DataFrame | np.ndarray,
    names: Sequence[str] | None = None,
    *,
    attacker_share: float = 0.3,
    seed: int = 0,
) -> dict[str, float]:
    """Out-of-sample R² of reconstructing each raw feature from the embeddings.

    Threat model: the receiver of ``embeddings`` [n, d] (a bank) also knows the true
    ``raw`` [n, k] values for a random ``attacker_share`` of the rows (worst case: a
    leaked extract of the platform's table). Per feature it fits a ridge regression
    and a small MLP on 80% of its slice, keeps whichever predicts the other 20% of
    its slice better (the attacker's choice, made without the victims' values), and
    is scored on every row outside its slice. Rows must be distinct people, else the
    same person sits on both sides of the split.

    Targets are standardised on the attacker's slice; R² is invariant to that and is
    neither clipped nor floored (negative: worse than predicting the mean). Rows whose
    target is missing (NaN) are left out for that feature; a feature with fewer than
    10 finite values on either side gets NaN. Returns ``{name: R², ..., MEAN_R2: mean
    over the features with a finite R²}``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(embeddings, dtype=np.float64)
    if isinstance(raw, pd.DataFrame):
        names = list(raw.columns) if names is None else list(names)
        y_all = raw[names].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    else:
        y_all = np.asarray(raw, dtype=np.float64)
        if y_all.ndim == 1:
            y_all = y_all[:, None]
        names = [f"feature_{j}" for j in range(y_all.shape[1])] if names is None else list(names)
    if x.ndim != 2 or y_all.ndim != 2 or x.shape[0] != y_all.shape[0]:
        raise ValueError(
            f"embedding_inversion: embeddings {x.shape} and raw {y_all.shape} must be "
            "[n, d] and [n, k] with the same n"
        )
    if len(names) != y_all.shape[1]:
        raise ValueError(f"embedding_inversion: {len(names)} names for {y_all.shape[1]} features")
    if MEAN_R2 in names:
        raise ValueError(f"embedding_inversion: a feature may not be named {MEAN_R2!r}")
    if not 0.0 < attacker_share < 1.0:
        raise ValueError(f"attacker_share must be in (0, 1), got {attacker_share}")
    if not np.isfinite(x).all():
        raise ValueError("embedding_inversion: embeddings must be finite")

    rng = np.random.default_rng(seed)
    perm = rng.permutation(x.shape[0])
    n_att = round(attacker_share * x.shape[0])
    attacker, victims = perm[:n_att], perm[n_att:]
    n_fit = round(0.8 * attacker.size)
    fit, select = attacker[:n_fit], attacker[n_fit:]
    scaler = StandardScaler().fit(x[attacker])
    xs = scaler.transform(x)

    out: dict[str, float] = {}
    for j, name in enumerate(names):
        y = y_all[:, j]
        ok = np.isfinite(y)
        f, s, v = fit[ok[fit]], select[ok[select]], victims[ok[victims]]
        if min(f.size, s.size, v.size) < _MIN_ROWS:
            out[name] = float("nan")
            continue
        mu, sd = float(y[attacker][ok[attacker]].mean()), float(y[attacker][ok[attacker]].std())
        z = (y - mu) / (sd if sd > 0 else 1.0)
        z = np.where(ok, z, 0.0)
        candidates = [
            RidgeCV(alphas=np.logspace(-3, 3, 13)),
            MLPRegressor(
                hidden_layer_sizes=(64, 64), alpha=1e-3, learning_rate_init=1e-3,
                max_iter=300, early_stopping=True, validation_fraction=0.15,
                n_iter_no_change=15, random_state=seed,
            ),
        ]
        best, best_score = None, -np.inf
        for model in candidates:
            with warnings.catch_warnings():  # max_iter on a target with nothing to learn
                warnings.filterwarnings("ignore", category=ConvergenceWarning)
                model.fit(xs[f], z[f])
            score = float(r2_score(z[s], model.predict(xs[s])))
            if score > best_score:
                best, best_score = model, score
        assert best is not None
        out[name] = float(r2_score(z[v], best.predict(xs[v])))
    finite = [r for r in out.values() if np.isfinite(r)]
    out[MEAN_R2] = float(np.mean(finite)) if finite else float("nan")
    return out


def label_leakage(gradients: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Attack AUCs of two label-free scores of the gradients the platform receives.

    * ``norm_auc``: score ``||g||`` (Li et al.'s norm attack);
    * ``cosine_auc``: score ``cos(g, v)`` with ``v`` the first principal direction of
      the (uncentred) gradients, i.e. the axis the two classes' gradients point along
      in opposite senses; thresholding it at 0 is the sign clustering of the direction
      attack, whose accuracy is ``cosine_sign_accuracy``.

    The attacker does not know which side is which, so every figure is the better of a
    score and its reverse: AUCs are ``max(AUC, 1 - AUC)`` (0.5 = nothing leaks) and the
    accuracy ``max(acc, 1 - acc)``.
    """
    g = np.asarray(gradients, dtype=np.float64)
    y = np.asarray(labels).ravel()
    if g.ndim != 2 or g.shape[0] != y.size:
        raise ValueError(f"label_leakage: gradients {g.shape} and labels {y.shape} disagree")
    if not np.isin(y, (0, 1)).all() or np.unique(y).size != 2:
        raise ValueError("label_leakage: labels must be 0/1 with both classes present")
    if not np.isfinite(g).all():
        raise ValueError("label_leakage: gradients must be finite")

    def both_ways(a: float) -> float:
        return max(a, 1.0 - a)

    norms = np.linalg.norm(g, axis=1)
    _, _, vt = np.linalg.svd(g, full_matrices=False)
    cos = (g @ vt[0]) / np.maximum(norms, 1e-30)
    acc = float(np.mean((cos > 0) == (y == 1)))
    return {
        "norm_auc": both_ways(metrics.auc(y, norms)),
        "cosine_auc": both_ways(metrics.auc(y, cos)),
        "cosine_sign_accuracy": both_ways(acc),
    }


# ---------------------------------------------------------------- embedding noise
def gaussian_mechanism(clip: float, sigma: float, seed: int = 0) -> EmbeddingNoise:
    """The platform's embedding-side Gaussian mechanism.

    :func:`fedscore.crypto.dp.gaussian_mechanism` (the one the live platform uses): clip
    each row's L2 norm to ``clip``, add N(0, (sigma * clip)²) to every coordinate; seeded
    (default 0) so measurements repeat.

    Per release of one row this is the Gaussian mechanism with sensitivity 2 * ``clip``
    under replacement; :func:`fedscore.crypto.dp.embedding_epsilon` accounts for it.
    """
    return dp.gaussian_mechanism(clip, sigma, seed)


# ------------------------------------------------------------------------ links
class NoisyLink:
    """The platform behind ``inner`` with ``noise`` on every embedding it releases.

    In training the bank's gradient (w.r.t. the noisy embedding) is pulled back
    through ``noise`` before it reaches the platform's optimizer, as the platform
    would do on its own side.
    """

    def __init__(self, inner: PlatformLink, noise: EmbeddingNoise) -> None:
        self.inner = inner
        self.noise = noise
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (clean leaf, noisy)

    @property
    def embedding_dim(self) -> int:
        """The inner link's embedding width (noise keeps the shape)."""
        return self.inner.embedding_dim

    def forward(self, handles: np.ndarray, train: bool) -> torch.Tensor:
        """The inner link's embeddings with noise; in training, remembered for :meth:`backward`."""
        emb = self.inner.forward(handles, train)
        if not train:
            with torch.no_grad():
                return self.noise(emb)
        leaf = emb.detach().requires_grad_(True)
        noisy = self.noise(leaf)
        self._pending = (leaf, noisy)
        return noisy.detach()

    def backward(self, grad: torch.Tensor) -> None:
        """Pull ``grad`` back through the noise and pass the result to the inner link."""
        if self._pending is None:
            raise RuntimeError("NoisyLink: backward without a training forward before it")
        leaf, noisy = self._pending
        self._pending = None
        noisy.backward(grad.to(noisy.dtype))
        assert leaf.grad is not None
        self.inner.backward(leaf.grad)

    def end_epoch(self, epoch: int) -> None:
        """Passed through to the inner link."""
        self.inner.end_epoch(epoch)

    def commit(self, epoch: int) -> None:
        """Passed through to the inner link."""
        self.inner.commit(epoch)

    def restart(self) -> None:
        """Restart the inner link (it must be restartable) and drop any pending forward."""
        if not isinstance(self.inner, RestartableLink):
            raise TypeError(f"{type(self.inner).__name__} cannot restart")
        self._pending = None
        self.inner.restart()


@dataclass
class _Batch:
    handles: np.ndarray  # [b] int64
    embeddings: np.ndarray  # [b, d] float32, as the bank received them
    gradients: np.ndarray | None = None  # [b, d] float32, as the platform received them
    epoch: int = -1
    pass_: int = 0


class RecordingLink:
    """Delegates to ``inner`` and keeps copies of what crosses it.

    Training batches (a ``forward(train=True)`` and its ``backward``) are kept per
    epoch: only the last completed epoch (``keep="last_epoch"``) or all of them
    (``"all"``), tagged with the epoch and the pass (a ``restart`` starts pass + 1).
    Evaluation forwards are recorded only while ``record_scoring`` is set (scoring
    after training); the early-stopping forwards in between are not.
    """

    def __init__(
        self, inner: PlatformLink, keep: Literal["last_epoch", "all"] = "last_epoch"
    ) -> None:
        if keep not in ("last_epoch", "all"):
            raise ValueError(f"RecordingLink: keep must be 'last_epoch' or 'all', got {keep!r}")
        self.inner = inner
        self.keep = keep
        self.record_scoring = False
        self.scoring: list[_Batch] = []
        self._pass = 0
        self._current: list[_Batch] = []
        self._kept: list[_Batch] = []
        self._open: _Batch | None = None  # forwarded, gradient not back yet

    @property
    def embedding_dim(self) -> int:
        """The inner link's embedding width."""
        return self.inner.embedding_dim

    def forward(self, handles: np.ndarray, train: bool) -> torch.Tensor:
        """The inner link's embeddings, with a copy kept (training, or scoring when recording)."""
        emb = self.inner.forward(handles, train)
        copy = _Batch(np.array(handles, dtype=np.int64), emb.detach().numpy().astype(np.float32))
        if train:
            if self._open is not None:
                raise RuntimeError("RecordingLink: two training forwards without a backward")
            self._open = copy
        elif self.record_scoring:
            self.scoring.append(copy)
        return emb

    def backward(self, grad: torch.Tensor) -> None:
        """Keep the gradient with its batch, then pass it to the inner link."""
        if self._open is None:
            raise RuntimeError("RecordingLink: backward without a training forward before it")
        self._open.gradients = grad.detach().numpy().astype(np.float32)
        self._open.pass_ = self._pass
        self._current.append(self._open)
        self._open = None
        self.inner.backward(grad)

    def end_epoch(self, epoch: int) -> None:
        """Tag the epoch's batches with ``epoch`` and keep them as ``keep`` says."""
        for b in self._current:
            b.epoch = epoch
        if self.keep == "last_epoch":
            self._kept = self._current
        else:
            self._kept.extend(self._current)
        self._current = []
        self.inner.end_epoch(epoch)

    def commit(self, epoch: int) -> None:
        """Passed through to the inner link."""
        self.inner.commit(epoch)

    def restart(self) -> None:
        """Restart the inner link and count a new pass (the refit) for what follows."""
        if not isinstance(self.inner, RestartableLink):
            raise TypeError(f"{type(self.inner).__name__} cannot restart")
        self._pass += 1
        self._current, self._open = [], None
        self.inner.restart()

    def training(self) -> _Batch:
        """Every kept training row: handles, embeddings, gradients, epoch and pass."""
        d = self.embedding_dim
        kept = self._kept
        return _Batch(
            handles=np.concatenate([b.handles for b in kept]) if kept else np.zeros(0, np.int64),
            embeddings=np.concatenate([b.embeddings for b in kept])
            if kept else np.zeros((0, d), np.float32),
            gradients=np.concatenate([b.gradients for b in kept if b.gradients is not None])
            if kept else np.zeros((0, d), np.float32),
            epoch=-1,
        )

    def epochs_and_passes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per kept training row (in :meth:`training` order): its epoch and pass."""
        ep = [np.full(b.handles.size, b.epoch) for b in self._kept]
        ps = [np.full(b.handles.size, b.pass_) for b in self._kept]
        return (np.concatenate(ep) if ep else np.zeros(0, np.int64),
                np.concatenate(ps) if ps else np.zeros(0, np.int64))


# --------------------------------------------------------------------- collection
@dataclass
class Recording:
    """What crossed between the platform and one bank, indexed by platform table row."""

    bank: int
    # training batches kept (the final epoch by default), one row per aligned customer
    train_rows: np.ndarray  # [m] int64 platform row
    train_labels: np.ndarray  # [m] 0/1, the bank's label of that customer
    train_embeddings: np.ndarray  # [m, d] float32 received by the bank
    train_gradients: np.ndarray  # [m, d] float32 received by the platform
    train_epoch: np.ndarray  # [m] epoch (0-based, within its pass)
    train_pass: np.ndarray  # [m] 0, or 1 for the refit pass
    # scoring with the final model: every aligned customer of the bank, train and test
    scoring_rows: np.ndarray  # [s] int64 platform row
    scoring_embeddings: np.ndarray  # [s, d] float32
    test_labels: np.ndarray  # [t] the bank's whole test set
    test_pd: np.ndarray  # [t]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def test_auc(self) -> float:
        """The bank's test AUC with the model that was recorded."""
        return metrics.auc(self.test_labels, self.test_pd)


def collect(
    scenario: Scenario | Path | str,
    *,
    bank: int = 0,
    arch: SplitArchitecture | None = None,
    cfg: TrainConfig | None = None,
    pre_cfg: PreprocessConfig | None = None,
    embedding_noise: EmbeddingNoise | None = None,
    keep: Literal["last_epoch", "all"] = "last_epoch",
    platform: PlatformSide | None = None,
) -> Recording:
    """Train bank ``bank``'s split model with a fresh platform bottom (as
    :func:`fedscore.research.baselines.federated_reference` does) and record what crossed.

    ``embedding_noise`` is applied to every embedding the platform releases (training
    and scoring) before the bank sees it. After training the bank scores all its own
    customers and its test set with the final model; those scoring embeddings are
    recorded too. ``platform`` reuses a fitted :class:`PlatformSide` across banks.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(Path(scenario))
    if not 0 <= bank < len(sc.banks):
        raise IndexError(f"collect: bank {bank} not in the scenario's {len(sc.banks)} banks")
    arch = arch or SplitArchitecture()
    cfg = cfg or TrainConfig()
    plat = platform or PlatformSide(sc.platform, pre_cfg)
    train_t, test_t = sc.banks[bank]
    labels = [_labels(train_t), _labels(test_t)]

    # handles as after PSI: positions in the list of aligned platform rows
    rows = [align(plat.ids, t.ids) for t in (train_t, test_t)]
    all_rows = np.concatenate(rows)
    aligned = all_rows[all_rows >= 0]
    handle_of_row = np.full(len(plat.ids), -1, np.int64)
    handle_of_row[aligned] = np.arange(aligned.size)
    handles = [np.where(r >= 0, handle_of_row[np.maximum(r, 0)], -1) for r in rows]
    label_of_handle = np.full(aligned.size, -1, np.int64)
    label_of_handle[handles[0][handles[0] >= 0]] = labels[0][handles[0] >= 0]

    bank_pre = Preprocessor.fit(train_t, pre_cfg)
    bank_cfg = arch.bank_bottom(bank_pre.n_numeric, bank_pre.cat_cardinalities)
    plat_cfg = arch.platform_bottom(plat.pre.n_numeric, plat.pre.cat_cardinalities)
    local = LocalPlatformLink(PlatformBottom(plat.encoded, plat_cfg, cfg), aligned)
    inner: PlatformLink = local if embedding_noise is None else NoisyLink(local, embedding_noise)
    link = RecordingLink(inner, keep)
    data = [BankData(bank_pre.transform(t), y, h)
            for t, y, h in zip((train_t, test_t), labels, handles, strict=True)]

    trained = train_bank_model(data[0], link, bank_cfg, arch.top(), cfg)
    link.record_scoring = True
    predict(trained.model, data[0], link, cfg.eval_batch_size)
    test_pd = predict(trained.model, data[1], link, cfg.eval_batch_size)
    link.record_scoring = False

    tr = link.training()
    epoch, pass_ = link.epochs_and_passes()
    d = link.embedding_dim
    sc_handles = (np.concatenate([b.handles for b in link.scoring]) if link.scoring
                  else np.zeros(0, np.int64))
    sc_emb = (np.concatenate([b.embeddings for b in link.scoring]) if link.scoring
              else np.zeros((0, d), np.float32))
    assert tr.gradients is not None
    return Recording(
        bank=bank,
        train_rows=aligned[tr.handles],
        train_labels=label_of_handle[tr.handles],
        train_embeddings=tr.embeddings,
        train_gradients=tr.gradients,
        train_epoch=epoch,
        train_pass=pass_,
        scoring_rows=aligned[sc_handles],
        scoring_embeddings=sc_emb,
        test_labels=labels[1],
        test_pd=test_pd,
        info={"best_epoch": trained.best_epoch, "epochs_run": trained.epochs_run,
              "refit_epochs": trained.refit_epochs, "train_s": round(trained.wall_s, 2),
              "n_train": len(train_t), "n_aligned": int(aligned.size)},
    )


def _labels(t: PartyTable) -> np.ndarray:
    if t.labels is None:
        raise ValueError("bank table without labels")
    return np.asarray(t.labels, dtype=np.int64)


def platform_numeric(platform_table: PartyTable, rows: np.ndarray) -> pd.DataFrame:
    """The platform's raw numeric features (schema order) of table rows ``rows``."""
    names = list(platform_table.schema.numeric)
    frame = platform_table.features[names].iloc[np.asarray(rows, dtype=np.int64)]
    return frame.apply(pd.to_numeric, errors="coerce").reset_index(drop=True)


# ------------------------------------------------------------------------ measure
def measure(
    scenario: Scenario | Path | str,
    *,
    seed: int = 0,
    embedding_noise: EmbeddingNoise | None = None,
    banks: Sequence[int] | None = None,
    arch: SplitArchitecture | None = None,
    cfg: TrainConfig | None = None,
    pre_cfg: PreprocessConfig | None = None,
    attacker_share: float = 0.3,
) -> dict[str, Any]:
    """Train each bank's split model (all banks unless ``banks``), record, attack.

    Per bank: embedding inversion on the final epoch's training embeddings and on the
    final model's scoring embeddings (each aligned customer once), label leakage on
    the final epoch's gradients, and the bank's test AUC. Top level, the worst case
    over banks and embedding sources: ``inversion_r2`` (max per platform numeric
    feature), ``inversion_mean_r2`` (its mean), ``label_norm_auc`` and
    ``label_cosine_auc`` (max); ``test_auc`` is over the chosen banks' test sets
    pooled, so the AUC cost of ``embedding_noise`` can be read next to its benefit.
    ``cfg`` defaults to ``TrainConfig(seed=seed)``; ``seed`` also splits the attacker's
    slice.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(Path(scenario))
    cfg = cfg or TrainConfig(seed=seed)
    chosen = list(range(len(sc.banks))) if banks is None else list(banks)
    if not chosen:
        raise ValueError("measure: no banks chosen")
    plat = PlatformSide(sc.platform, pre_cfg)
    names = list(sc.platform.schema.numeric)
    per_bank: list[dict[str, Any]] = []
    ys, ps = [], []
    for k in chosen:
        rec = collect(sc, bank=k, arch=arch, cfg=cfg, pre_cfg=pre_cfg,
                      embedding_noise=embedding_noise, platform=plat)
        inv = {
            source: embedding_inversion(
                emb, platform_numeric(sc.platform, rows), names,
                attacker_share=attacker_share, seed=seed,
            )
            for source, emb, rows in (
                ("training", rec.train_embeddings, rec.train_rows),
                ("scoring", rec.scoring_embeddings, rec.scoring_rows),
            )
        }
        label = label_leakage(rec.train_gradients, rec.train_labels)
        ys.append(rec.test_labels)
        ps.append(rec.test_pd)
        per_bank.append({
            "bank": k,
            "test_auc": rec.test_auc,
            "n_training_embeddings": int(rec.train_rows.size),
            "n_scoring_embeddings": int(rec.scoring_rows.size),
            "inversion_r2_training": inv["training"],
            "inversion_r2_scoring": inv["scoring"],
            "label": label,
            **rec.info,
        })
    worst = {
        n: float(np.nanmax([b[f"inversion_r2_{s}"][n] for b in per_bank
                            for s in ("training", "scoring")]))
        for n in names
    }
    return {
        "inversion_r2": worst,
        "inversion_mean_r2": float(np.mean(list(worst.values()))) if worst else float("nan"),
        "label_norm_auc": max(b["label"]["norm_auc"] for b in per_bank),
        "label_cosine_auc": max(b["label"]["cosine_auc"] for b in per_bank),
        "test_auc": metrics.auc(np.concatenate(ys), np.concatenate(ps)),
        "embedding_noise": embedding_noise is not None,
        "per_bank": per_bank,
    }
