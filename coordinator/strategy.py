"""The coordinator's strategy: FedAvg over the bank-side model, with the platform in step.

Round r (Flower's ``server_round`` plus the rounds a resumed run had already done):
``configure_fit`` opens round r on the platform (which names the platform model the
round starts from) and tells the banks how to train; ``aggregate_fit`` gets the
bank-side average (from SecAgg+, which only reveals the sum), asks the platform to
average and commit its bottom-model copies, and checkpoints both; ``configure_evaluate``
has every bank score its test set with the new pair; ``aggregate_evaluate`` weighs
the banks' metrics by test rows and pools their PD histograms into one AUC and KS.

FedProx is the same strategy with ``proximal-mu`` > 0: the banks add the proximal
term to their local loss (the platform's bottom copies start from the round's average
either way).
"""

from __future__ import annotations

import logging
import time
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
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, add_gaussian_noise_to_params

from coordinator.checkpoint import Checkpoints
from coordinator.dropouts import ReplyWatch, describe
from coordinator.platform_control import PlatformControl
from coordinator.privacy import BANK_UPDATES, PLATFORM_EMBEDDINGS, PrivacyLog
from fedscore.errors import FedscoreError
from fedscore.federation.arrays import NonFiniteError, check_finite
from fedscore.federation.runconfig import RunSettings
from fedscore.federation.statistics import PooledStatistics
from fedscore.ml.metrics import auc_from_histograms, ks_from_histograms

log = logging.getLogger(__name__)


class CoordinatorError(FedscoreError, RuntimeError):
    """The run cannot go on (fewer than min-banks banks left, the platform disagrees, ...)."""

    code = grpc.StatusCode.ABORTED


def too_few(what: str, got: list[str], settings: RunSettings, lost: dict[str, str]
            ) -> CoordinatorError:
    """The error that stops a run when fewer than min-banks banks are left: it names
    the banks that were lost and why, and those that were left."""
    return CoordinatorError(
        f"{what}: only {len(got)} bank(s) left ({', '.join(got) or 'none'}), fewer than "
        f"min-banks = {settings.min_banks}; lost: {describe(lost)}; see those banks' "
        "SuperNode logs"
    )


