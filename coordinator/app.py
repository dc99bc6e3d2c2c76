"""The coordinator as a Flower ServerApp: rounds under SecAgg+, checkpoints, the release.

It holds no user data: it sees the sum of the banks' bank-side models (SecAgg+), the
platform's model versions and the banks' evaluation metrics. Settings come from the
run config (``flwr run ... --run-config``, see :class:`fedscore.federation.runconfig.RunSettings`).

Resuming: a run id whose checkpoints exist continues after its last whole round, from
that round's weights; the platform must have finished at least that round (it keeps
every round it finished, so it can start the next one from the same pair).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from coordinator.checkpoint import Checkpoint, Checkpoints
from coordinator.dropouts import ReplyWatch
from coordinator.platform_control import PlatformControl
from coordinator.privacy import PrivacyLog
from coordinator.statistics import pooled_statistics
from coordinator.strategy import CoordinatorError, CoordinatorStrategy, instructions
from fedscore.errors import FedscoreError
from fedscore.federation.provision import load_kit, log_expiry
from fedscore.federation.release import write_release
from fedscore.federation.runconfig import SECAGG_CLIP, ConfigError, RunSettings
from fedscore.federation.statistics import PooledStatistics
from fedscore.ledger.grid import LedgeredGrid
from fedscore.ledger.writer import Ledger
from fedscore.wire.transport import secure_channel

log = logging.getLogger(__name__)

RELEASE_DIR = "release"
LEDGER_DIR = "ledger"  # under the state dir: one chain for all of the coordinator's runs


def run_rounds(
    grid: Grid, context: Context, settings: RunSettings, *, secure_aggregation: bool = True
) -> dict[str, Any]:
    """Run (or resume) the rounds the settings ask for, then write the signed release.

    Returns the release manifest. ``secure_aggregation=False`` (plain FedAvg messages)
    exists only so the federation benchmark can measure what SecAgg+ costs. A round goes
    on without a lost bank while ``min-banks`` remain; a run that cannot go on logs a
    ``stopped`` event (with the error, which names the lost banks) and raises.
    """
    if not settings.coordinator_kit or not settings.platform_address:
        raise ConfigError("run config: coordinator-kit and platform-address are required")
    kit = load_kit(Path(settings.coordinator_kit))
    log_expiry(kit, log)  # the coordinator has no health service: its run's log says it
    checkpoints = Checkpoints(settings.run_dir)
    latest = checkpoints.latest()
    done = latest.round if latest is not None else 0
    with (Ledger(Path(settings.state_dir) / LEDGER_DIR, kit.signing_key, kit.party,
                 lock_timeout_s=60) as ledger,
          secure_channel(settings.platform_address, kit, "platform", ledger=ledger) as channel):
        ledgered = LedgeredGrid(grid, ledger, kit)
        watch = ReplyWatch(ledgered, settings.reply_timeout, lambda: ledgered.names)
        platform = PlatformControl(channel)
        platform_last, _ = platform.run_state(settings.run_id)
        if platform_last < done:
            raise CoordinatorError(
                f"run {settings.run_id!r}: the coordinator has round {done} checkpointed but "
                f"the platform only round {platform_last}; was its --state-dir lost?"
            )
        if done:
            log.info("resuming run %s after round %d", settings.run_id, done)
            checkpoints.log("resumed", round=done)
        else:
            checkpoints.log("started", rounds=settings.num_rounds,
                            settings=settings.to_run_config())
        try:
            statistics = _rounds(watch, context, settings, platform, checkpoints, latest,
                                 secure_aggregation=secure_aggregation)
        except FedscoreError as exc:  # too few banks left, the platform refused, ...
            log.error("run %s stopped: %s", settings.run_id, exc.message)
            checkpoints.log("stopped", error=exc.message, code=exc.code.name)
            raise

    final = checkpoints.latest()
    if final is None:
        raise CoordinatorError(f"run {settings.run_id!r} finished without a checkpoint")
    evaluation = final.info.get("evaluation", {})
    manifest = write_release(
        settings.run_dir / RELEASE_DIR, final.arrays,
        signer=kit.signing_key, signer_name=kit.party, run_id=settings.run_id,
        round_=final.round, platform_version=final.platform_version,
        fingerprints={b["bank"]: b["fingerprint"] for b in evaluation.get("banks", [])},
        metrics=evaluation, config=settings.to_run_config(), statistics=statistics,
        privacy=PrivacyLog(settings.run_dir).budget(),
        contributors=contributors(checkpoints, statistics),
    )
    checkpoints.log("released", version=manifest["version"],
                    path=str(settings.run_dir / RELEASE_DIR))
    return manifest


def contributors(checkpoints: Checkpoints, statistics: PooledStatistics) -> dict[str, list[str]]:
    """Round (a string; "0": the pooled statistics) -> the banks whose updates went into
    it, for every round of the run: what the release names and signs."""
    out = {"0": list(statistics.contributors)}
    for r in checkpoints.rounds():
        out[str(r)] = list(checkpoints.load(r).info.get("contributors", []))
    return out


def _rounds(grid: ReplyWatch, context: Context, settings: RunSettings,
            platform: PlatformControl, checkpoints: Checkpoints, latest: Checkpoint | None,
            *, secure_aggregation: bool) -> PooledStatistics:
    """Round 0's statistics (unless a previous attempt summed them), then the rounds left;
    returns the statistics."""
    done = latest.round if latest is not None else 0
    statistics = pooled_statistics(grid, context, settings, instructions(settings),
                                   secure_aggregation=secure_aggregation, watch=grid)
    strategy = CoordinatorStrategy(
        settings, platform, checkpoints, statistics, watch=grid, rounds_done=done,
        initial=latest.arrays if latest is not None else None,
        platform_version=latest.platform_version if latest is not None else "",
    )
    remaining = settings.num_rounds - done
    if remaining > 0:
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=remaining), strategy=strategy
        )
        fit = (
            SecAggPlusWorkflow(
                num_shares=1.0, reconstruction_threshold=0.67,
                max_weight=settings.max_weight, clipping_range=SECAGG_CLIP,
            )
            if secure_aggregation else None
        )
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)
    return statistics


def server_app(settings: RunSettings | None = None, *, secure_aggregation: bool = True
               ) -> ServerApp:
    """A ServerApp with fixed ``settings``, or (None) the settings of the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = settings or RunSettings.from_run_config(context.run_config)
        run_rounds(grid, context, run, secure_aggregation=secure_aggregation)

    return app


app = server_app()
