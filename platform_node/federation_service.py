"""Thin gRPC servicer through which the coordinator starts and finishes rounds on the platform.

Only a peer whose certificate names a coordinator-role party of the federation may
call it; the logic lives in :class:`~platform_node.federation.Federation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from fedscore.api.v1 import federation_pb2, federation_pb2_grpc
from fedscore.crypto.dp import DpSettings
from fedscore.federation.provision import StartupKit
from fedscore.wire.limits import MAX_NAME_CHARS, check_length
from fedscore.wire.transport import authorize_peer
from platform_node.federation import Federation, FederationError
from platform_node.model_store import StoreError

T = TypeVar("T")


class FederationServicer(federation_pb2_grpc.FederationServiceServicer):
    """The coordinator's round control on the platform; every call checks the caller's role."""

    def __init__(self, kit: StartupKit, federation: Federation) -> None:
        self._kit = kit
        self._federation = federation

    def _serve(self, context: grpc.ServicerContext, run_id: str, call: Callable[[], T]) -> T:
        """``call()`` for an authorized coordinator and a ``run_id`` of at most
        MAX_NAME_CHARS characters (INVALID_ARGUMENT, before any work); a FederationError
        ends the call with its own code, a StoreError with INTERNAL and a message that
        names the store."""
        authorize_peer(context, self._kit, "coordinator")
        check_length("run_id", run_id, MAX_NAME_CHARS)
        try:
            return call()
        except StoreError as exc:
            raise StoreError(f"platform model store: {exc}") from exc

    def StartRound(
        self, request: federation_pb2.StartRoundRequest, context: grpc.ServicerContext
    ) -> federation_pb2.StartRoundResponse:
        """Open a round of a run (with its embedding DP); answers the version it starts from."""
        dp = self._serve(context, request.run_id, lambda: _embedding_dp(request))
        version = self._serve(
            context, request.run_id,
            lambda: self._federation.start_round(request.run_id, request.round, request.seed,
                                                 embedding_dp=dp),
        )
        return federation_pb2.StartRoundResponse(base_version=version)

    def FinishRound(
        self, request: federation_pb2.FinishRoundRequest, context: grpc.ServicerContext
    ) -> federation_pb2.FinishRoundResponse:
        """Average and commit the round's sessions; answers the version and what went in."""
        done = self._serve(
            context, request.run_id,
            lambda: self._federation.finish_round(request.run_id, request.round,
                                                  tuple(request.banks)),
        )
        return federation_pb2.FinishRoundResponse(
            platform_model_version=done.version, sessions=done.sessions, rows=done.rows
        )

    def GetRunState(
        self, request: federation_pb2.GetRunStateRequest, context: grpc.ServicerContext
    ) -> federation_pb2.GetRunStateResponse:
        """The run's last finished round, its version and the embedding releases counted."""
        last, version = self._serve(context, request.run_id,
                                   lambda: self._federation.run_state(request.run_id))
        most, rows = self._federation.releases(request.run_id)
        return federation_pb2.GetRunStateResponse(
            last_round=last, platform_model_version=version, embedding_releases=most,
            embedding_released_rows=rows,
        )


def _embedding_dp(request: federation_pb2.StartRoundRequest) -> DpSettings | None:
    """The round's embedding mechanism; None when off; INVALID_ARGUMENT when malformed."""
    if request.embedding_dp_noise == 0:
        return None
    try:
        return DpSettings(request.embedding_dp_noise, request.embedding_dp_clip)
    except ValueError as exc:
        raise FederationError(f"StartRound: {exc}", code=grpc.StatusCode.INVALID_ARGUMENT) from None
