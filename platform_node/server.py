"""The platform node: PSI, split-learning forward/backward and round control over mTLS gRPC.

``bind_server`` binds an address (port 0 in tests) with health NOT_SERVING until the
node is loaded (:mod:`fedscore.wire.health`); ``create_server`` does that for a loaded
node and returns the port; ``serve`` is the blocking process entry point behind
``fedscore platform serve``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc

from fedscore.api.v1 import (
    embedding_pb2,
    embedding_pb2_grpc,
    federation_pb2,
    federation_pb2_grpc,
    psi_pb2,
    psi_pb2_grpc,
    round_control_pb2,
    round_control_pb2_grpc,
    split_learning_pb2,
    split_learning_pb2_grpc,
)
from fedscore.crypto.dp import DpSettings
from fedscore.data.preprocess import Preprocessor
from fedscore.data.table import PartyTable
from fedscore.federation.provision import StartupKit
from fedscore.ledger.taps import PROBE_METHODS, LedgerTap
from fedscore.ledger.writer import Ledger
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.training import PlatformBottom, TrainConfig
from fedscore.wire.health import HEALTH_SERVICE, REFLECTION_SERVICE, Readiness, follow_ledger
from fedscore.wire.limits import Limits, LimitsInterceptor, WorkClass, methods_of, server_options
from fedscore.wire.observe import ObserveInterceptor
from fedscore.wire.status import StatusInterceptor
from fedscore.wire.transport import add_secure_port
from platform_node.embedding_service import EmbeddingServicer, EmbeddingTable
from platform_node.federation import Federation
from platform_node.federation_service import FederationServicer
from platform_node.model_store import ModelStore, StateDict
from platform_node.psi_service import PsiServicer
from platform_node.sessions import SessionRegistry
from platform_node.split_service import RoundControlServicer, SplitLearningServicer
from platform_node.training_store import TrainingStore

log = logging.getLogger(__name__)


class PlatformNode:
    """Everything the platform holds: its kit, its raw table (never sent), fitted encodings,
    and the committed bottom models of federated runs (durable under ``state_dir``)."""

    def __init__(
        self,
        kit: StartupKit,
        table: PartyTable,
        arch: SplitArchitecture | None = None,
        *,
        state_dir: Path | None = None,
    ) -> None:
        if kit.role != "platform":
            raise ValueError(f"kit {kit.path} is for {kit.party} ({kit.role}), not the platform")
        self.kit = kit
        self.table = table
        self.preprocessor = Preprocessor.fit(table)
        self.encoded = self.preprocessor.transform(table)
        arch = arch or SplitArchitecture()
        self.bottom_config = arch.platform_bottom(
            self.preprocessor.n_numeric, self.preprocessor.cat_cardinalities
        )
        self.sessions = SessionRegistry(kit)
        self.state_dir = state_dir
        self.federation = Federation(ModelStore(state_dir), self.initial_weights,
                                     party=kit.party)
        self.embeddings = EmbeddingTable(self.encoded, self.bottom_config,
                                         self.federation.by_version,
                                         privacy=self._scoring_dp)
        self.user_rows = {str(u): i for i, u in enumerate(table.ids)}

    def _scoring_dp(self, version: str) -> DpSettings | None:
        """Online scoring's embedding mechanism: that of the run that made ``version``."""
        found = self.federation.privacy(version=version)
        return found.settings if found is not None else None

    def initial_weights(self, seed: int) -> StateDict:
        """A run's round-0 platform bottom: what a fresh session with ``seed`` starts from."""
        defaults = TrainConfig()
        bottom = self.make_bottom(seed, defaults.lr, defaults.weight_decay, defaults.ema_decay)
        return {k: v.detach().clone() for k, v in bottom.state_dict().items()}

    def make_bottom(
        self, seed: int, lr: float, weight_decay: float, ema_decay: float
    ) -> PlatformBottom:
        """A fresh platform bottom for one session, with the bank's optimizer settings."""
        hyper = TrainConfig(seed=seed, lr=lr, weight_decay=weight_decay, ema_decay=ema_decay)
        return PlatformBottom(self.encoded, self.bottom_config, hyper)


