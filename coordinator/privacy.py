"""The coordinator's privacy accounting: ``privacy.jsonl`` in the run folder.

One JSON object per line, per round and mechanism, appended and fsynced before the
round's checkpoint (a crash counts a release twice rather than never)::

    {"round": 3, "mechanism": "bank-updates", "noise_multiplier": 1.0, "clip": 0.5,
     "delta": 1e-05, "releases": 3, "epsilon": 4.2}

``releases`` are composed so far for the worst-off bank or customer, ``epsilon`` is the
cumulative ε at ``delta`` through that round (:mod:`fedscore.crypto.dp`). A mechanism that is
off writes no line at all. A resumed run reads the file and keeps counting from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from fedscore.crypto.dp import DpSettings, embedding_epsilon, gaussian_epsilon

FILE = "privacy.jsonl"
Mechanism = Literal["bank-updates", "platform-embeddings"]
BANK_UPDATES: Mechanism = "bank-updates"
PLATFORM_EMBEDDINGS: Mechanism = "platform-embeddings"


class PrivacyLog:
    """Appends the accountant's line per round and mechanism; reads the budget back."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / FILE

    def lines(self) -> list[dict[str, Any]]:
        """Every line written so far, oldest first; [] before the first."""
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]

    def releases(self, mechanism: Mechanism) -> int:
        """Releases composed so far under ``mechanism`` (0 before its first line)."""
        mine = [x for x in self.lines() if x["mechanism"] == mechanism]
        return int(mine[-1]["releases"]) if mine else 0

    def record(self, round_: int, mechanism: Mechanism, settings: DpSettings,
               new_releases: int) -> dict[str, Any]:
        """Compose ``new_releases`` more releases and append the cumulative line."""
        releases = self.releases(mechanism) + new_releases
        if mechanism == PLATFORM_EMBEDDINGS:
            epsilon = embedding_epsilon(settings, releases)
        else:
            epsilon = gaussian_epsilon(settings.noise_multiplier, settings.delta, releases)
        line = {"round": round_, "mechanism": mechanism,
                "noise_multiplier": settings.noise_multiplier, "clip": settings.clip,
                "delta": settings.delta, "releases": releases, "epsilon": epsilon}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return line

    def budget(self) -> dict[str, dict[str, Any]]:
        """The last line of each mechanism: the run's final (ε, δ); {} when DP was off."""
        return {x["mechanism"]: x for x in self.lines()}
