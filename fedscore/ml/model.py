"""The split model in torch: both bottoms and the top, for training.

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

The configs (sizes, the weights' layout) are plain data in :mod:`fedscore.ml.architecture`;
the bank's half again, in numpy and without torch, for online scoring, is
:class:`fedscore.ml.frozen.FrozenBankModel`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedscore.ml.architecture import BottomConfig, TopConfig, check_arrays


class SeededDropout(nn.Module):
    """Inverted dropout drawing its masks from ``self.generator`` when set."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with a fresh mask applied in training, unchanged in eval mode."""
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
        # The table's values come from their own generator, seeded by ONE draw from the
        # seeded stream: however many category values the schema declares, every later
        # weight (MLP, top model) starts at the same values (issue 17: declaring PAY_6's
        # values moved every bank-side weight, and the gap by 0.005).
        table_seed = int(torch.randint(0, 2**62, (1,)).item())
        # one table for every categorical column; column i owns rows offsets[i]..
        cards = torch.tensor((0, *cfg.cat_cardinalities), dtype=torch.int64)
        self.offsets: torch.Tensor
        self.register_buffer("offsets", torch.cumsum(cards, 0)[:-1].clone(), persistent=False)
        rows = max(int(cards.sum()), 1)
        table = torch.empty(rows, cfg.cat_dim)  # [sum(cards), cat_dim]
        nn.init.normal_(table, std=0.1, generator=torch.Generator().manual_seed(table_seed))
        self.embedding = nn.Embedding(rows, cfg.cat_dim, _weight=table)  # draws nothing
        d_in = cfg.n_numeric + cfg.cat_dim * len(cfg.cat_cardinalities)
        self.input_dropout = SeededDropout(cfg.dropout / 2)
        self.mlp, d = _mlp(d_in, cfg.hidden, cfg.dropout)
        self.out = nn.Linear(d, cfg.out_dim)
        self.skip = nn.Linear(d_in, cfg.out_dim, bias=False) if cfg.skips else None

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """The party's embedding [B, out_dim] of its encoded rows."""
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
        self.skip = nn.Linear(d_in, 1, bias=False) if cfg.skips else None

    def forward(
        self, bank_emb: torch.Tensor, platform_emb: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """[B] logits of default; rows not ``present`` use the learned default embedding."""
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
        """[B] logits of default: the bank's bottom, then the top model."""
        return self.top(self.bottom(numeric, categorical), platform_emb, present)  # [B]


def to_arrays(model: nn.Module) -> list[np.ndarray]:
    """The model's weights in ``state_dict`` order: what a bank sends to aggregation."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def load_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load weights in ``state_dict`` order; a mismatch names the tensor and both shapes."""
    state = model.state_dict()
    check_arrays([(name, tuple(ref.shape)) for name, ref in state.items()], arrays)
    new: dict[str, torch.Tensor] = {}
    for (name, ref), arr in zip(state.items(), arrays, strict=True):
        new[name] = torch.as_tensor(np.asarray(arr), dtype=ref.dtype)
    model.load_state_dict(new)
