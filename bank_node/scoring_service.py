"""The bank's scoring server: a thin gRPC servicer over :class:`bank_node.scoring.Scorer`.

Only the bank's own party may call it (its decision engine holds the bank's startup
kit); anyone else gets PERMISSION_DENIED. ``bind_server`` binds an address (port 0 in
tests) with health NOT_SERVING until the scorer is ready, ``create_server`` does that
for a built scorer and returns the port; ``serve`` is ``fedscore bank score-server``.

The server's imports stay free of torch and of Flower's server side (its model is numpy,
:mod:`fedscore.ml.frozen`); ``tests/bank_node/test_imports.py`` holds it to that.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
import threadpoolctl

from bank_node.policy import Outcome, Policy
from bank_node.policy_decide import Decision
from bank_node.policy_decide_many import OUTCOMES
from bank_node.scoring import Scored, ScoredBatch, Scorer
from bank_node.scoring_aio import AsyncScorer
from bank_node.scoring_platform import PlatformEmbeddings
from bank_node.scoring_store import CustomerStore, ScoringError, ScoringModel
from fedscore.api.v1 import scoring_pb2, scoring_pb2_grpc
from fedscore.errors import FedscoreError
from fedscore.federation.provision import StartupKit
from fedscore.ledger.writer import Ledger
from fedscore.ops import metrics
from fedscore.wire.health import HEALTH_SERVICE, REFLECTION_SERVICE, AioReadiness
from fedscore.wire.limits import (
    MAX_BATCH_IDS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_SCORE_FEATURES,
    MAX_VALUE_CHARS,
    AioLimitsInterceptor,
    Limits,
    WorkClass,
    check_count,
    check_length,
    methods_of,
    server_options,
)
from fedscore.wire.observe import AioObserveInterceptor
from fedscore.wire.status import AioStatusInterceptor
from fedscore.wire.transport import add_secure_port

log = logging.getLogger(__name__)
T = TypeVar("T")

_OUTCOME_PB = {
    Outcome.APPROVE: scoring_pb2.OUTCOME_APPROVE,
    Outcome.REFER: scoring_pb2.OUTCOME_REFER,
    Outcome.DECLINE: scoring_pb2.OUTCOME_DECLINE,
}
_OUTCOME_INDEX_PB = np.array([_OUTCOME_PB[o] for o in OUTCOMES], np.int32)


def decision_to_pb(scored: Scored) -> scoring_pb2.ScoreResponse:
    """One applicant's decision as the Score reply."""
    d: Decision = scored.decision
    return scoring_pb2.ScoreResponse(
        pd=d.pd if d.pd is not None else 0.0,
        score=d.score if d.score is not None else 0,
        grade=d.grade or "",
        outcome=_OUTCOME_PB[d.outcome],
        credit_limit=d.limit,
        apr=d.apr if d.apr is not None else 0.0,
        reasons=[scoring_pb2.Reason(code=r.code, text=r.text,
                                    features=list(r.features) or [r.feature],
                                    contribution=r.contribution) for r in d.reasons],
        model_version=scored.model_version,
        platform_model_version=scored.platform_version,
        platform=scoring_pb2.PlatformPart.ValueType(int(scored.platform)),
        fallback=d.fallback or "",
        scored=d.pd is not None,
    )


def batch_to_pb(batch: ScoredBatch, policy: Policy) -> scoring_pb2.ScoreBatchResponse:
    """A portfolio chunk's decisions as one ScoreBatch reply (columns, not rows)."""
    d = batch.decisions
    grades = [g.name for g in policy.grades]
    return scoring_pb2.ScoreBatchResponse(
        applicant_ids=batch.ids,
        pd=d.pd.tolist(),
        score=d.score.tolist(),
        grade=[grades[i] for i in d.grade.tolist()],
        outcome=_OUTCOME_INDEX_PB[d.outcome].tolist(),
        credit_limit=d.limit.tolist(),
        apr=np.nan_to_num(d.apr, nan=0.0).tolist(),
        platform=batch.platform.astype(np.int32).tolist(),
        model_version=batch.model_version,
        platform_model_version=batch.platform_version,
    )


