"""The bank's scoring server: a thin gRPC servicer over :class:`bank_node.scoring.Scorer`.

Only the bank's own party may call it (its decision engine holds the bank's startup
kit); anyone else gets PERMISSION_DENIED. ``create_server`` binds an address (port 0 in
tests) and returns the port; ``serve`` is ``fedscore bank score-server``.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bank_node.policy import OUTCOMES, Decision, Outcome, Policy
from bank_node.scoring import (
    CustomerStore,
    PlatformEmbeddings,
    Scored,
    ScoredBatch,
    Scorer,
    ScoringError,
    ScoringModel,
)
from fedscore.api.v1 import scoring_pb2, scoring_pb2_grpc
from fedscore.provision import StartupKit
from fedscore.transport import GRPC_OPTIONS, add_secure_port, peer_party

log = logging.getLogger(__name__)

_OUTCOME_PB = {
    Outcome.APPROVE: scoring_pb2.OUTCOME_APPROVE,
    Outcome.REFER: scoring_pb2.OUTCOME_REFER,
    Outcome.DECLINE: scoring_pb2.OUTCOME_DECLINE,
}
_OUTCOME_INDEX_PB = np.array([_OUTCOME_PB[o] for o in OUTCOMES], np.int32)


def decision_to_pb(scored: Scored) -> scoring_pb2.ScoreResponse:
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
    def __init__(self, scorer: Scorer, party: str) -> None:
        self._scorer = scorer
        self._party = party

    def _only_own_party(self, context: grpc.ServicerContext) -> None:
        peer = peer_party(context)
        if peer != self._party:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{peer!r} may not use {self._party}'s scoring server")

    def Score(self, request: scoring_pb2.ScoreRequest, context: grpc.ServicerContext
              ) -> scoring_pb2.ScoreResponse:
        self._only_own_party(context)
        if not request.applicant_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "applicant_id: empty")
        amount = request.requested_amount
        if not (math.isfinite(amount) and amount >= 0):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"requested_amount = {amount}: expected a finite amount >= 0")
        try:
            scored = self._scorer.score(request.applicant_id, dict(request.features),
                                        request.consent_token, amount or None)
        except ScoringError as exc:
            context.abort(exc.code, str(exc))
        return decision_to_pb(scored)

    def ScoreBatch(self, request_iterator: Iterator[scoring_pb2.ScoreBatchRequest],
                   context: grpc.ServicerContext) -> Iterator[scoring_pb2.ScoreBatchResponse]:
        self._only_own_party(context)
        for request in request_iterator:
            try:
                batch = self._scorer.score_batch(list(request.applicant_ids))
            except ScoringError as exc:
                context.abort(exc.code, str(exc))
            yield batch_to_pb(batch, self._scorer.policy)

    def LoadRelease(self, request: scoring_pb2.LoadReleaseRequest,
                    context: grpc.ServicerContext) -> scoring_pb2.LoadReleaseResponse:
        self._only_own_party(context)
        try:
            new, old = self._scorer.load_release(Path(request.path))
        except ScoringError as exc:
            context.abort(exc.code, str(exc))
        except Exception as exc:  # ReleaseError, a missing folder: the old release stays
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info("scoring: release %s replaces %s", new, old)
        return scoring_pb2.LoadReleaseResponse(model_version=new, previous_model_version=old)


def create_server(address: str, scorer: Scorer, kit: StartupKit, *, max_workers: int = 16
                  ) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=GRPC_OPTIONS)
    scoring_pb2_grpc.add_ScoringServiceServicer_to_server(
        ScoringServicer(scorer, kit.party), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, add_secure_port(server, address, kit)


def build_scorer(kit: StartupKit, data_dir: Path, release: Path, platform_address: str,
                 policy: Policy, *, channel: grpc.Channel | None = None) -> Scorer:
    """PSI of the bank's store with the platform (a scoring session), then the release."""
    from bank_node.psi_client import run_psi
    from fedscore.transport import secure_channel

    table = CustomerStore.load_table(data_dir)
    link = channel or secure_channel(platform_address, kit, "platform")

    def connect() -> tuple[PlatformEmbeddings, CustomerStore]:
        psi = run_psi(link, table.ids, party=kit.party)
        return (PlatformEmbeddings(link, kit, psi),
                CustomerStore.of(table, psi.handles_for_rows(len(table.ids))))

    platform, store = connect()
    key = kit.peer("coordinator").verify_key
    model = ScoringModel.load(release, key, store)
    return Scorer(model, policy, store, platform, key, reconnect=connect)


def serve(kit_dir: Path, data_dir: Path, release: Path, platform_address: str, address: str,
          policy_file: Path | None, ledger_dir: Path) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP reloads ``release`` (a newer one put in its place).

    Every message to and from the platform is recorded in the ledger at ``ledger_dir``
    (the decision engine's calls stay inside the bank and are not).
    """
    import torch

    from fedscore.ledger import Ledger
    from fedscore.provision import load_kit
    from fedscore.transport import secure_channel

    torch.set_num_threads(1)
    kit = load_kit(kit_dir)
    policy = Policy.load(policy_file) if policy_file else Policy.default()
    ledger = Ledger(ledger_dir, kit.signing_key, kit.party)
    channel = secure_channel(platform_address, kit, "platform", ledger=ledger)
    scorer = build_scorer(kit, data_dir, release, platform_address, policy, channel=channel)
    server, port = create_server(address, scorer, kit)
    server.start()
    host = address.rsplit(":", 1)[0]
    print(f"{kit.party} scoring server on {host}:{port}: release {scorer.model.version}, "
          f"{len(scorer.store.row_of)} customers, "
          f"{int((scorer.store.handles >= 0).sum())} in the intersection", flush=True)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def _reload(signum: int, frame: FrameType | None) -> None:
        try:
            new, old = scorer.load_release(release)
            print(f"release {new} replaces {old}", flush=True)
        except Exception as exc:
            print(f"release {release} not loaded, {scorer.model.version} stays: {exc}",
                  flush=True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    stop.wait()
    server.stop(grace=2).wait()
    channel.close()
    ledger.close()
    print("scoring server stopped", flush=True)
