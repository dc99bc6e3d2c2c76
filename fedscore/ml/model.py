"""The split model, whole, in one file.

    platform:  BottomModel(platform numeric, platform categorical) -> platform_emb [B, dp]
                                    | (only this crosses the boundary, per aligned customer)
    bank:      BottomModel(bank numeric, bank categorical)         -> bank_emb     [B, db]
               TopModel(bank_emb, platform_emb, present)           -> logits       [B]

Customers the platform does not know (``present`` False) get a learned default
embedding in place of ``platform_emb`` and a 0 indicator, so the top model can tell
"no platform data" from "platform data that happens to look average".

Dropout draws from a generator owned by the model (``seed_dropout``), not torch's
global one, so the platform's and the bank's random streams stay the same whether
the two halves live in one process (centralized baseline, tests) or two (gRPC).

``FrozenBankModel`` is the bank's half again, in numpy, for online scoring only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn


@dataclass(frozen=True)
class BottomConfig:
    n_numeric: int
    cat_cardinalities: tuple[int, ...]  # per categorical column, code 0 included
    cat_dim: int  # embedding width per categorical column
    hidden: tuple[int, ...]
    out_dim: int
    dropout: float
    linear_skip: bool = False  # a linear path from inputs to output beside the MLP


@dataclass(frozen=True)
class TopConfig:
    bank_dim: int
    platform_dim: int
    hidden: tuple[int, ...]
    dropout: float
    linear_skip: bool = False


class SeededDropout(nn.Module):
    """Inverted dropout drawing its masks from ``self.generator`` when set."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.rand(x.shape, generator=self.generator, dtype=x.dtype) < keep
        return x * mask / keep


def _mlp(d_in: int, hidden: tuple[int, ...], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.GELU(), SeededDropout(dropout)]
        d_in = h
    return nn.Sequential(*layers), d_in


def _skips(cfg: BottomConfig | TopConfig) -> bool:
    return cfg.linear_skip and len(cfg.hidden) > 0


class _Seedable(nn.Module):
    def seed_dropout(self, seed: int) -> None:
        """Give every dropout layer of this module one private generator."""
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, SeededDropout):
                m.generator = g


