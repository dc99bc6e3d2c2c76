"""Model-quality metrics used by training (early stopping) and the benchmarks."""

from __future__ import annotations

import numpy as np


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels have {y.size} rows but scores have {p.size}")
    if y.size == 0:
        raise ValueError("metrics need at least one row")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(p).all():
        raise ValueError("scores must be finite")
    return y.astype(np.int64), p


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC; both classes must be present."""
    from sklearn.metrics import roc_auc_score  # lazily: 1.3 s of every bank message process

    y, p = _check(y, p)
    if y.min() == y.max():
        raise ValueError("AUC needs both classes among the labels")
    return float(roc_auc_score(y, p))


def ks(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic: max gap between the score CDFs of bads and goods."""
    y, p = _check(y, p)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("KS needs both classes among the labels")
    order = np.argsort(p, kind="mergesort")
    ps, ys = p[order], y[order]
    cum_pos = np.cumsum(ys) / n_pos
    cum_neg = np.cumsum(1 - ys) / n_neg
    # evaluate only at the last row of each run of tied scores
    last = np.r_[ps[1:] != ps[:-1], True]
    return float(np.max(np.abs(cum_pos[last] - cum_neg[last])))


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``p``, clipped to [eps, 1 - eps]."""
    y, p = _check(y, p)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("log loss needs probabilities in [0, 1]")
    q = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def roc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every bin edge, from per-class score histograms over the same bins.

    This is how the coordinator draws the pooled ROC and KS of all banks' test sets:
    the banks send counts per score bin, never a row.
    """
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if pos.shape != neg.shape or pos.ndim != 1:
        raise ValueError(f"histograms must be 1-D and alike, got {pos.shape} and {neg.shape}")
    if pos.sum() <= 0 or neg.sum() <= 0:
        raise ValueError("ROC needs both classes among the counts")
    # thresholds from the top bin down: predicted positive = score in a bin >= threshold
    tpr = np.r_[0.0, np.cumsum(pos[::-1]) / pos.sum()]
    fpr = np.r_[0.0, np.cumsum(neg[::-1]) / neg.sum()]
    return fpr, tpr


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC with scores in one bin counted as ties (half), i.e. the trapezoid under the ROC."""
    fpr, tpr = roc_from_histograms(pos, neg)
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))


def ks_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """KS from per-class score histograms: the largest gap between TPR and FPR over bin edges."""
    fpr, tpr = roc_from_histograms(pos, neg)
    return float(np.max(np.abs(tpr - fpr)))