class ScoringServicer(scoring_pb2_grpc.ScoringServiceServicer):
    """``grpc.aio`` servicer: Score on the event loop (see :class:`AsyncScorer`); the
    blocking calls (ScoreBatch's chunks, LoadRelease) on a thread pool, off the loop."""

    def __init__(self, scorer: AsyncScorer, party: str, pool: futures.Executor) -> None:
        self._scorer = scorer
        self._party = party
        self._pool = pool
        self._counted: dict[tuple[str, int, bool], tuple[Any, Any]] = {}

    def _count(self, scored: Scored) -> None:
        """One decision, by outcome and platform part (and its fallback): one dict lookup
        and one or two counter increments on the request's path."""
        d = scored.decision
        key = (d.outcome.value, int(scored.platform), bool(d.fallback))
        children = self._counted.get(key)
        if children is None:
            part = scored.platform.name.lower()
            children = (
                metrics.SCORING_DECISIONS.labels(self._party, "Score", key[0], part),
                metrics.SCORING_FALLBACKS.labels(self._party, part) if key[2] else None)
            self._counted[key] = children
        children[0].inc()
        if children[1] is not None:
            children[1].inc()

    async def _only_own_party(self, context: grpc.aio.ServicerContext) -> None:
        """:func:`fedscore.wire.transport.peer_party`'s check, awaited as aio needs."""
        auth = context.auth_context()
        names = auth.get("x509_common_name") or []
        if auth.get("transport_security_type") != [b"ssl"] or len(names) != 1:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no verified client certificate")
        peer = names[0].decode("utf-8")
        if peer != self._party:
            metrics.REFUSALS.labels(self._party, peer, "not-own-party",
                                    "PERMISSION_DENIED").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{peer!r} may not use {self._party}'s scoring server")

    async def _off_loop(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def Score(self, request: scoring_pb2.ScoreRequest, context: grpc.aio.ServicerContext
                    ) -> scoring_pb2.ScoreResponse:
        """Score one applicant: the bank's own party only; refusals end with their code."""
        await self._only_own_party(context)
        check_score_request(request)  # LimitError (INVALID_ARGUMENT) before any work
        if not request.applicant_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "applicant_id: empty")
        amount = request.requested_amount
        if not (math.isfinite(amount) and amount >= 0):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"requested_amount = {amount}: expected a finite amount >= 0")
        scored = await self._scorer.score(request.applicant_id, dict(request.features),
                                          request.consent_token, amount or None)
        self._count(scored)
        return decision_to_pb(scored)

    def _batch(self, ids: list[str]) -> scoring_pb2.ScoreBatchResponse:
        scorer = self._scorer.scorer
        batch = scorer.score_batch(ids)
        outcomes = np.bincount(batch.decisions.outcome, minlength=len(OUTCOMES))
        for outcome, n in zip(OUTCOMES, outcomes.tolist(), strict=True):
            if n:
                metrics.SCORING_DECISIONS.labels(self._party, "ScoreBatch", outcome.value,
                                                 "batch").inc(n)
        return batch_to_pb(batch, scorer.policy)

    async def ScoreBatch(self, request_iterator: AsyncIterator[scoring_pb2.ScoreBatchRequest],
                         context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[scoring_pb2.ScoreBatchResponse]:
        """Score each chunk of a portfolio stream off the event loop, one reply per chunk."""
        await self._only_own_party(context)
        async for request in request_iterator:
            ids = list(request.applicant_ids)
            check_count("ScoreBatchRequest.applicant_ids", len(ids), MAX_BATCH_IDS)
            if ids:
                check_length("ScoreBatchRequest.applicant_ids[]", max(ids, key=len),
                             MAX_ID_CHARS)
            yield await self._off_loop(self._batch, ids)

    async def LoadRelease(self, request: scoring_pb2.LoadReleaseRequest,
                          context: grpc.aio.ServicerContext) -> scoring_pb2.LoadReleaseResponse:
        """Switch to the release at ``request.path``; a refused one leaves the old in place
        (FAILED_PRECONDITION)."""
        await self._only_own_party(context)
        check_length("LoadReleaseRequest.path", request.path, MAX_PATH_CHARS)
        try:
            new, old = await self._off_loop(self._scorer.scorer.load_release, Path(request.path))
        except ScoringError:
            raise  # with its own code
        except Exception as exc:  # ReleaseError, a missing folder: the old release stays
            raise FedscoreError(str(exc), code=grpc.StatusCode.FAILED_PRECONDITION) from exc
        log.info("scoring: release %s replaces %s", new, old)
        return scoring_pb2.LoadReleaseResponse(model_version=new, previous_model_version=old)


def check_score_request(request: scoring_pb2.ScoreRequest) -> None:
    """The documented bounds of one Score request (docs/security.md, "Limits"): an
    applicant id of at most MAX_ID_CHARS, at most MAX_SCORE_FEATURES inline features,
    names of at most MAX_NAME_CHARS and values of at most MAX_VALUE_CHARS; LimitError
    (INVALID_ARGUMENT) otherwise, before the features are copied or read."""
    check_length("applicant_id", request.applicant_id, MAX_ID_CHARS)
    features = request.features
    check_count("features", len(features), MAX_SCORE_FEATURES)
    for name, value in features.items():
        check_length("features (a name)", name, MAX_NAME_CHARS)
        check_length(f"features.{name}", value, MAX_VALUE_CHARS)


SCORING_SERVICES = (scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name,)
"""The scoring server's own gRPC service (besides health and reflection)."""

MAX_RECEIVE_BYTES = 8 * 1024 * 1024
"""The largest message the scoring server reads (gRPC refuses a larger one unread):
twice a ScoreBatch message of MAX_BATCH_IDS ids of MAX_ID_CHARS characters."""

MAX_IN_FLIGHT = 64
"""Score calls the server admits at once by default; more are refused at once with
RESOURCE_EXHAUSTED (``benchmarks/overload.py``: its throughput peaks well below)."""


def scoring_limits(max_in_flight: int = MAX_IN_FLIGHT, batch_streams: int = 4,
                   batch_idle_s: float = 30.0) -> Limits:
    """The scoring server's work classes (docs/security.md, "Limits"): ``max_in_flight``
    Score calls, admitted only when their deadline is longer than recent calls took
    (else RESOURCE_EXHAUSTED at once, rather than an answer too late); ``batch_streams``
    ScoreBatch streams (one per pool thread), ended when idle for ``batch_idle_s``;
    LoadRelease and the probes on slots of their own, so no Score load delays them."""
    service = SCORING_SERVICES[0]
    return Limits(
        [
            WorkClass("score", methods_of(service, only=["Score"]), per_peer=max_in_flight,
                      total=max_in_flight, admit=True),
            WorkClass("batch", methods_of(service, only=["ScoreBatch"]),
                      per_peer=batch_streams, total=batch_streams, idle_s=batch_idle_s),
            WorkClass("control", methods_of(service, only=["LoadRelease"]), per_peer=2,
                      total=2),
            WorkClass("probes", methods_of(HEALTH_SERVICE, REFLECTION_SERVICE),
                      per_peer=8, total=8),
        ],
        default=WorkClass("other", frozenset(), per_peer=4, total=4),
    )


class ScoringServer:
    """The scoring server: a ``grpc.aio`` server on an event loop thread of its own,
    started and stopped like a sync ``grpc.Server`` (``serve`` and the tests drive it from
    sync code; PSI, release loading and SIGHUP stay sync). It binds with health
    NOT_SERVING and ScoringService UNAVAILABLE until :meth:`ready` hands it its scorer
    (:mod:`fedscore.wire.health`). Its aio channel to the platform (``Scorer.aio_channel``)
    is opened on that loop then, and closed with the server."""

    def __init__(self, address: str, kit: StartupKit, max_workers: int,
                 limits: Limits | None = None) -> None:
        self.limits = limits or scoring_limits(batch_streams=max_workers)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scoring-loop",
                                        daemon=True)
        self._thread.start()
        self._pool = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="scoring")
        self._stopped = threading.Event()
        self._channel: grpc.aio.Channel | None = None
        self._party = kit.party
        try:
            self.port = self._run(self._build(address, kit))
        except BaseException:
            self._close_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _build(self, address: str, kit: StartupKit) -> int:
        self._server = grpc.aio.server(
            interceptors=[AioObserveInterceptor(self._party), AioStatusInterceptor(),
                          AioLimitsInterceptor(self.limits)],
            options=server_options(MAX_RECEIVE_BYTES))
        self._readiness = await AioReadiness.create(self._server, SCORING_SERVICES)
        return add_secure_port(self._server, address, kit)

    async def _open(self, scorer: Scorer) -> None:
        self._channel = scorer.aio_channel() if scorer.aio_channel is not None else None
        servicer = ScoringServicer(AsyncScorer(scorer, self._channel), self._party, self._pool)
        await self._readiness.ready(
            lambda server: scoring_pb2_grpc.add_ScoringServiceServicer_to_server(servicer,
                                                                                server))

    def ready(self, scorer: Scorer) -> None:
        """Serve ``scorer`` (its store aligned, its release loaded); health turns SERVING."""
        self._run(self._open(scorer))

    def set_details(self, details: Callable[[], Sequence[str]]) -> None:
        """Warnings every health answer carries from now on (:mod:`fedscore.wire.health`)."""
        self._readiness.set_details(details)

    def start(self) -> None:
        """Start serving."""
        self._run(self._server.start())

    def follow(self, ledger: Ledger) -> None:
        """Answer NOT_SERVING while ``ledger`` cannot be written (its queries to the
        platform are not sent meanwhile: the policy's fallback answers), SERVING again
        once it can (:func:`fedscore.wire.health.follow_ledger`)."""
        from fedscore.wire.health import follow_ledger

        follow_ledger(self._readiness, ledger, self._loop)

    def drain(self) -> None:
        """Answer NOT_SERVING from now on; calls are still served until :meth:`stop`."""
        self._run(self._readiness.drain())

    async def _shutdown(self, grace: float | None, drain_s: float) -> None:
        await self._readiness.drain()
        if drain_s > 0:
            await asyncio.sleep(drain_s)
        await self._server.stop(grace)
        if self._channel is not None:
            await self._channel.close()

    def stop(self, grace: float | None, drain_s: float = 0.0) -> threading.Event:
        """Answer NOT_SERVING (for ``drain_s`` seconds, still serving), then stop serving
        (``grace`` seconds for calls in flight) and the loop; returns an event already
        set, as ``grpc.Server.stop`` returns one to wait on."""
        if not self._stopped.is_set():
            try:
                self._run(self._shutdown(grace, drain_s))
            finally:
                self._close_loop()
                self._stopped.set()
        return self._stopped

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._pool.shutdown(wait=False)


