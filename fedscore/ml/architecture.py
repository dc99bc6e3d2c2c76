"""The split model's shapes as plain data: its configs, and its weights' names and shapes.

No torch here, so that a process that only scores (the bank's scoring server) can size
and check a release's weights without importing it: :mod:`fedscore.ml.model` builds the
torch modules from these configs, :mod:`fedscore.ml.frozen` the numpy scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Layout = list[tuple[str, tuple[int, ...]]]
"""Name and shape of every weight array, in ``state_dict`` order."""


@dataclass(frozen=True)
class BottomConfig:
    """Sizes of one party's bottom model (its features -> an embedding)."""

    n_numeric: int
    cat_cardinalities: tuple[int, ...]  # per categorical column, code 0 included
    cat_dim: int  # embedding width per categorical column
    hidden: tuple[int, ...]
    out_dim: int
    dropout: float
    linear_skip: bool = False  # a linear path from inputs to output beside the MLP

    @property
    def skips(self) -> bool:
        """Whether the model has the linear path: asked for, and an MLP to go beside."""
        return self.linear_skip and len(self.hidden) > 0


@dataclass(frozen=True)
class TopConfig:
    """Sizes of the top model (bank embedding + platform embedding -> logit)."""

    bank_dim: int
    platform_dim: int
    hidden: tuple[int, ...]
    dropout: float
    linear_skip: bool = False

    @property
    def skips(self) -> bool:
        """Whether the model has the linear path: asked for, and an MLP to go beside."""
        return self.linear_skip and len(self.hidden) > 0


@dataclass(frozen=True)
class SplitArchitecture:
    """Sizes of the whole split model; turned into configs once each party's
    preprocessor (its input widths) is known. Both parties must use the same one."""

    cat_dim: int = 4
    platform_hidden: tuple[int, ...] = (64,)
    platform_out: int = 16
    bank_hidden: tuple[int, ...] = (64,)
    bank_out: int = 16
    top_hidden: tuple[int, ...] = (32,)
    dropout: float = 0.3
    linear_skip: bool = False

    def platform_bottom(self, n_numeric: int, cat_cardinalities: tuple[int, ...]) -> BottomConfig:
        """The platform's bottom model for its preprocessor's input widths."""
        return BottomConfig(
            n_numeric, tuple(cat_cardinalities), self.cat_dim, self.platform_hidden,
            self.platform_out, self.dropout, self.linear_skip,
        )

    def bank_bottom(self, n_numeric: int, cat_cardinalities: tuple[int, ...]) -> BottomConfig:
        """A bank's bottom model for its preprocessor's input widths."""
        return BottomConfig(
            n_numeric, tuple(cat_cardinalities), self.cat_dim, self.bank_hidden,
            self.bank_out, self.dropout, self.linear_skip,
        )

    def top(self) -> TopConfig:
        """The top model, fitting both bottoms' output widths."""
        return TopConfig(
            self.bank_out, self.platform_out, self.top_hidden, self.dropout, self.linear_skip
        )


def _mlp_layout(prefix: str, d_in: int, hidden: tuple[int, ...]) -> tuple[Layout, int]:
    # fedscore.ml.model._mlp: Linear, GELU, dropout per hidden layer (Linears at 0, 3, ...)
    out: Layout = []
    for i, h in enumerate(hidden):
        out += [(f"{prefix}.{3 * i}.weight", (h, d_in)), (f"{prefix}.{3 * i}.bias", (h,))]
        d_in = h
    return out, d_in


def bottom_layout(cfg: BottomConfig, prefix: str = "") -> Layout:
    """What ``BottomModel(cfg).state_dict()`` holds, names under ``prefix``."""
    rows = max(sum(cfg.cat_cardinalities), 1)
    d_in = cfg.n_numeric + cfg.cat_dim * len(cfg.cat_cardinalities)
    mlp, d = _mlp_layout(f"{prefix}mlp", d_in, cfg.hidden)
    out: Layout = [(f"{prefix}embedding.weight", (rows, cfg.cat_dim)), *mlp,
                   (f"{prefix}out.weight", (cfg.out_dim, d)), (f"{prefix}out.bias", (cfg.out_dim,))]
    if cfg.skips:
        out.append((f"{prefix}skip.weight", (cfg.out_dim, d_in)))
    return out


def top_layout(cfg: TopConfig, prefix: str = "") -> Layout:
    """What ``TopModel(cfg).state_dict()`` holds, names under ``prefix``."""
    d_in = cfg.bank_dim + cfg.platform_dim + 1
    mlp, d = _mlp_layout(f"{prefix}mlp", d_in, cfg.hidden)
    out: Layout = [(f"{prefix}default_platform", (cfg.platform_dim,)), *mlp,
                   (f"{prefix}out.weight", (1, d)), (f"{prefix}out.bias", (1,))]
    if cfg.skips:
        out.append((f"{prefix}skip.weight", (1, d_in)))
    return out


def bank_layout(bottom: BottomConfig, top: TopConfig) -> Layout:
    """What ``BankModel(bottom, top).state_dict()`` holds: the arrays of a bank's update
    and of a release, in order."""
    return bottom_layout(bottom, "bottom.") + top_layout(top, "top.")


def check_arrays(layout: Layout, arrays: Sequence[np.ndarray]) -> None:
    """Refuse weights that do not fit ``layout``: a mismatch names the array and both
    shapes (ValueError)."""
    if len(arrays) != len(layout):
        raise ValueError(
            f"got {len(arrays)} weight arrays, this model has {len(layout)}: the banks' "
            "schemas or architectures differ"
        )
    for (name, shape), arr in zip(layout, arrays, strict=True):
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(
                f"weights {name}: got shape {tuple(arr.shape)}, this model has "
                f"{tuple(shape)}: the banks' schemas or architectures differ"
            )
