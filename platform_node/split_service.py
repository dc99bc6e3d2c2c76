"""Thin gRPC servicers for split learning and round control on the platform node.

They translate between the wire and :class:`~fedscore.ml.training.PlatformBottom`;
the arithmetic lives there, the crypto in :mod:`fedscore.crypto.primitives`, the protobuf
conversion in :mod:`fedscore.wire.serde`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import torch

from fedscore.api.v1 import (
    round_control_pb2,
    round_control_pb2_grpc,
    split_learning_pb2,
    split_learning_pb2_grpc,
)
from fedscore.crypto.dp import gaussian_mechanism
from fedscore.crypto.primitives import SealedBox, SealError
from fedscore.errors import FedscoreError
from fedscore.ml.training import MAX_PLATFORM_SNAPSHOTS, PlatformBottom
from fedscore.ops import metrics
from fedscore.wire import serde
from fedscore.wire.limits import (
    MAX_NAME_CHARS,
    MAX_STEP_ROWS,
    check_count,
    check_length,
    check_seed,
    quote,
)
from fedscore.wire.transport import peer_party
from platform_node.federation import Federation, RunPrivacy
from platform_node.model_store import StateDict, model_version
from platform_node.sessions import Session, SessionRegistry
from platform_node.training_store import TrainingStateError, TrainingStore

BottomFactory = Callable[[int, float, float, float], PlatformBottom]
"""(seed, learning rate, weight decay, EMA decay) -> a fresh platform bottom for one session."""


class StepRejected(FedscoreError):
    """A step the platform will not run: a payload that does not open or is for another
    round, a malformed command, a gradient of the wrong shape."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def _session(
    registry: SessionRegistry, session_id: bytes, context: grpc.ServicerContext
) -> Session:
    """The caller's session; SessionError (PERMISSION_DENIED) if it is not theirs."""
    return registry.get(session_id, peer_party(context, registry.kit))


def _opened(
    registry: SessionRegistry, session_id: bytes, context: grpc.ServicerContext
) -> tuple[Session, PlatformBottom]:
    session = _session(registry, session_id, context)
    if session.bottom is None:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "open the session first")
    assert session.bottom is not None
    return session, session.bottom


