"""A server interceptor that sees every message a node sends or receives, as bytes.

It wraps the method handlers' (de)serializers, so what it records is exactly the
application-layer payload handed to gRPC, after protobuf encoding and before TLS.
The privacy tests audit these bytes; the audit ledger hooks in at the same place.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import grpc


class Flow(enum.Enum):
    SENT = "sent"
    RECEIVED = "received"


Tap = Callable[[str, Flow, bytes], None]
"""(full method name, flow, serialized message) -> None."""


class MessageTap(grpc.ServerInterceptor):
    def __init__(self, tap: Tap) -> None:
        self._tap = tap

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        tap = self._tap
        serialize = handler.response_serializer
        deserialize = handler.request_deserializer

        def _serialize(message: Any) -> bytes:
            data: bytes = serialize(message) if serialize else message
            tap(method, Flow.SENT, data)
            return data

        def _deserialize(data: bytes) -> Any:
            tap(method, Flow.RECEIVED, data)
            return deserialize(data) if deserialize else data

        return handler._replace(response_serializer=_serialize, request_deserializer=_deserialize)
