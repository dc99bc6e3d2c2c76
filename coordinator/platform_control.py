"""The coordinator's client of the platform's FederationService (over mTLS, coordinator kit).

Each round the coordinator starts it on the platform (which names the platform model
the round starts from) and finishes it (the platform averages its bottom-model copies
and stores the result durably). Errors carry the platform's status code and message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from fedscore.api.v1 import federation_pb2, federation_pb2_grpc
from fedscore.crypto.dp import DpSettings
from fedscore.errors import FedscoreError

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class PlatformControlError(FedscoreError, RuntimeError):
    """The platform refused or failed a federation call; ``code`` is the platform's gRPC
    status (UNKNOWN when the call failed without one)."""

    code = grpc.StatusCode.UNKNOWN


@dataclass(frozen=True)
class FinishedRound:
    """What the platform committed for a finished round."""

    version: str  # the platform model version committed for the round
    sessions: int  # bank sessions averaged
    rows: int  # training rows the platform forwarded in the round, over those sessions


class PlatformControl:
    """Start and finish a run's rounds on the platform node."""

    def __init__(self, channel: grpc.Channel, *, timeout: float | None = 60.0) -> None:
        self._stub = federation_pb2_grpc.FederationServiceStub(channel)
        self._timeout = timeout

    def start_round(self, run_id: str, round_: int, seed: int,
                    embedding_dp: DpSettings | None = None) -> str:
        """Open round ``round_`` (1-based); returns the platform model version it starts from.
        ``embedding_dp``: the Gaussian mechanism on the run's embeddings (None: off)."""
        dp = embedding_dp if embedding_dp is not None and embedding_dp.enabled else None
        reply = self._call(
            "StartRound", self._stub.StartRound,
            federation_pb2.StartRoundRequest(
                run_id=run_id, round=round_, seed=seed,
                embedding_dp_noise=dp.noise_multiplier if dp else 0.0,
                embedding_dp_clip=dp.clip if dp else 0.0,
            ),
        )
        return reply.base_version

    def embedding_releases(self, run_id: str) -> int:
        """The most noisy embedding releases of one customer since the round's start
        (its training and the evaluation after it); 0 when embedding DP is off."""
        reply = self._call(
            "GetRunState", self._stub.GetRunState,
            federation_pb2.GetRunStateRequest(run_id=run_id),
        )
        return int(reply.embedding_releases)

    def finish_round(self, run_id: str, round_: int, banks: Sequence[str] = ()
                     ) -> FinishedRound:
        """Average and store the round's platform model from the sessions of ``banks``
        (those whose updates the coordinator aggregated; empty: every committed session);
        its version and what went into it."""
        reply = self._call(
            "FinishRound", self._stub.FinishRound,
            federation_pb2.FinishRoundRequest(run_id=run_id, round=round_, banks=list(banks)),
        )
        return FinishedRound(reply.platform_model_version, int(reply.sessions), int(reply.rows))

    def run_state(self, run_id: str) -> tuple[int, str]:
        """(last finished round, its platform model version); (0, "") for a new run."""
        reply = self._call(
            "GetRunState", self._stub.GetRunState,
            federation_pb2.GetRunStateRequest(run_id=run_id),
        )
        return int(reply.last_round), reply.platform_model_version

    def _call(self, what: str, method: Callable[..., Resp], request: Req) -> Resp:
        """``wait_for_ready``: a connection that failed a moment ago (the platform busy or
        restarting) is retried within the timeout rather than failing the round at once."""
        try:
            return method(request, timeout=self._timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            code = (exc.code() if isinstance(exc, grpc.Call) else None) or grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise PlatformControlError(f"platform {what} failed: {code.name}: {details}",
                                       code=code) from exc