def pooled_metrics(bank_metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Test-row-weighted means, and the AUC/KS of all banks' test sets pooled."""
    n = np.array([m["n"] for m in bank_metrics], np.float64)
    pos = sum(np.frombuffer(m["hist_pos"], "<u4").astype(np.int64) for m in bank_metrics)
    neg = sum(np.frombuffer(m["hist_neg"], "<u4").astype(np.int64) for m in bank_metrics)
    weighted = {
        k: float(np.dot(n, [m[k] for m in bank_metrics]) / n.sum()) for k in ("auc", "ks", "loss")
    }
    return {
        "weighted_auc": weighted["auc"],
        "weighted_ks": weighted["ks"],
        "weighted_loss": weighted["loss"],
        "pooled_auc": auc_from_histograms(np.asarray(pos), np.asarray(neg)),
        "pooled_ks": ks_from_histograms(np.asarray(pos), np.asarray(neg)),
        "n_test": int(n.sum()),
    }


def _finite(arrays: list[np.ndarray], what: str) -> None:
    """CoordinatorError unless every array is finite: a NaN or an infinity is never
    averaged, checkpointed or released (the banks refuse to send one; this holds when
    SecAgg+ is off, and for an average that overflowed)."""
    try:
        check_finite(((f"arr_{i}", a) for i, a in enumerate(arrays)), what)
    except NonFiniteError as exc:
        raise CoordinatorError(exc.message, code=exc.code) from None


def instructions(settings: RunSettings) -> dict[str, Scalar]:
    """The run settings every bank needs (not the coordinator's own paths and kit)."""
    return {k: v for k, v in settings.to_run_config().items()
            if k not in ("state-dir", "coordinator-kit", "platform-address")}


class CoordinatorStrategy(FedAvg):
    """FedAvg over the bank-side model that keeps the platform's rounds in step (see the module)."""

    def __init__(
        self,
        settings: RunSettings,
        platform: PlatformControl,
        checkpoints: Checkpoints,
        statistics: PooledStatistics,
        *,
        watch: ReplyWatch | None = None,
        rounds_done: int = 0,
        initial: list[np.ndarray] | None = None,
        platform_version: str = "",
    ) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=settings.min_banks,
            min_evaluate_clients=settings.min_banks,
            min_available_clients=settings.min_banks,
            accept_failures=True,  # a lost bank: the round goes on while min-banks remain
            initial_parameters=ndarrays_to_parameters(initial) if initial is not None else None,
        )
        self.settings = settings
        self.platform = platform
        self.checkpoints = checkpoints
        self.statistics = statistics
        self.watch = watch
        self.rounds_done = rounds_done
        self._sampled: dict[int, str] = {}  # node id -> bank, of the round's training
        self.platform_version = platform_version
        self._t_fit = 0.0
        self._fit_s = 0.0
        self._trained = rounds_done
        self.privacy = PrivacyLog(settings.run_dir)

    def _name(self, node_id: int) -> str:
        return self.watch.name(node_id) if self.watch is not None else f"node-{node_id}"

    def _lost(self, missing: set[str], failures: list[Any]) -> dict[str, str]:
        """Bank -> why, for the banks lost since the watch's reset (and ``missing`` ones
        it did not see fail: a reply that came but was no result)."""
        lost = self.watch.lost() if self.watch is not None else {}
        for bank in missing - set(lost):
            lost[bank] = "no result"
        if not lost and failures:  # no watch: all that is known is the failures
            lost = {f"failure-{i}": repr(f)[:300] for i, f in enumerate(failures)}
        return dict(sorted(lost.items()))

    def _round(self, server_round: int) -> int:
        return self.rounds_done + server_round

    def _config(self, round_: int) -> dict[str, Scalar]:
        return {**instructions(self.settings), **self.statistics.to_config(), "round": round_}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Open the round on the platform, then send every bank the model and the round's
        instructions."""
        r = self._round(server_round)
        if not parameters.tensors:
            raise CoordinatorError(
                f"round {r}: no initial model: the bank asked for it failed; see the banks' "
                "SuperNode logs"
            )
        self._t_fit = time.perf_counter()
        embedding_dp = self.settings.embedding_dp()
        base = self.platform.start_round(
            self.settings.run_id, r, self.settings.seed,
            **({"embedding_dp": embedding_dp} if embedding_dp.enabled else {}),
        )
        log.info("round %d: platform starts from %s", r, base)
        pairs = super().configure_fit(server_round, parameters, client_manager)
        if self.watch is not None:
            self.watch.reset()
        self._sampled = {c.node_id: self._name(c.node_id) for c, _ in pairs}
        clip: dict[str, Scalar] = (
            {KEY_CLIPPING_NORM: float(self.settings.dp_update_clip)}
            if self.settings.update_dp().enabled else {}
        )  # the banks' update_clipping_mod clips to it before SecAgg+
        return [(c, FitIns(ins.parameters, {**ins.config, **self._config(r), **clip}))
                for c, ins in pairs]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Average the banks' models (noised under update DP), have the platform average its
        own and commit, and checkpoint both."""
        r = self._round(server_round)
        banks = sorted(self._name(c.node_id) for c, _ in results)
        lost = {b: why for b, why in
                self._lost(set(self._sampled.values()) - set(banks), failures).items()
                if b not in banks}  # lost after its masked vector was in: it still counts
        if len(results) < self.settings.min_banks:
            raise too_few(f"round {r}", banks, self.settings, lost)
        if lost:
            log.warning("round %d goes on with %s; lost: %s", r, ", ".join(banks),
                        describe(lost))
        for proxy, res in results:  # under SecAgg+: the one sum it unmasked
            _finite(parameters_to_ndarrays(res.parameters),
                    f"round {r}: the update of {proxy.cid}")
        params, _ = super().aggregate_fit(server_round, results, [])
        if params is None:
            raise CoordinatorError(f"round {r}: no bank-side model came back")
        _finite(parameters_to_ndarrays(params), f"round {r}: the bank-side average")
        update_dp = self.settings.update_dp()
        if update_dp.enabled:
            # Here, not in Flower's DifferentialPrivacyClientSideFixedClipping: that
            # wrapper noises after its inner aggregate_fit, which checkpoints, so the
            # checkpoint and the release would hold the noiseless model. Flower's own
            # helper, std z·C / n for the unweighted mean of the n banks' clipped
            # updates (the banks all weigh the same under update DP); accounted first.
            params = add_gaussian_noise_to_params(
                params, update_dp.noise_multiplier, update_dp.clip, len(results))
            self.privacy.record(r, BANK_UPDATES, update_dp, 1)
        # only the aggregated banks' platform copies count (none named: no watch, a test)
        done = self.platform.finish_round(self.settings.run_id, r,
                                          banks if self.watch is not None else [])
        self.platform_version = done.version
        self._trained = r
        self._fit_s = time.perf_counter() - self._t_fit
        self.checkpoints.save(
            r, parameters_to_ndarrays(params), done.version,
            {"banks": len(results), "contributors": banks, "lost": lost,
             "platform_sessions": done.sessions, "platform_rows": done.rows,
             "fit_s": self._fit_s},
        )
        self.checkpoints.log("trained", round=r, platform_version=done.version,
                             banks=len(results), contributors=banks, lost=lost,
                             fit_s=self._fit_s)
        return params, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Have every bank evaluate the round's pair of models (the last round closes the
        sessions)."""
        r = self._round(server_round)
        if self._trained != r:
            # SecAgg+ halted: too few banks were left to reconstruct the sum
            lost = self._lost(set(), [])
            left = sorted(set(self._sampled.values()) - set(lost))
            raise CoordinatorError(
                f"round {r}: secure aggregation halted: {len(left)} bank(s) left "
                f"({', '.join(left) or 'none'}), too few to remove the lost banks' masks "
                f"(SecAgg+ needs 2/3 of the round's {len(self._sampled)}); lost: "
                f"{describe(lost)}; see those banks' SuperNode logs")
        if self.watch is not None:
            self.watch.reset()
        extra: dict[str, Scalar] = {**self._config(r), "platform-version": self.platform_version,
                                    "final": r == self.settings.num_rounds}
        return [(c, EvaluateIns(ins.parameters, {**ins.config, **extra}))
                for c, ins in super().configure_evaluate(server_round, parameters,
                                                         client_manager)]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Pool the banks' metrics into the round's summary, record it and the embedding DP
        releases; returns the weighted loss and the numeric metrics."""
        r = self._round(server_round)
        evaluated = sorted(str(res.metrics["bank"]) for _, res in results)
        lost = self._lost(set(), failures)
        if len(results) < self.settings.min_banks:
            raise too_few(f"round {r} evaluation", evaluated, self.settings, lost)
        banks: list[dict[str, Any]] = sorted(
            ({"bank": str(res.metrics["bank"]), "n": int(res.num_examples),
              "auc": float(res.metrics["auc"]), "ks": float(res.metrics["ks"]),
              "loss": float(res.metrics["loss"]), "aligned": int(res.metrics["aligned"]),
              "fingerprint": str(res.metrics["fingerprint"]),
              "hist_pos": res.metrics["hist-pos"], "hist_neg": res.metrics["hist-neg"]}
             for _, res in results),
            key=lambda m: m["bank"],
        )
        summary: dict[str, Any] = {
            "round": r,
            "platform_version": self.platform_version,
            **pooled_metrics(banks),
            "fit_s": self._fit_s,
            "lost": lost,
            "banks": [{k: v for k, v in m.items() if not k.startswith("hist")} for m in banks],
        }
        hists = {m["bank"]: {"pos": np.frombuffer(m["hist_pos"], "<u4").tolist(),
                             "neg": np.frombuffer(m["hist_neg"], "<u4").tolist()}
                 for m in banks}
        self.checkpoints.update(r, evaluation=summary, histograms=hists)
        embedding_dp = self.settings.embedding_dp()
        if embedding_dp.enabled:  # the round's training and evaluation releases
            self.privacy.record(r, PLATFORM_EMBEDDINGS, embedding_dp,
                                self.platform.embedding_releases(self.settings.run_id))
        self.checkpoints.log("evaluated", **summary)
        return summary["weighted_loss"], {k: v for k, v in summary.items()
                                          if isinstance(v, int | float)}
