"""The settings of one federated run, read from Flower's run config (``flwr run
--run-config``, defaults in ``[tool.flwr.app.config]``) by the coordinator and the banks.

Keys are kebab-case as Flower's are; every bad value is named with its key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from fedscore.errors import FedscoreError

if TYPE_CHECKING:  # torch stays unimported in the light SuperNode message processes
    from fedscore.crypto.dp import DpSettings
    from fedscore.ml.training import TrainConfig


SECAGG_CLIP = 8.0
"""SecAgg+ clipping range: a bank's weights times rows / max-weight must stay inside it."""


# Keys of the coordinator's per-message instructions besides the run settings.
TASK_KEY = "task"
STATISTICS_TASK = "preprocessing-statistics"  # round 0: send the preprocessing sums
# (the pooled statistics' own keys, with every later message: fedscore.federation.statistics)


class ConfigError(FedscoreError, ValueError):
    """A run or node config value is missing or of the wrong kind; names the key."""

    code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class RunSettings:
    """Every setting of one federated run, validated; field names are the run config keys."""

    run_id: str = "fedscore-run"  # the platform keeps its models per run id; resume key
    num_rounds: int = 5
    local_epochs: int = 3
    proximal_mu: float = 0.0  # > 0: FedProx
    seed: int = 0
    batch_size: int = 128
    lr: float = 2e-3
    min_banks: int = 2  # SecAgg+ needs at least two banks per round
    max_weight: float = 100_000.0  # >= the largest bank's training rows (SecAgg+ scaling)
    state_dir: str = "fedscore-state"  # the coordinator's checkpoints and releases
    coordinator_kit: str = ""  # the coordinator's startup kit (mTLS to the platform)
    platform_address: str = ""  # host:port of the platform node
    # Differential privacy (fedscore.crypto.dp, docs/security.md): noise multiplier z (0 = off)
    # and L2 clip norm C of the platform's embeddings and of the banks' model updates.
    dp_embedding_noise: float = 0.0
    dp_embedding_clip: float = 1.0
    dp_update_noise: float = 0.0
    dp_update_clip: float = 1.0
    dp_delta: float = 1e-5  # the δ every reported ε is at

    def __post_init__(self) -> None:
        checks = {
            "num-rounds": self.num_rounds >= 1,
            "local-epochs": self.local_epochs >= 1,
            "proximal-mu": self.proximal_mu >= 0,
            "seed": 0 <= self.seed < 2**62,
            "batch-size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "min-banks": self.min_banks >= 2,
            "max-weight": self.max_weight > 0,
            "run-id": bool(self.run_id),
            "dp-embedding-noise": 0 <= self.dp_embedding_noise < math.inf,
            "dp-embedding-clip": 0 < self.dp_embedding_clip < math.inf,
            "dp-update-noise": 0 <= self.dp_update_noise < math.inf,
            "dp-update-clip": 0 < self.dp_update_clip < math.inf,
            "dp-delta": 0 < self.dp_delta < 1,
        }
        for key, ok in checks.items():
            if not ok:
                value = getattr(self, key.replace("-", "_"))
                raise ConfigError(f"run config {key} = {value!r} is out of range "
                                  f"({_RANGES[key]})")

    @classmethod
    def from_run_config(cls, config: Mapping[str, object]) -> RunSettings:
        """Known keys override the defaults; unknown keys are refused by name."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in fields or "_" in key:
                raise ConfigError(
                    f"run config: unknown key {key!r}; expected one of "
                    f"{', '.join(sorted(k.replace('_', '-') for k in fields))}"
                )
            default = fields[name].default
            values[name] = _coerce(key, value, type(default))
        return cls(**values)  # type: ignore[arg-type]

    def to_run_config(self) -> dict[str, int | float | str]:
        """The settings as a Flower run config (kebab-case keys), e.g. for ``--run-config``."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def train_config(self) -> TrainConfig:
        """The banks' local :class:`TrainConfig` for one round (no early stopping, no refit)."""
        from fedscore.ml.training import TrainConfig

        return TrainConfig(seed=self.seed, batch_size=self.batch_size, lr=self.lr,
                           epochs=self.local_epochs, refit=False)

    def embedding_dp(self) -> DpSettings:
        """The platform embeddings' Gaussian mechanism (noise 0: off)."""
        from fedscore.crypto.dp import DpSettings

        return DpSettings(self.dp_embedding_noise, self.dp_embedding_clip, self.dp_delta)

    def update_dp(self) -> DpSettings:
        """The bank updates' Gaussian mechanism (noise 0: off)."""
        from fedscore.crypto.dp import DpSettings

        return DpSettings(self.dp_update_noise, self.dp_update_clip, self.dp_delta)

    @property
    def run_dir(self) -> Path:
        """The coordinator's folder for this run: ``state_dir/run_id``."""
        return Path(self.state_dir) / self.run_id


_RANGES = {
    "num-rounds": ">= 1", "local-epochs": ">= 1", "proximal-mu": ">= 0",
    "seed": "0 <= seed < 2**62", "batch-size": ">= 1", "lr": "> 0",
    "min-banks": ">= 2, SecAgg+ needs two banks", "max-weight": "> 0", "run-id": "non-empty",
    "dp-embedding-noise": "finite, >= 0; 0 = off", "dp-embedding-clip": "finite, > 0",
    "dp-update-noise": "finite, >= 0; 0 = off", "dp-update-clip": "finite, > 0",
    "dp-delta": "0 < delta < 1",
}


def _coerce(key: str, value: object, kind: type) -> object:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"run config {key} = {value!r}; expected {kind.__name__}")


def require(config: Mapping[str, object], key: str, where: str) -> str:
    """A non-empty string value of a node config; names the key and the config when not."""
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} = {value!r}; expected a non-empty string "
                          f"(set it with --node-config '{key}=\"...\"')")
    return value
