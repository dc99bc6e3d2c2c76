"""The bank's view of the platform during split learning: a PlatformLink over mTLS gRPC.

One bidirectional ``Step`` stream carries the whole session. A gradient is not sent
on its own: it rides with the next batch's forward request, so a training step costs
one round trip, and the platform applies it before that forward, exactly the order
an in-process link would use. Every command and result is sealed (AES-256-GCM) with
the session key; the platform's answer must echo the batch number it was asked for.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import numpy as np
import torch

from fedscore.api.v1 import (
    round_control_pb2,
    round_control_pb2_grpc,
    split_learning_pb2,
    split_learning_pb2_grpc,
)
from fedscore.crypto.primitives import Direction, Opener, Sealer, derive_session_key
from fedscore.crypto.psi import PsiResult
from fedscore.errors import FedscoreError
from fedscore.federation.provision import StartupKit
from fedscore.ml.training import TrainConfig
from fedscore.wire import serde

_END = object()
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class PlatformError(FedscoreError, RuntimeError):
    """The platform refused or failed a call; the message is the platform's own.

    ``code`` is the platform's gRPC status; the class's INTERNAL when the platform
    answered but the answer was wrong. On the calls that name the session, two codes mean
    the bank must run PSI again: PERMISSION_DENIED (the platform does not know the
    session: it restarted, or closed it) and, from OpenSession, ABORTED (the session is
    already past the round asked for: the bank's saved round counter is behind).
    """

    code = grpc.StatusCode.INTERNAL

    @classmethod
    def from_rpc(cls, what: str, exc: grpc.RpcError) -> PlatformError:
        """The error for a failed call ``what``, with the platform's code and message."""
        code = (exc.code() if isinstance(exc, grpc.Call) else None) or grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return cls(f"platform {what} failed: {code.name}: {details}", code=code)


class GrpcPlatformLink:
    """PlatformLink implementation for a bank talking to a remote platform node."""

    def __init__(
        self,
        channel: grpc.Channel,
        kit: StartupKit,
        psi: PsiResult,
        cfg: TrainConfig,
        *,
        round_: int = 0,
        platform_party: str = "platform",
        run_id: str = "",
        federation_round: int = 0,
        base_version: str = "",
        resume_key: str = "",
        phase: str = "search",
        resume_epoch: int = 0,
    ) -> None:
        """Open the session; the platform's optimizer takes its settings from ``cfg``.

        Where the platform's bottom model starts: ``federation_round > 0``: from round
        ``federation_round`` of ``run_id`` (open on the platform), and the commit counts
        in that round's average; else ``base_version``: that committed model
        (evaluation); else fresh weights from ``cfg.seed``. ``resume_key`` (a bank's own
        training): the platform keeps the training's state at every epoch, per
        ``phase`` ("search", then "refit" after :meth:`restart`), and ``resume_epoch``
        > 0 starts it from the state kept after that many epochs.
        """
        self._resume_key, self.phase, self._resume_epoch = resume_key, phase, resume_epoch
        self._run_id = run_id
        self._federation_round = federation_round
        self._base_version = base_version
        self._control = round_control_pb2_grpc.RoundControlServiceStub(channel)
        self._split = split_learning_pb2_grpc.SplitLearningServiceStub(channel)
        self._session_id = psi.session_id
        self._round = round_
        self._cfg = cfg
        opened = self._open()
        self.embedding_dim = int(opened.embedding_dim)
        self.platform_model_version = opened.platform_model_version
        self._key = derive_session_key(
            kit.sealing_key, kit.peers[platform_party].sealing_public, psi.session_id
        )
        self._new_round_keys()
        self._pending: np.ndarray | None = None
        self._batch = 0
        self._requests: queue.Queue[object] | None = None
        self._responses: Iterator[split_learning_pb2.StepResponse] | None = None

    def _new_round_keys(self) -> None:
        # A fresh sealer and opener per session round, each under the round's own key:
        # the platform refuses to open a round twice, so no (key, nonce) pair repeats
        # even when this bank process restarts between rounds.
        key = self._key.for_round(self._round)
        self._sealer = Sealer(key, self._session_id, Direction.BANK_TO_PLATFORM)
        self._opener = Opener(key, self._session_id, Direction.PLATFORM_TO_BANK)

    # -- PlatformLink -------------------------------------------------------------------------

    def forward(self, handles: np.ndarray, train: bool) -> torch.Tensor:
        """The platform's embeddings of ``handles`` (``train``: in training mode)."""
        mode = split_learning_pb2.STEP_MODE_TRAIN if train else split_learning_pb2.STEP_MODE_EVAL
        embedding = self._exchange(mode, handles)
        return torch.from_numpy(embedding.copy())  # [b, embedding_dim]

    def backward(self, grad: torch.Tensor) -> None:
        """Keep the gradient for the embeddings; it rides with the next request."""
        if self._pending is not None:
            raise RuntimeError("backward called twice without a forward in between")
        self._pending = grad.detach().to(torch.float32).numpy()

    def end_epoch(self, epoch: int) -> None:
        """Have the platform snapshot its bottom model as of ``epoch``."""
        self._flush()
        self._call("EndEpoch", self._control.EndEpoch,
                   round_control_pb2.EndEpochRequest(session_id=self._session_id, epoch=epoch))

    def commit(self, epoch: int) -> None:
        """Commit the platform's bottom model as of ``epoch``; keeps its version."""
        self._flush()
        reply = self._call(
            "CommitRound",
            self._control.CommitRound,
            round_control_pb2.CommitRoundRequest(
                session_id=self._session_id, round=self._round, epoch=epoch
            ),
        )
        self.platform_model_version = reply.platform_model_version

    @property
    def session_round(self) -> int:
        """The session round this link has open (a resumed link opens a later one)."""
        return self._round

    def restart(self) -> None:
        """Start the platform's bottom model afresh in the next round of this session."""
        self.phase = "refit"
        self._next_round()

    def reopen(self, *, federation_round: int = 0, base_version: str = "") -> None:
        """Open the next session round with new federation settings (same run, same PSI).

        One PSI session serves every round of a federated run: train in round r with
        ``federation_round=r``, evaluate with ``base_version=`` the round's version.
        """
        self._federation_round = federation_round
        self._base_version = base_version
        self._next_round()

    def _next_round(self) -> None:
        self._flush()
        self._end_stream()
        self._round += 1
        self._batch = 0
        opened = self._open()
        self._new_round_keys()
        self.platform_model_version = opened.platform_model_version
        if opened.embedding_dim != self.embedding_dim:
            raise PlatformError(
                f"platform changed its embedding size from {self.embedding_dim} to "
                f"{opened.embedding_dim} within a session"
            )

    def detach(self) -> None:
        """End the stream but keep the session, for a later process to open its next round."""
        self._flush()
        self._end_stream()

    def close(self) -> None:
        """End the stream and the session; the platform forgets the handles."""
        self._flush()
        self._end_stream()
        self._call("CloseSession", self._control.CloseSession,
                   round_control_pb2.CloseSessionRequest(session_id=self._session_id))

    # -- wire -----------------------------------------------------------------------------------

    def _open(self) -> round_control_pb2.OpenSessionResponse:
        request = round_control_pb2.OpenSessionRequest(
            session_id=self._session_id,
            round=self._round,
            seed=self._cfg.seed,
            learning_rate=self._cfg.lr,
            weight_decay=self._cfg.weight_decay,
            ema_decay=self._cfg.ema_decay,
            run_id=self._run_id,
            federation_round=self._federation_round,
            base_version=self._base_version,
            resume_key=f"{self._resume_key}/{self.phase}" if self._resume_key else "",
            resume_epoch=self._resume_epoch,
        )
        self._resume_epoch = 0  # once: a later round of the session starts afresh
        return self._call("OpenSession", self._control.OpenSession, request)

    def _flush(self) -> None:
        if self._pending is not None:
            self._exchange(split_learning_pb2.STEP_MODE_BACKWARD, np.zeros(0, np.int64))

    def _exchange(self, mode: int, handles: np.ndarray) -> np.ndarray:
        command = split_learning_pb2.StepCommand(
            mode=split_learning_pb2.StepMode.ValueType(mode),
            handles=serde.handles_to_bytes(handles),
        )
        if self._pending is not None:
            command.gradient.CopyFrom(serde.tensor_to_pb(self._pending))
            self._pending = None
        box = self._sealer.seal(command.SerializeToString(), round=self._round, batch=self._batch)
        if self._requests is None:
            self._requests = queue.Queue()
            self._responses = self._split.Step(iter(self._requests.get, _END))
        assert self._responses is not None
        self._requests.put(split_learning_pb2.StepRequest(sealed=serde.sealed_to_pb(box)))
        try:
            reply = next(self._responses)
        except grpc.RpcError as exc:
            self._requests = self._responses = None
            raise PlatformError.from_rpc("Step", exc) from exc
        reply_box = serde.sealed_from_pb(reply.sealed)
        if reply_box.batch != self._batch or reply_box.round != self._round:
            raise PlatformError(
                f"platform answered batch {reply_box.batch} of round {reply_box.round}, "
                f"expected batch {self._batch} of round {self._round}"
            )
        result = split_learning_pb2.StepResult.FromString(self._opener.open(reply_box))
        self._batch += 1
        if mode == split_learning_pb2.STEP_MODE_BACKWARD:
            return np.zeros((0, self.embedding_dim), np.float32)
        return serde.tensor_from_pb(result.embedding, rows=len(handles),
                                    name="embedding")

    def _end_stream(self) -> None:
        if self._requests is not None and self._responses is not None:
            self._requests.put(_END)
            for _ in self._responses:  # drain; the platform answers every request
                pass
        self._requests = self._responses = None

    @staticmethod
    def _call(what: str, method: Callable[[Req], Resp], request: Req) -> Resp:
        try:
            return method(request)
        except grpc.RpcError as exc:
            raise PlatformError.from_rpc(what, exc) from exc