class SplitLearningServicer(split_learning_pb2_grpc.SplitLearningServiceServicer):
    """The Step stream: a bank's sealed forward and backward commands for its session."""

    def __init__(self, registry: SessionRegistry) -> None:
        self._registry = registry

    def Step(
        self,
        request_iterator: Iterator[split_learning_pb2.StepRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[split_learning_pb2.StepResponse]:
        """Answer each sealed step command of one open session round, in order; one stream
        per session at a time."""
        session: Session | None = None
        try:
            for request in request_iterator:
                box = serde.sealed_from_pb(request.sealed)
                if session is None:
                    session = _session(self._registry, box.session_id, context)
                    if session.bottom is None or session.opener is None:
                        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "open the session first")
                    if not session.stream_lock.acquire(blocking=False):
                        context.abort(grpc.StatusCode.ABORTED, "a step stream is already open")
                    steps = metrics.TRAINING_STEPS.labels(self._registry.party, session.peer)
                yield self._step(session, box, steps)
        except (SealError, ValueError) as exc:  # WireError, bad gradient shapes
            raise StepRejected(f"step rejected: {exc}") from exc
        finally:
            if session is not None and session.stream_lock.locked():
                session.stream_lock.release()

    @staticmethod
    def _step(session: Session, box: SealedBox, steps: Any = None
              ) -> split_learning_pb2.StepResponse:
        assert session.opener is not None and session.sealer is not None
        assert session.bottom is not None
        if box.round != session.round:
            raise SealError(f"payload is for round {box.round}, the session is in {session.round}")
        command = split_learning_pb2.StepCommand.FromString(session.opener.open(box))
        forward = command.mode in (split_learning_pb2.STEP_MODE_TRAIN,
                                   split_learning_pb2.STEP_MODE_EVAL)
        if not forward and command.mode != split_learning_pb2.STEP_MODE_BACKWARD:
            raise serde.WireError(f"unknown step mode {command.mode}")
        # every check of the command before any of it runs: a refused one changes nothing
        # (at most MAX_STEP_ROWS handles, LimitError; only handles inside this bank's
        # intersection: WireError otherwise)
        check_count("StepCommand.handles", len(command.handles) // 4, MAX_STEP_ROWS)
        handles = (serde.handles_from_bytes(command.handles, limit=session.psi.size)
                   if forward else None)
        if command.gradient.shape:
            grad = serde.tensor_from_pb(command.gradient, name="gradient")
            session.bottom.backward(torch.from_numpy(grad.copy()))
        result = split_learning_pb2.StepResult()
        if handles is not None:
            rows = session.psi.rows[handles]
            train = command.mode == split_learning_pb2.STEP_MODE_TRAIN
            embedding = session.bottom.forward(rows, train=train)
            if train:
                session.train_rows += int(rows.size)
                if steps is not None:
                    steps.inc()
            result.embedding.CopyFrom(serde.tensor_to_pb(embedding.detach().numpy()))
        sealed = session.sealer.seal(result.SerializeToString(), round=box.round, batch=box.batch)
        return split_learning_pb2.StepResponse(sealed=serde.sealed_to_pb(sealed))


class RoundControlServicer(round_control_pb2_grpc.RoundControlServiceServicer):
    """Opens, snapshots, commits and closes a bank's session rounds on the platform."""

    def __init__(
        self,
        registry: SessionRegistry,
        make_bottom: BottomFactory,
        federation: Federation | None = None,
        training: TrainingStore | None = None,
    ) -> None:
        self._registry = registry
        self._make_bottom = make_bottom
        self._federation = federation
        self._training = training or TrainingStore(None)
        self._resume_keys: dict[bytes, str] = {}  # session -> its resumable training's key

    def OpenSession(
        self, request: round_control_pb2.OpenSessionRequest, context: grpc.ServicerContext
    ) -> round_control_pb2.OpenSessionResponse:
        """Start the session's next round with a fresh (or the run's base) bottom model."""
        check_seed("seed", request.seed)  # LimitError (INVALID_ARGUMENT), before anything
        check_length("run_id", request.run_id, MAX_NAME_CHARS)
        check_length("base_version", request.base_version, MAX_NAME_CHARS)
        session = _session(self._registry, request.session_id, context)
        if not (request.learning_rate > 0 and np.isfinite(request.learning_rate)):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "learning_rate must be > 0")
        if not 0.0 <= request.ema_decay < 1.0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ema_decay must be in [0, 1)")
        base, base_version = self._base(request, context)
        bottom = self._make_bottom(
            request.seed, request.learning_rate, request.weight_decay, request.ema_decay
        )
        if base is not None:
            try:
                bottom.load_state_dict(base)
            except RuntimeError as exc:  # a stored model of another architecture
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"platform model {quote(base_version)} does not fit this "
                              f"node: {exc}")
        if request.resume_key:
            self._resumable(session, bottom, request, context)
        else:
            self._resume_keys.pop(session.session_id, None)
        privacy = self._privacy(request)
        if privacy is not None:  # noise from the OS's CSPRNG-seeded generator, per session
            bottom.noise = gaussian_mechanism(privacy.settings.clip,
                                              privacy.settings.noise_multiplier)
            bottom.releases = privacy.releases
        session.open_round(  # StaleRoundError (ABORTED): the bank runs PSI again
            request.round, bottom, run_id=request.run_id if request.federation_round else "",
            federation_round=request.federation_round,
        )
        return round_control_pb2.OpenSessionResponse(
            embedding_dim=bottom.out_dim,
            platform_model_version=base_version or session.committed_version or "",
        )

    def _resumable(self, session: Session, bottom: PlatformBottom,
                   request: round_control_pb2.OpenSessionRequest,
                   context: grpc.ServicerContext) -> None:
        """Keep this training's state at every epoch under its key; with resume_epoch,
        start from the state kept after that many epochs."""
        if request.federation_round or request.base_version:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "resume_key is for a bank's own training, not a federated run's")
        try:
            if request.resume_epoch:
                bottom.load_training_state(self._training.load(
                    session.peer, request.resume_key, request.resume_epoch))
            else:
                self._training.forget(session.peer, request.resume_key)
        except TrainingStateError as exc:
            context.abort(exc.code, exc.message)
        self._resume_keys[session.session_id] = request.resume_key

    def _privacy(self, request: round_control_pb2.OpenSessionRequest) -> RunPrivacy | None:
        """The embedding DP of a session of a federated run: training in one of its
        rounds, or evaluation with one of its models (a version this node knows the run
        of takes that run's, whatever run id the bank names); None for other sessions."""
        if self._federation is None or not (request.federation_round or request.base_version):
            return None
        version = "" if request.federation_round else request.base_version
        return self._federation.privacy(request.run_id, version)

    def _base(
        self, request: round_control_pb2.OpenSessionRequest, context: grpc.ServicerContext
    ) -> tuple[StateDict | None, str]:
        """(weights, version) the session starts from; (None, "") for fresh weights."""
        if not request.federation_round and not request.base_version:
            return None, ""
        if self._federation is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node does not federate")
        assert self._federation is not None
        if request.federation_round:
            return self._federation.base(request.run_id, request.federation_round)
        return self._federation.by_version(request.base_version), request.base_version

    def EndEpoch(
        self, request: round_control_pb2.EndEpochRequest, context: grpc.ServicerContext
    ) -> round_control_pb2.EndEpochResponse:
        """Snapshot the session's bottom model as of ``request.epoch`` (and keep its whole
        state durably when the training is resumable)."""
        session, bottom = _opened(self._registry, request.session_id, context)
        bottom.snapshot(request.epoch)
        key = self._resume_keys.get(session.session_id)
        if key is not None:
            self._training.save(session.peer, key, request.epoch + 1, bottom.training_state())
        return round_control_pb2.EndEpochResponse()

    def CommitRound(
        self, request: round_control_pb2.CommitRoundRequest, context: grpc.ServicerContext
    ) -> round_control_pb2.CommitRoundResponse:
        """Restore the epoch's snapshot as the round's model; counts it in its federated
        round's average."""
        session, bottom = _opened(self._registry, request.session_id, context)
        try:
            bottom.restore(request.epoch)
        except KeyError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"no snapshot of epoch {request.epoch} (the platform keeps the last "
                          f"{MAX_PLATFORM_SNAPSHOTS} epochs ended)")
        state = bottom.state_dict()
        if session.federation_round:
            assert self._federation is not None  # OpenSession refused it otherwise
            self._federation.contribute(
                session.run_id, session.federation_round, session.session_id, state,
                session.train_rows, bank=session.peer,
            )
        session.committed_version = model_version(request.round, state)
        return round_control_pb2.CommitRoundResponse(
            platform_model_version=session.committed_version
        )

    def CloseSession(
        self, request: round_control_pb2.CloseSessionRequest, context: grpc.ServicerContext
    ) -> round_control_pb2.CloseSessionResponse:
        """Forget the caller's session."""
        self._registry.close(request.session_id, peer_party(context, self._registry.kit))
        self._resume_keys.pop(request.session_id, None)
        return round_control_pb2.CloseSessionResponse()