def bind_server(address: str, kit: StartupKit, *, max_workers: int = 4,
                limits: Limits | None = None) -> ScoringServer:
    """Bind ``address`` (port 0: a free one) before the scorer is built: health answers
    NOT_SERVING until :meth:`ScoringServer.ready`; ``max_workers`` threads for ScoreBatch
    and LoadRelease; ``limits``: its work classes (:func:`scoring_limits` by default)."""
    return ScoringServer(address, kit, max_workers, limits)


def create_server(address: str, scorer: Scorer, kit: StartupKit, *, max_workers: int = 4,
                  limits: Limits | None = None) -> tuple[ScoringServer, int]:
    """:func:`bind_server` for a built ``scorer``: SERVING once started."""
    server = bind_server(address, kit, max_workers=max_workers, limits=limits)
    try:
        server.ready(scorer)
    except BaseException:
        server.stop(grace=None)
        raise
    return server, server.port


def build_scorer(kit: StartupKit, data_dir: Path, release: Path, platform_address: str,
                 policy: Policy, *, channel: grpc.Channel | None = None,
                 ledger: Ledger | None = None) -> Scorer:
    """PSI of the bank's store with the platform (a scoring session), then the release.
    ``ledger`` records the aio channel's messages (``channel`` brings its own tap)."""
    from bank_node.psi_client import run_psi
    from fedscore.wire.aio import secure_aio_channel
    from fedscore.wire.transport import secure_channel

    table = CustomerStore.load_table(data_dir)
    link = channel or secure_channel(platform_address, kit, "platform")

    def connect() -> tuple[PlatformEmbeddings, CustomerStore]:
        psi = run_psi(link, table.ids, party=kit.party)
        return (PlatformEmbeddings(link, kit, psi),
                CustomerStore.of(table, psi.handles_for_rows(len(table.ids))))

    platform, store = connect()
    key = kit.peer("coordinator").verify_key
    model = ScoringModel.load(release, key, store)
    return Scorer(model, policy, store, platform, key, reconnect=connect,
                  aio_channel=lambda: secure_aio_channel(platform_address, kit, "platform",
                                                         ledger=ledger))


