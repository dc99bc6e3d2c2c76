"""The banks' pooled preprocessing statistics, as plain data.

Round 0 of a run sums every bank's column moments under SecAgg+ (the Flower workflow
is the coordinator's, :mod:`coordinator.statistics`); the sum travels to the banks with
every round's instructions and into each release, where a scoring server rebuilds the
transforms the weights were trained on. This module holds only the value and its two
encodings, so that reading a release needs neither Flower nor the coordinator (nor the
run settings, whose training config is torch's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LAYOUT_KEY", "SUMS_KEY", "PooledStatistics"]

LAYOUT_KEY = "preprocessing-layout"
"""The coordinator's instructions carry the pooled statistics under this key and
:data:`SUMS_KEY`, with every message after round 0."""
SUMS_KEY = "preprocessing-sums"


@dataclass(frozen=True)
class PooledStatistics:
    """The summed moments of all banks' training rows, and what they describe."""

    layout: str  # SHA-256 hex of the banks' (common) column layout
    sums: np.ndarray  # float64 [columns * 7], row-major as Moments.sums
    banks: int
    contributors: tuple[str, ...] = ()  # the banks summed (a lost bank is not among them)

    def to_config(self) -> dict[str, str | bytes]:
        """The entries of a round's instructions that carry these statistics."""
        return {LAYOUT_KEY: self.layout, SUMS_KEY: self.sums.astype("<f8").tobytes()}

    def to_json(self) -> dict[str, Any]:
        """As ``preprocessing.json`` holds them (a run folder's, a release's)."""
        return {"layout": self.layout, "banks": self.banks,
                "contributors": list(self.contributors),
                "sums": [float(v) for v in self.sums]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PooledStatistics:
        """Read back what :meth:`to_json` wrote."""
        return cls(str(d["layout"]), np.asarray(d["sums"], np.float64), int(d["banks"]),
                   tuple(str(b) for b in d.get("contributors", ())))
