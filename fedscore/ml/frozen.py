"""The bank's half of the split model in numpy, for online scoring only.

Built from a release's weight arrays and the configs they were trained under, without
torch: the scoring server never imports it (see ``docs/scoring.md`` for why numpy, and
what it costs). The arithmetic is :class:`fedscore.ml.model.BankModel`'s in eval mode,
in the same float32, so the logits agree to rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from fedscore.ml.architecture import BottomConfig, TopConfig, bank_layout, check_arrays

Dense = tuple[NDArray[np.float32], NDArray[np.float32] | None]
"""A linear layer for numpy: (weight [in, out], bias [out] or None)."""


def _dense(weights: Mapping[str, NDArray[np.float32]], name: str, bias: bool = True) -> Dense:
    # torch keeps a Linear's weight as [out, in]: transposed once here, not per call
    b = weights[f"{name}.bias"].copy() if bias else None
    return weights[f"{name}.weight"].T.copy(), b


def _apply(layer: Dense, x: NDArray[np.float32]) -> NDArray[np.float32]:
    w, b = layer
    y = x @ w
    return y if b is None else y + b


def _gelu(x: NDArray[np.float32]) -> NDArray[np.float32]:
    # scipy imported here, not with the module: it would cost every importer 0.2 s
    from scipy.special import erf

    # nn.GELU() is the exact one: x * Phi(x)
    out: NDArray[np.float32] = x * (0.5 * (1.0 + erf(x * np.float32(np.sqrt(0.5)))))
    return out


def _layers(weights: Mapping[str, NDArray[np.float32]], name: str, hidden: tuple[int, ...]
            ) -> list[Dense]:
    # dropout is the identity at inference, GELU follows every Linear (Linears at 0, 3, ...)
    return [_dense(weights, f"{name}.{3 * i}") for i in range(len(hidden))]


class FrozenBankModel:
    """:class:`fedscore.ml.model.BankModel` in eval mode, in numpy, for online scoring.

    ``arrays`` are the model's weights in ``state_dict`` order (a release's, or
    :func:`fedscore.ml.model.to_arrays` of a torch model); a mismatch with the configs
    names the array and both shapes (ValueError). The same float32 arithmetic, so the
    same logits to rounding; built once per release, read-only after, safe to share
    between threads. Why numpy and not torch: ``docs/scoring.md``.
    """

    def __init__(self, bottom: BottomConfig, top: TopConfig, arrays: Sequence[np.ndarray]
                 ) -> None:
        if bottom.out_dim != top.bank_dim:
            raise ValueError(
                f"bank bottom out_dim {bottom.out_dim} != top bank_dim {top.bank_dim}"
            )
        layout = bank_layout(bottom, top)
        check_arrays(layout, arrays)
        w = {name: np.asarray(a, np.float32) for (name, _), a in zip(layout, arrays, strict=True)}
        self.bottom_config, self.top_config = bottom, top
        self.n_categorical = len(bottom.cat_cardinalities)
        self.cat_dim = bottom.cat_dim
        self._table = w["bottom.embedding.weight"].copy()  # [codes, cat_dim]
        # column i's codes start at row offsets[i] of the one table (BottomModel.offsets)
        self._offsets = np.cumsum((0, *bottom.cat_cardinalities), dtype=np.int64)[:-1]
        self._bottom_mlp = _layers(w, "bottom.mlp", bottom.hidden)
        self._bottom_out = _dense(w, "bottom.out")
        self._bottom_skip = _dense(w, "bottom.skip", bias=False) if bottom.skips else None
        self._default_platform = w["top.default_platform"].copy()  # [dp]
        self._top_mlp = _layers(w, "top.mlp", top.hidden)
        self._top_out = _dense(w, "top.out")
        self._top_skip = _dense(w, "top.skip", bias=False) if top.skips else None

    @staticmethod
    def _head(x: NDArray[np.float32], mlp: list[Dense], out: Dense, skip: Dense | None
              ) -> NDArray[np.float32]:
        h = x
        for layer in mlp:
            h = _gelu(_apply(layer, h))
        y = _apply(out, h)
        return y if skip is None else y + _apply(skip, x)

    def __call__(self, numeric: NDArray[np.float32], categorical: NDArray[np.int64],
                 platform_emb: NDArray[np.float32], present: NDArray[np.bool_]
                 ) -> NDArray[np.float32]:
        """[B] logits, as ``BankModel.eval()(...)`` gives them."""
        b = len(numeric)
        emb = self._table[categorical + self._offsets]  # [B, n_cat, cat_dim]
        x = np.concatenate([numeric, emb.reshape(b, self.n_categorical * self.cat_dim)],
                           axis=1)  # [B, n_num + n_cat * cat_dim]
        bank = self._head(x, self._bottom_mlp, self._bottom_out, self._bottom_skip)  # [B, db]
        p = present[:, None]  # [B, 1]
        plat = np.where(p, platform_emb, self._default_platform).astype(np.float32)
        x = np.concatenate([bank, plat, p.astype(np.float32)], axis=1)  # [B, db + dp + 1]
        logits: NDArray[np.float32] = self._head(x, self._top_mlp, self._top_out,
                                                 self._top_skip)[:, 0]
        return logits

    def pd(self, numeric: NDArray[np.float32], categorical: NDArray[np.int64],
           platform_emb: NDArray[np.float32], present: NDArray[np.bool_]
           ) -> NDArray[np.float64]:
        """[B] probabilities of default."""
        from scipy.special import expit

        out: NDArray[np.float64] = expit(self(numeric, categorical, platform_emb,
                                              present)).astype(np.float64)
        return out
