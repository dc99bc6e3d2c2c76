"""Differential privacy: the Gaussian mechanism's settings, the mechanism, the accountant.

Two mechanisms run in a federated run (see ``docs/security.md``, "Differential privacy"):

* platform embeddings: every embedding row the platform sends to a bank is clipped to
  L2 norm ``clip`` and gets N(0, (z·clip)²) noise per coordinate (:func:`gaussian_mechanism`);
  accounted per customer, replace-one adjacency (the customer's features change, PSI has
  already told the bank who is aligned), so the L2 sensitivity is 2·clip and the
  accountant sees noise multiplier z / 2 (:func:`embedding_epsilon`);
* bank updates: each bank's model update is clipped to ``clip`` (Flower's
  ``fixedclipping_mod``) and the coordinator adds N(0, (z·clip / n)²) to the unweighted
  mean of n banks (Flower's calibration); accounted per bank, add/remove-one adjacency,
  noise multiplier z (:func:`gaussian_epsilon`).

The accounting is Google's ``dp-accounting`` RDP accountant, not our own arithmetic.
This module stays light (no torch, no scipy) until a mechanism or an epsilon is asked for:
the run settings import it in every SuperNode message process.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    EmbeddingNoise = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "DpSettings",
    "ReleaseCounter",
    "embedding_epsilon",
    "gaussian_epsilon",
    "gaussian_mechanism",
]


@dataclass(frozen=True)
class DpSettings:
    """One Gaussian mechanism: clip norm C, noise multiplier z (0: off), target δ."""

    noise_multiplier: float = 0.0
    clip: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"DP clip must be > 0, got {self.clip!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(
                f"DP noise multiplier must be >= 0 (0 = off), got {self.noise_multiplier!r}"
            )
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"DP delta must be in (0, 1), got {self.delta!r}")

    @property
    def enabled(self) -> bool:
        """Noise is on; with z = 0 nothing is clipped or noised at all."""
        return self.noise_multiplier > 0

    @property
    def std(self) -> float:
        """Per-coordinate noise standard deviation z·C of one release."""
        return self.noise_multiplier * self.clip


# ------------------------------------------------------------------------------ accountant
def gaussian_epsilon(
    noise_multiplier: float, delta: float, releases: int = 1, *, sampling_rate: float = 1.0
) -> float:
    """ε at ``delta`` of ``releases`` compositions of the Gaussian mechanism with noise
    multiplier z (std / L2 sensitivity), each optionally Poisson-subsampled at rate q.

    RDP accountant of ``dp-accounting`` (add/remove-one). 0 releases: 0; z = 0: inf.
    """
    if releases < 0:
        raise ValueError(f"releases must be >= 0, got {releases}")
    if not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"sampling rate must be in (0, 1], got {sampling_rate}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if noise_multiplier < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    if releases == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from dp_accounting import dp_event, rdp

    event: dp_event.DpEvent = dp_event.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_event.PoissonSampledDpEvent(sampling_rate, event)
    accountant = rdp.RdpAccountant()
    accountant.compose(event, releases)
    return float(accountant.get_epsilon(delta))


def embedding_epsilon(settings: DpSettings, releases: int) -> float:
    """ε of one customer whose embedding was released ``releases`` times under ``settings``:
    replace-one adjacency, sensitivity 2C against noise std zC, so multiplier z / 2."""
    return gaussian_epsilon(settings.noise_multiplier / 2.0, settings.delta, releases)


# ------------------------------------------------------------------------------- mechanism
def gaussian_mechanism(clip: float, sigma: float, seed: int | None = None) -> EmbeddingNoise:
    """Clip each row [B, d] to L2 norm ``clip``, add N(0, (sigma·clip)²) to every coordinate.

    Differentiable in the input: the noise is additive, so a gradient w.r.t. the noisy
    output flows back through the clip's scaling (the platform trains through it).
    Noise comes from a private generator seeded with ``seed``, or (None) with 63 bits
    from the OS's CSPRNG, so a bank cannot predict it. ``sigma = 0``: clip only.
    """
    if not (clip > 0 and math.isfinite(clip)) or not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"gaussian_mechanism: need clip > 0 and sigma >= 0, got {clip}, {sigma}")
    import torch

    gen = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
    lock = threading.Lock()  # a generator is not safe to share between threads

    def noise(emb: torch.Tensor) -> torch.Tensor:
        if emb.ndim != 2:
            raise ValueError(f"gaussian_mechanism: expected [B, d] rows, got {tuple(emb.shape)}")
        norms = emb.norm(dim=1, keepdim=True)  # [B, 1]
        clipped = emb * torch.clamp(clip / torch.clamp(norms, min=1e-12), max=1.0)
        if sigma == 0:
            return clipped
        with lock:
            eps = torch.randn(emb.shape, generator=gen, dtype=emb.dtype)
        return clipped + (sigma * clip) * eps

    return noise


class ReleaseCounter:
    """How many times each platform row's embedding was released; thread-safe.

    The accountant needs the worst customer's count (:meth:`max`), which is exact here:
    a customer aligned with two banks is released to both and counted twice.
    """

    def __init__(self) -> None:
        self._counts = np.zeros(0, np.int64)
        self._lock = threading.Lock()

    def record(self, rows: np.ndarray) -> None:
        """Count one release of each of ``rows`` (a row twice in one call: twice)."""
        idx = np.asarray(rows, dtype=np.int64).ravel()
        if idx.size == 0:
            return
        if int(idx.min()) < 0:
            raise ValueError("ReleaseCounter: negative row")
        with self._lock:
            top = int(idx.max()) + 1
            if top > self._counts.size:
                grown = np.zeros(max(top, 2 * self._counts.size), np.int64)
                grown[: self._counts.size] = self._counts
                self._counts = grown
            np.add.at(self._counts, idx, 1)

    def max(self) -> int:
        """The most releases of any one row (0 when none)."""
        with self._lock:
            return int(self._counts.max()) if self._counts.size else 0

    def rows(self) -> int:
        """How many distinct rows were released at least once."""
        with self._lock:
            return int(np.count_nonzero(self._counts))
