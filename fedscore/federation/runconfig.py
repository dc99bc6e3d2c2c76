"""The settings of one federated run, read from Flower's run config (``flwr run
--run-config``, defaults in ``[tool.flwr.app.config]``) by the coordinator and the banks.

Keys are kebab-case as Flower's are; every bad value is named with its key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    # The fewest banks whose updates must reach a round's sum (and round 0's statistics,
    # and a round's evaluation): a round goes on without lost banks while at least this
    # many remain, else the run stops naming the missing ones. SecAgg+ needs two, and
    # its reconstruction threshold (2/3 of a round's banks) bounds how many may drop.
    min_banks: int = 2
    reply_timeout: float = 3600.0  # seconds a bank has to answer one message (a whole
    # local training in SecAgg+'s masked-vector stage); a bank silent for longer is lost
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
        problems = out_of_range(dataclasses.asdict(self))
        if problems:
            key, value, expected = problems[0]
            raise ConfigError(f"run config {key} = {value!r} is out of range ({expected})")

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
    "reply-timeout": "seconds, finite, > 0",
    "dp-embedding-noise": "finite, >= 0; 0 = off", "dp-embedding-clip": "finite, > 0",
    "dp-update-noise": "finite, >= 0; 0 = off", "dp-update-clip": "finite, > 0",
    "dp-delta": "0 < delta < 1",
}
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "num-rounds": lambda v: v >= 1,
    "local-epochs": lambda v: v >= 1,
    "proximal-mu": lambda v: v >= 0,
    "seed": lambda v: 0 <= v < 2**62,
    "batch-size": lambda v: v >= 1,
    "lr": lambda v: v > 0,
    "min-banks": lambda v: v >= 2,
    "reply-timeout": lambda v: 0 < v < math.inf,
    "max-weight": lambda v: v > 0,
    "run-id": bool,
    "dp-embedding-noise": lambda v: 0 <= v < math.inf,
    "dp-embedding-clip": lambda v: 0 < v < math.inf,
    "dp-update-noise": lambda v: 0 <= v < math.inf,
    "dp-update-clip": lambda v: 0 < v < math.inf,
    "dp-delta": lambda v: 0 < v < 1,
}


def out_of_range(values: Mapping[str, object]) -> list[tuple[str, object, str]]:
    """(key, value, expected range) of every run setting in ``values`` out of its range.

    ``values`` may use run config keys (kebab-case) or field names (snake_case); the
    problems name the run config keys. Keys without a range are not looked at."""
    problems = []
    for key, value in values.items():
        check = _CHECKS.get(key.replace("_", "-"))
        if check is not None and not check(value):
            problems.append((key.replace("_", "-"), value, _RANGES[key.replace("_", "-")]))
    return problems


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