def serve(kit_dir: Path, data_dir: Path, release: Path, platform_address: str, address: str,
          policy_file: Path | None, ledger_dir: Path, drain_s: float = 0.0,
          cert_warn_days: int = 30) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the kit's manifest and revocation list and
    ``release`` (a newer one put in its place). A certificate within ``cert_warn_days`` of
    expiry is logged at start and on SIGHUP, and named in every health answer.

    Every message to and from the platform is recorded in the ledger at ``ledger_dir``
    (the decision engine's calls stay inside the bank and are not). The port is bound once
    the kit is loaded, with health NOT_SERVING during PSI with the platform and the
    release's loading, SERVING after (the line "... scoring server on ..."), and
    NOT_SERVING again for ``drain_s`` seconds on SIGTERM before the server stops.
    """
    from fedscore.federation.provision import (
        expiry_warnings,
        load_kit,
        log_expiry,
        reload_logged,
    )
    from fedscore.wire.transport import secure_channel

    # one BLAS thread for numpy (no torch here: the model is numpy): a second one makes
    # a ScoreBatch chunk slower and spins a core while it waits (docs/scoring.md)
    threadpoolctl.threadpool_limits(1)
    kit = load_kit(kit_dir)
    policy = Policy.load(policy_file) if policy_file else Policy.default()
    ledger = Ledger(ledger_dir, kit.signing_key, kit.party)
    host = address.rsplit(":", 1)[0]
    try:
        server = bind_server(address, kit)
    except BaseException:
        ledger.close()
        raise
    server.set_details(lambda: expiry_warnings(kit, within_days=cert_warn_days))
    log_expiry(kit, log, cert_warn_days)
    server.start()
    print(f"{kit.party}: scoring server at {host}:{server.port} is aligning its store with "
          "the platform and loading its release (health: NOT_SERVING)", flush=True)
    log.info("%s scoring server at %s:%d: loading", kit.party, host, server.port,
             extra={"event": "loading"})
    channel = secure_channel(platform_address, kit, "platform", ledger=ledger)
    try:
        scorer = build_scorer(kit, data_dir, release, platform_address, policy,
                              channel=channel, ledger=ledger)
        server.ready(scorer)
        server.follow(ledger)
    except BaseException:
        server.stop(grace=None)
        channel.close()
        ledger.close()
        raise
    print(f"{kit.party} scoring server on {host}:{server.port}: release "
          f"{scorer.model.version}, {len(scorer.store.row_of)} customers, "
          f"{int((scorer.store.handles >= 0).sum())} in the intersection", flush=True)
    log.info("%s scoring server serving on %s:%d: release %s", kit.party, host, server.port,
             scorer.model.version, extra={"event": "serving"})
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def _reload(signum: int, frame: FrameType | None) -> None:
        print(reload_logged(kit, log, cert_warn_days), flush=True)
        try:
            new, old = scorer.load_release(release)
            print(f"release {new} replaces {old}", flush=True)
            log.info("release %s replaces %s", new, old, extra={"event": "release"})
        except Exception as exc:
            print(f"release {release} not loaded, {scorer.model.version} stays: {exc}",
                  flush=True)
            log.warning("release %s not loaded, %s stays: %s", release,
                        scorer.model.version, exc, extra={"event": "release-refused"})

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    stop.wait()
    log.info("scoring server draining for %.1f s", drain_s, extra={"event": "draining"})
    server.stop(grace=2, drain_s=drain_s).wait()
    channel.close()
    ledger.close()
    log.info("scoring server stopped", extra={"event": "stopped"})
    print("scoring server stopped", flush=True)
