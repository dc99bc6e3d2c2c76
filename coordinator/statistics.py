"""Round 0: the banks' preprocessing statistics, summed under SecAgg+.

Each bank standardising its features with its own means would have one averaged model
see differently scaled inputs at every bank (it cost 0.002 AUC on default-credit).
Before training, every bank sends the power sums of its training columns
(:meth:`fedscore.data.preprocess.Preprocessor.moments`), fixed-point encoded
(:mod:`fedscore.crypto.secure_sum`), as a SecAgg+ "update" of weight 1; the coordinator only
gets their sum, which it hands back to every bank with each round's instructions. Every
bank then fits the same transforms, those of a fit on all banks' rows pooled.

What the coordinator learns: per column, the count of values and the sums of x, x², x³
and of their signed logs over all banks together; no bank's own. With plain FedAvg
messages (``secure_aggregation=False``, the benchmark's cost measurement only) it would
see each bank's sums.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from coordinator.dropouts import ReplyWatch, describe
from fedscore.atomic import atomic_write
from fedscore.crypto.secure_sum import (
    SECAGG_CLIPPING_RANGE,
    SECAGG_MAX_WEIGHT,
    SECAGG_QUANTIZATION_RANGE,
    SecureSumError,
    decode,
)
from fedscore.errors import FedscoreError
from fedscore.federation.runconfig import STATISTICS_TASK, TASK_KEY, RunSettings
from fedscore.federation.statistics import PooledStatistics

log = logging.getLogger(__name__)

FILE = "preprocessing.json"


class StatisticsError(FedscoreError, RuntimeError):
    """The banks' statistics could not be summed (a bank failed, layouts differ, ...)."""

    code = grpc.StatusCode.ABORTED  # the round ended without a sum; a new run may retry


class StatisticsStrategy(Strategy):
    """One round: every available bank (at least min-banks) sends its encoded sums; the
    sum goes on without a lost bank while min-banks remain."""

    def __init__(self, settings: RunSettings, config: dict[str, Scalar],
                 watch: ReplyWatch | None = None) -> None:
        self.settings = settings
        self.config = config
        self.watch = watch
        self.result: PooledStatistics | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """No model in this round: empty parameters."""
        return Parameters(tensors=[], tensor_type="numpy.ndarray")  # nothing to send

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Ask every available bank (waiting for min-banks) for its encoded sums."""
        least = self.settings.min_banks  # sample() waits for that many, then takes all
        clients = client_manager.sample(max(least, client_manager.num_available()), least)
        ins = FitIns(parameters, {**self.config, TASK_KEY: STATISTICS_TASK})
        if self.watch is not None:
            self.watch.reset()
        return [(c, ins) for c in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Decode the banks' sum into :attr:`result`; StatisticsError names the lost banks
        when fewer than min-banks are left."""
        banks = sorted(self.watch.name(c.node_id) if self.watch is not None
                       else f"node-{c.node_id}" for c, _ in results)
        lost = {b: why for b, why in lost_banks(self.watch, failures).items()
                if b not in banks}  # lost after its vector was in: it still counts
        if len(results) < self.settings.min_banks:
            raise StatisticsError(
                f"preprocessing statistics: only {len(results)} bank(s) left "
                f"({', '.join(banks) or 'none'}), fewer than min-banks = "
                f"{self.settings.min_banks}; lost: {describe(lost)}; see those banks' "
                "SuperNode logs"
            )
        if lost:
            log.warning("preprocessing statistics go on with %s; lost: %s",
                        ", ".join(banks), describe(lost))
        # SecAgg+ hands every result the weighted mean (weights are all 1); plain
        # messages each hold one bank's vector: either way n x mean is the sum.
        mean = np.mean([parameters_to_ndarrays(r.parameters)[0] for _, r in results], axis=0)
        try:
            sums, tag = decode(mean * len(results), len(results))
        except SecureSumError as exc:
            raise StatisticsError(f"preprocessing statistics: {exc}") from None
        self.result = PooledStatistics(tag.hex(), sums, len(results), tuple(banks))
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Nothing to evaluate in this round."""
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Nothing to evaluate in this round."""
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """No central evaluation."""
        return None


def lost_banks(watch: ReplyWatch | None, failures: list[Any]) -> dict[str, str]:
    """Bank -> why, for the banks the watch saw lost (without one: the failures)."""
    if watch is not None:
        return watch.lost()
    return {f"failure-{i}": repr(f)[:300] for i, f in enumerate(failures)}


def pooled_statistics(
    grid: Grid, context: Any, settings: RunSettings, config: dict[str, Scalar],
    *, secure_aggregation: bool = True, watch: ReplyWatch | None = None,
) -> PooledStatistics:
    """The run's pooled statistics: from its run folder when a previous attempt of the
    run summed them (a resumed run must keep its transforms), else summed now."""
    path = settings.run_dir / FILE
    if path.exists():
        return PooledStatistics.from_json(json.loads(path.read_text()))
    strategy = StatisticsStrategy(settings, config, watch)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1),
                           strategy=strategy)
    fit = SecAggPlusWorkflow(
        num_shares=1.0, reconstruction_threshold=0.67, max_weight=SECAGG_MAX_WEIGHT,
        clipping_range=SECAGG_CLIPPING_RANGE, quantization_range=SECAGG_QUANTIZATION_RANGE,
    ) if secure_aggregation else None
    DefaultWorkflow(fit_workflow=fit)(grid, legacy)
    if strategy.result is None:
        raise StatisticsError(
            "preprocessing statistics: secure aggregation halted, too few banks left to "
            f"reconstruct the sum (min-banks = {settings.min_banks}); lost: "
            f"{describe(lost_banks(watch, []))}; see those banks' SuperNode logs"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(strategy.result.to_json()).encode())
    log.info("preprocessing statistics of %d banks summed (layout %s)",
             strategy.result.banks, strategy.result.layout[:12])
    return strategy.result