PLATFORM_SERVICES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name for module, name in (
        (psi_pb2, "PsiService"),
        (split_learning_pb2, "SplitLearningService"),
        (round_control_pb2, "RoundControlService"),
        (federation_pb2, "FederationService"),
        (embedding_pb2, "EmbeddingService"),
    )
)
"""The platform's own gRPC services (besides health and reflection)."""

MAX_RECEIVE_BYTES = 16 * 1024 * 1024
"""The largest message the platform reads (gRPC refuses a larger one unread): four
times its largest legitimate one, a Step of 65,536 handles with a gradient of 16 floats
per row (docs/security.md, "Limits")."""


def platform_limits(*, psi_idle_s: float = 120.0, step_idle_s: float = 300.0) -> Limits:
    """The platform's work classes (docs/security.md, "Limits"): the coordinator's
    control calls have 4 slots no bank can take; each bank at most 2 PSI streams, 4
    training calls and 8 scoring queries in flight; a PSI stream that sends nothing for
    ``psi_idle_s`` seconds and a Step stream idle for ``step_idle_s`` are ended
    (DEADLINE_EXCEEDED). The idle bounds leave room for a bank's longest legitimate
    pause: sorting a large intersection before its ``Done``, its own work between two
    steps."""

    psi, split, rounds, control, embedding = PLATFORM_SERVICES
    return Limits(
        [
            WorkClass("control", methods_of(control), per_peer=4, total=4),
            WorkClass("psi", methods_of(psi), per_peer=2, total=8, idle_s=psi_idle_s),
            WorkClass("training", methods_of(split, rounds), per_peer=4, total=16,
                      idle_s=step_idle_s),
            WorkClass("scoring", methods_of(embedding), per_peer=8, total=16),
            WorkClass("probes", methods_of(HEALTH_SERVICE, REFLECTION_SERVICE),
                      per_peer=4, total=8),
        ],
        default=WorkClass("other", frozenset(), per_peer=2, total=4),
    )


def add_services(server: grpc.Server, node: PlatformNode) -> None:
    """Add the platform's servicers over ``node`` to ``server``."""
    psi_pb2_grpc.add_PsiServiceServicer_to_server(
        PsiServicer(node.table.ids, node.sessions.on_psi_complete, kit=node.kit), server
    )
    split_learning_pb2_grpc.add_SplitLearningServiceServicer_to_server(
        SplitLearningServicer(node.sessions), server
    )
    round_control_pb2_grpc.add_RoundControlServiceServicer_to_server(
        RoundControlServicer(node.sessions, node.make_bottom, node.federation,
                             TrainingStore(node.state_dir / "training" if node.state_dir
                                           else None)),
        server
    )
    federation_pb2_grpc.add_FederationServiceServicer_to_server(
        FederationServicer(node.kit, node.federation), server
    )
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(
        EmbeddingServicer(node.sessions, node.embeddings, node.user_rows,
                          issuer=node.kit.party, verify_key=node.kit.signing_key.verify_key(),
                          state_dir=node.state_dir),
        server,
    )


@dataclass(frozen=True)
class PlatformServer:
    """A bound platform server before its node is loaded: health answers NOT_SERVING and
    the platform's services UNAVAILABLE until :meth:`ready`."""

    server: grpc.Server
    port: int
    readiness: Readiness

    def ready(self, node: PlatformNode) -> None:
        """Serve ``node``; health turns SERVING."""
        self.readiness.ready(lambda server: add_services(server, node))

    def stop(self, grace: float | None, drain_s: float = 0.0) -> threading.Event:
        """Answer NOT_SERVING (for ``drain_s`` seconds, while still serving), then stop
        with ``grace`` seconds for calls in flight."""
        self.readiness.drain()
        if drain_s > 0:
            time.sleep(drain_s)
        return self.server.stop(grace)


def bind_server(
    address: str,
    kit: StartupKit,
    *,
    limits: Limits | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    ledger: Ledger | None = None,
) -> PlatformServer:
    """The platform's server on ``address`` with health (NOT_SERVING) and reflection, its
    services closed until :meth:`PlatformServer.ready`; with ``ledger``, every message it
    receives or sends (probes aside: they carry nothing) is recorded there first. What its
    handlers raise becomes gRPC status in one place (:class:`StatusInterceptor`). Its
    work classes (``limits``, by default :func:`platform_limits`) bound what each peer
    may have in flight, before any work or ledger entry, and size its thread pool so
    that no class can take another's threads."""
    limits = limits or platform_limits()
    taps = [LedgerTap(ledger, ignore=PROBE_METHODS)] if ledger is not None else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="platform"),
        interceptors=[ObserveInterceptor(kit.party), StatusInterceptor(),
                      LimitsInterceptor(limits), *taps, *interceptors],
        options=server_options(MAX_RECEIVE_BYTES),
    )
    readiness = Readiness(server, PLATFORM_SERVICES)
    port = add_secure_port(server, address, kit)
    return PlatformServer(server, port, readiness)