class BottomModel(_Seedable):
    """One party's features -> an embedding."""

    def __init__(self, cfg: BottomConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # one table for every categorical column; column i owns rows offsets[i]..
        cards = torch.tensor((0, *cfg.cat_cardinalities), dtype=torch.int64)
        self.offsets: torch.Tensor
        self.register_buffer("offsets", torch.cumsum(cards, 0)[:-1].clone(), persistent=False)
        self.embedding = nn.Embedding(max(int(cards.sum()), 1), cfg.cat_dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        d_in = cfg.n_numeric + cfg.cat_dim * len(cfg.cat_cardinalities)
        self.input_dropout = SeededDropout(cfg.dropout / 2)
        self.mlp, d = _mlp(d_in, cfg.hidden, cfg.dropout)
        self.out = nn.Linear(d, cfg.out_dim)
        self.skip = nn.Linear(d_in, cfg.out_dim, bias=False) if _skips(cfg) else None

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        # numeric [B, n_num] float32, categorical [B, n_cat] int64 (0 = unknown)
        emb = self.embedding(categorical + self.offsets)  # [B, n_cat, cat_dim]
        x = torch.cat([numeric, emb.flatten(1)], dim=1)  # [B, n_num + n_cat * cat_dim]
        x = self.input_dropout(x)
        out = self.out(self.mlp(x))  # [B, out_dim]
        return out if self.skip is None else out + self.skip(x)


class TopModel(_Seedable):
    """Bank embedding + platform embedding (or the learned default) -> logit of default."""

    def __init__(self, cfg: TopConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.default_platform = nn.Parameter(torch.zeros(cfg.platform_dim))  # [dp]
        d_in = cfg.bank_dim + cfg.platform_dim + 1
        self.mlp, d = _mlp(d_in, cfg.hidden, cfg.dropout)
        self.out = nn.Linear(d, 1)
        self.skip = nn.Linear(d_in, 1, bias=False) if _skips(cfg) else None

    def forward(
        self, bank_emb: torch.Tensor, platform_emb: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        # bank_emb [B, db], platform_emb [B, dp] (rows where absent are ignored), present [B]
        p = present.unsqueeze(1)  # [B, 1] bool
        plat = torch.where(p, platform_emb, self.default_platform.expand_as(platform_emb))
        x = torch.cat([bank_emb, plat, p.to(bank_emb.dtype)], dim=1)  # [B, db + dp + 1]
        out = self.out(self.mlp(x))  # [B, 1]
        if self.skip is not None:
            out = out + self.skip(x)
        return out.squeeze(1)  # [B] logits


class BankModel(_Seedable):
    """What the bank holds: its bottom model and the top model."""

    def __init__(self, bottom: BottomConfig, top: TopConfig) -> None:
        super().__init__()
        if bottom.out_dim != top.bank_dim:
            raise ValueError(
                f"bank bottom out_dim {bottom.out_dim} != top bank_dim {top.bank_dim}"
            )
        self.bottom = BottomModel(bottom)
        self.top = TopModel(top)

    def forward(
        self,
        numeric: torch.Tensor,  # [B, n_num]
        categorical: torch.Tensor,  # [B, n_cat]
        platform_emb: torch.Tensor,  # [B, dp]
        present: torch.Tensor,  # [B] bool
    ) -> torch.Tensor:
        return self.top(self.bottom(numeric, categorical), platform_emb, present)  # [B]


Dense = tuple[NDArray[np.float32], NDArray[np.float32] | None]
"""A linear layer for numpy: (weight [in, out], bias [out] or None)."""


def _dense(layer: nn.Linear) -> Dense:
    bias = layer.bias.detach().numpy().copy() if layer.bias is not None else None
    return layer.weight.detach().numpy().T.copy(), bias


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


def _layers(seq: nn.Sequential) -> list[Dense]:
    # dropout is the identity at inference, GELU follows every Linear (see _mlp)
    return [_dense(m) for m in seq if isinstance(m, nn.Linear)]


class FrozenBankModel:
    """:class:`BankModel` in eval mode, in numpy, for online scoring: one applicant's
    explanation is a forward pass over a few dozen rows, where torch's per-op dispatch
    costs more than the arithmetic (142 against 47 µs for 39 rows). For 2,000-row
    ScoreBatch chunks it is the slower one (1.9 against 0.5 ms, mostly erf), which
    ScoreBatch's 200,000 rows/s absorbs; one path keeps served and batch PDs alike. The
    same float32 arithmetic, so the same logits to rounding; built once per release,
    read-only after, safe to share between threads."""

    def __init__(self, model: BankModel) -> None:
        bottom, top = model.bottom, model.top
        self.n_categorical = len(bottom.cfg.cat_cardinalities)
        self.cat_dim = bottom.cfg.cat_dim
        self._table = bottom.embedding.weight.detach().numpy().copy()  # [codes, cat_dim]
        self._offsets = bottom.offsets.numpy().copy()  # [n_cat]
        self._bottom_mlp = _layers(bottom.mlp)
        self._bottom_out = _dense(bottom.out)
        self._bottom_skip = _dense(bottom.skip) if bottom.skip is not None else None
        self._default_platform = top.default_platform.detach().numpy().copy()  # [dp]
        self._top_mlp = _layers(top.mlp)
        self._top_out = _dense(top.out)
        self._top_skip = _dense(top.skip) if top.skip is not None else None

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
        return BottomConfig(
            n_numeric, tuple(cat_cardinalities), self.cat_dim, self.platform_hidden,
            self.platform_out, self.dropout, self.linear_skip,
        )

    def bank_bottom(self, n_numeric: int, cat_cardinalities: tuple[int, ...]) -> BottomConfig:
        return BottomConfig(
            n_numeric, tuple(cat_cardinalities), self.cat_dim, self.bank_hidden,
            self.bank_out, self.dropout, self.linear_skip,
        )

    def top(self) -> TopConfig:
        return TopConfig(
            self.bank_out, self.platform_out, self.top_hidden, self.dropout, self.linear_skip
        )


def to_arrays(model: nn.Module) -> list[np.ndarray]:
    """The model's weights in ``state_dict`` order: what a bank sends to aggregation."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def load_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load weights in ``state_dict`` order; a mismatch names the tensor and both shapes."""
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ValueError(
            f"got {len(arrays)} weight arrays, this model has {len(state)}: the banks' "
            "schemas or architectures differ"
        )
    new: dict[str, torch.Tensor] = {}
    for (name, ref), arr in zip(state.items(), arrays, strict=True):
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(
                f"weights {name}: got shape {tuple(arr.shape)}, this model has "
                f"{tuple(ref.shape)}: the banks' schemas or architectures differ"
            )
        new[name] = torch.as_tensor(np.asarray(arr), dtype=ref.dtype)
    model.load_state_dict(new)