def create_server(
    address: str,
    node: PlatformNode,
    *,
    limits: Limits | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    ledger: Ledger | None = None,
) -> tuple[grpc.Server, int]:
    """The platform's server for a loaded ``node`` on ``address``, SERVING once started
    (:func:`bind_server`, then ready)."""
    bound = bind_server(address, node.kit, limits=limits,
                        interceptors=interceptors, ledger=ledger)
    bound.ready(node)
    return bound.server, bound.port


def serve(
    kit_dir: Path, data: Path, schema: Path, address: str, state_dir: Path | None = None,
    ledger_dir: Path | None = None, drain_s: float = 0.0, cert_warn_days: int = 30,
) -> None:
    """Run until SIGINT/SIGTERM; refuses to start without a valid kit or table. SIGHUP
    reloads the kit's manifest and revocation list (a newer one put in its place, e.g. by
    ``fedscore provision revoke``); a certificate within ``cert_warn_days`` of expiry is
    logged at start and on SIGHUP, and named in every health answer.

    ``state_dir`` keeps committed federated models across restarts (None: memory only).
    The audit ledger goes to ``ledger_dir``, by default ``state_dir/ledger``; a platform
    with neither does not start, since every message it sends must be on record.

    The port is bound as soon as the kit is loaded, with health NOT_SERVING while the
    table loads and the encodings are fitted, SERVING after (the line "platform node
    listening on ..."), and NOT_SERVING again for ``drain_s`` seconds on SIGTERM before
    the server stops.
    """
    import torch

    from fedscore.data.table import load_table
    from fedscore.federation.provision import (
        expiry_warnings,
        load_kit,
        log_expiry,
        reload_logged,
    )

    torch.set_num_threads(1)
    kit = load_kit(kit_dir)
    if kit.role != "platform":  # before its ledger or its port: not this party's node
        raise ValueError(f"kit {kit.path} is for {kit.party} ({kit.role}), not the platform")
    if ledger_dir is None:
        if state_dir is None:
            raise ValueError("the platform needs --ledger-dir or --state-dir for its audit "
                             "ledger")
        ledger_dir = state_dir / "ledger"
    ledger = Ledger(ledger_dir, kit.signing_key, kit.party)
    host = address.rsplit(":", 1)[0]
    try:
        bound = bind_server(address, kit, ledger=ledger)
    except BaseException:
        ledger.close()
        raise
    bound.readiness.set_details(lambda: expiry_warnings(kit, within_days=cert_warn_days))
    log_expiry(kit, log, cert_warn_days)
    bound.server.start()
    print(f"platform node at {host}:{bound.port}: loading its table (health: NOT_SERVING)",
          flush=True)
    log.info("platform node %s at %s:%d: loading", kit.party, host, bound.port,
             extra={"event": "loading"})
    try:
        node = PlatformNode(kit, load_table(data, schema), state_dir=state_dir)
        bound.ready(node)
        follow_ledger(bound.readiness, ledger)  # NOT_SERVING while its disk is full
    except BaseException:
        bound.stop(grace=None).wait()
        ledger.close()
        raise
    print(f"platform node listening on {host}:{bound.port} ({len(node.table)} users)",
          flush=True)
    log.info("platform node %s serving on %s:%d (%d users)", kit.party, host, bound.port,
             len(node.table), extra={"event": "serving"})
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def _reload(signum: int, frame: FrameType | None) -> None:
        print(reload_logged(kit, log, cert_warn_days), flush=True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    stop.wait()
    log.info("platform node draining for %.1f s", drain_s, extra={"event": "draining"})
    bound.stop(grace=2, drain_s=drain_s).wait()
    ledger.close()
    log.info("platform node stopped", extra={"event": "stopped"})
    print("platform node stopped", flush=True)
