"""The ledger's gRPC taps: every message a node sends or receives, recorded as its bytes.

The taps wrap each method's (de)serializers, so what they record is exactly the
application-layer payload handed to gRPC, after protobuf encoding and before TLS, and the
two ends of a call hash the same bytes. :class:`LedgerTap` is the server's interceptor,
:class:`SerializerTap` and :class:`LedgerChannel` the client's (what
:func:`fedscore.wire.transport.secure_channel` returns when given a ledger);
:func:`default_kind` and its siblings say what each fedscore message is. :class:`MessageTap`
hands the bytes to any callable instead of a ledger (the privacy tests audit them).

What a node records is what it handed to gRPC, and a call that then fails gets a second,
"failed" entry with its status (:meth:`fedscore.ledger.writer.Ledger.record_failed`), so an
auditor tells a message that never arrived from one that was hidden. A client's unary
request is recorded (signed and in the OS) before the call starts and the call is not made
if it cannot be recorded (the :class:`LedgerError` reaches the caller; a serializer that
raises would not do: ``grpc.aio`` sends an empty message instead); a server's answer made
after its client gave up (the call no longer active: cancelled, or past its deadline) is
recorded as sent, then failed with CANCELLED.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import threading
from collections.abc import Callable, Collection, Generator
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from fedscore.crypto.primitives import POINT_SIZE
from fedscore.ledger.entry import LedgerError, is_int
from fedscore.ledger.writer import Ledger

log = logging.getLogger(__name__)


class Flow(enum.Enum):
    """Which way a message went, as the end that sees it: sent or received."""

    SENT = "sent"
    RECEIVED = "received"


Tap = Callable[[str, Flow, bytes], None]
"""(full method name, flow, serialized message) -> None."""


class MessageTap(grpc.ServerInterceptor):
    """A server interceptor handing every message's serialized bytes to ``tap``.

    Like :class:`LedgerTap` it wraps the handlers' (de)serializers, but records nothing
    itself: what a test or a probe does with the bytes is up to ``tap``.
    """

    def __init__(self, tap: Tap) -> None:
        self._tap = tap

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler, with its (de)serializers wrapped to call ``tap``."""
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


# --------------------------------------------------------------------------------------------
# gRPC: what kind of payload each fedscore message is
# --------------------------------------------------------------------------------------------

KindOf = Callable[[str, Flow], str]
"""(full method name, flow as the SERVER sees it) -> kind.

Flow.RECEIVED is the request (client -> server) and Flow.SENT the response, on both ends:
the client tap asks for its requests with Flow.RECEIVED, so both ends name a message alike.
"""
PurposeOf = Callable[[str], str]
"""full method name -> purpose."""

_KINDS: dict[str, tuple[str, str, str]] = {
    # service: (kind of requests, kind of responses, purpose)
    "fedscore.v1.PsiService": ("psi-blinded-ids", "psi-blinded-ids", "alignment"),
    "fedscore.v1.SplitLearningService": ("gradients", "embeddings", "training"),
    "fedscore.v1.RoundControlService": ("control", "control", "training"),
    "fedscore.v1.FederationService": ("federation-control", "federation-control", "federation"),
    "fedscore.v1.EmbeddingService": ("embedding-query", "embeddings", "scoring"),
    "fedscore.v1.ScoringService": ("score", "score", "scoring"),
    "grpc.health.v1.Health": ("health", "health", "health"),
}


HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
"""Readiness probes: no party's data, asked by anything that watches a node; not recorded."""
REFLECTION_METHODS = frozenset({
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
})
"""Server reflection: a server's service descriptors, public; not recorded."""
PROBE_METHODS = HEALTH_METHODS | REFLECTION_METHODS
"""What a server leaves out of its ledger: health checks and reflection."""


def _service(method: str) -> str:
    return method.lstrip("/").split("/", 1)[0]


def default_kind(method: str, flow: Flow) -> str:
    """fedscore's services: PSI points, gradients (bank sends) and embeddings (platform
    sends), embedding queries, control messages, scores; "other" for anything else."""
    kinds = _KINDS.get(_service(method))
    if kinds is None:
        return "other"
    return kinds[0] if flow is Flow.RECEIVED else kinds[1]


def default_purpose(method: str) -> str:
    """alignment (PSI, for training or scoring), training, federation, scoring, health."""
    kinds = _KINDS.get(_service(method))
    return kinds[2] if kinds is not None else "other"


def default_round(message: object) -> int:
    """The message's ``round`` field, or its sealed envelope's; 0 when it has none."""
    r = getattr(message, "round", None)
    if is_int(r):
        return r
    r = getattr(getattr(message, "sealed", None), "round", None)
    return r if is_int(r) else 0


PSI_RESULT_KIND = "psi-result"
"""Kind of PSI's final ``Done`` message: its rows are the intersection size it announces."""


def _psi_step(message: object) -> str | None:
    if type(message).__name__ not in ("IntersectRequest", "IntersectResponse"):
        return None
    step: str | None = message.WhichOneof("step")  # type: ignore[attr-defined]
    return step


def message_kind(kind: str, message: object) -> str:
    """Refine ``kind`` by the message itself: a PSI ``Done`` is "psi-result", not points.

    ``kind_of`` sees only the method and direction; the ``Done`` that closes a PSI stream
    carries no ids but the intersection size, which an auditor wants to see apart from the
    points (``fedscore audit report`` reads it from these entries' rows).
    """
    if kind == "psi-blinded-ids" and _psi_step(message) == "done":
        return PSI_RESULT_KIND
    return kind


def default_rows(message: object) -> int:
    """Ids in a PSI points message (32 bytes each), the intersection size a PSI ``Done``
    announces; 0 for anything else (sealed payloads do not show their row count, and
    opening them here would defeat end-to-end sealing)."""
    step = _psi_step(message)
    if step in ("blinded", "double_blinded"):
        return len(getattr(message, step).points) // POINT_SIZE
    if step == "done":
        return int(message.done.intersection_size)  # type: ignore[attr-defined]
    return 0


Record = Callable[[str, bytes, object], None]
"""Records one message (peer, its serialized bytes, the message) of one method and flow."""
Failed = Callable[[grpc.StatusCode], None]
"""Records that the call of a request recorded as sent failed, with its status."""
Send = Callable[[Any], tuple[bytes, Failed]]
"""Serializes a request and records it as sent: (its bytes, what records a failure)."""
Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None


class _Describer:
    """Turns the messages of one method into ledger entries; shared by the server and
    client taps. Kind and purpose come from the method alone, so they are settled once per
    method (or RPC); per message only the round, the rows and PSI's ``Done`` are read."""

    def __init__(
        self,
        ledger: Ledger,
        kind_of: KindOf,
        purpose_of: PurposeOf,
        round_of: Callable[[object], int],
        rows_of: Callable[[object], int],
        wait: bool,
    ) -> None:
        self.kind_of = kind_of
        self.purpose_of = purpose_of
        self.round_of = round_of
        self.rows_of = rows_of
        self.ledger = ledger
        self._write = ledger.record if wait else ledger.submit

    def failed(self, peer: str, kind: str, purpose: str, data: bytes, message: object,
               code: grpc.StatusCode, digest: str | None = None) -> None:
        """Record that the call carrying ``data`` (recorded as sent) failed with ``code``;
        a ledger that cannot take it is logged, not raised: the call failed already."""
        try:
            self.ledger.record_failed(
                peer, message_kind(kind, message),
                digest or hashlib.sha256(data).hexdigest(), len(data), code.name,
                rows=self.rows_of(message), round=self.round_of(message), purpose=purpose)
        except LedgerError as exc:
            log.warning("a failed call to %s could not be recorded as failed: %s", peer, exc)

    def sender(self, method: str, peer: str, serialize: Serializer) -> Send:
        """What serializes ``method``'s requests to ``peer`` and records each (signed, in
        the OS) before it is sent; returns the bytes and what records the call's failure."""
        kind, purpose = self.kind_of(method, Flow.RECEIVED), self.purpose_of(method)
        ledger, round_of, rows_of = self.ledger, self.round_of, self.rows_of

        def send(message: Any) -> tuple[bytes, Failed]:
            data: bytes = serialize(message) if serialize else message
            digest = hashlib.sha256(data).hexdigest()
            ledger.record_digest(peer, "sent", message_kind(kind, message), digest, len(data),
                                 rows=rows_of(message), round=round_of(message),
                                 purpose=purpose)

            def failed(code: grpc.StatusCode) -> None:
                self.failed(peer, kind, purpose, data, message, code, digest)

            return data, failed

        return send

    def recorder(self, method: str, server_flow: Flow, sent: bool) -> Record:
        """What records ``method``'s messages flowing ``server_flow`` (as the server sees
        them), ``sent`` or received by this end."""
        kind, purpose = self.kind_of(method, server_flow), self.purpose_of(method)
        direction = "sent" if sent else "received"
        write, round_of, rows_of = self._write, self.round_of, self.rows_of

        def record(peer: str, data: bytes, message: object) -> None:
            write(peer, direction, message_kind(kind, message), data,
                  rows=rows_of(message), round=round_of(message), purpose=purpose)

        return record


# --------------------------------------------------------------------------------------------
# gRPC server side
# --------------------------------------------------------------------------------------------


def _client_party(context: grpc.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name") or []
    if len(names) == 1:
        return str(names[0].decode("utf-8", "replace"))
    return f"unauthenticated({context.peer()})"


class _ServerCall:
    """One RPC on the server: messages seen before the peer is known wait for it.

    A unary request is deserialized before the handler runs, and only the handler sees
    the context (hence the client's certificate); it is recorded as the handler starts.
    """

    __slots__ = ("_context", "_d", "_lock", "_method", "_peer", "_pending", "received",
                 "sent")

    def __init__(self, describer: _Describer, method: str) -> None:
        self.received = describer.recorder(method, Flow.RECEIVED, False)
        self.sent = describer.recorder(method, Flow.SENT, True)
        self._d, self._method = describer, method
        self._context: grpc.ServicerContext | None = None
        self._peer: str | None = None
        self._pending: list[tuple[Record, bytes, object]] = []
        self._lock = threading.Lock()

    def message(self, record: Record, data: bytes, message: object) -> None:
        peer = self._peer  # once set, never changes: no lock on the hot path
        if peer is None:
            with self._lock:
                if self._peer is None:
                    self._pending.append((record, data, message))
                    return
                peer = self._peer
        record(peer, data, message)

    def answered(self, data: bytes, message: object) -> None:
        """An answer was handed to gRPC: recorded as sent, and as failed (CANCELLED)
        when its client has gone (cancelled, or past its deadline): it will not arrive."""
        self.message(self.sent, data, message)
        context, peer = self._context, self._peer
        if context is not None and peer is not None and not context.is_active():
            d = self._d
            d.failed(peer, d.kind_of(self._method, Flow.SENT), d.purpose_of(self._method),
                     data, message, grpc.StatusCode.CANCELLED)

    def bind(self, context: grpc.ServicerContext) -> None:
        peer = _client_party(context)
        with self._lock:
            self._context = context
            self._peer = peer
            pending, self._pending = self._pending, []
        for record, data, message in pending:
            record(peer, data, message)


class LedgerTap(grpc.ServerInterceptor):
    """Records every message a gRPC server receives or sends, as its serialized bytes.

    Like :class:`MessageTap` it wraps the handlers' (de)serializers,
    so the SHA-256 is of exactly the application-layer bytes; it also wraps the handler to
    learn the peer (the client certificate's CN). Entries go through :meth:`Ledger.submit`;
    with ``wait=True`` through :meth:`Ledger.record` instead, so that each entry is signed
    and in the OS before its message is delivered or sent, and a message that cannot be
    recorded fails its call (~50 µs more per message). A request that cannot be
    deserialized never reaches the handler and is not recorded. Methods in ``ignore`` (full
    names) are not recorded.
    """

    def __init__(
        self,
        ledger: Ledger,
        kind_of: KindOf = default_kind,
        purpose_of: PurposeOf = default_purpose,
        *,
        round_of: Callable[[object], int] = default_round,
        rows_of: Callable[[object], int] = default_rows,
        ignore: Collection[str] = (),
        wait: bool = False,
    ) -> None:
        self._d = _Describer(ledger, kind_of, purpose_of, round_of, rows_of, wait)
        self._ignore = frozenset(ignore)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler with its (de)serializers and behaviours wrapped to record
        each message and learn the peer; unchanged for an ignored or unknown method."""
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        if handler is None or method in self._ignore:
            return handler
        call = _ServerCall(self._d, method)
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer

        def _deserialize(data: bytes) -> Any:
            message = deserialize(data) if deserialize else data
            call.message(call.received, data, message)
            return message

        def _serialize(message: Any) -> bytes:
            data: bytes = serialize(message) if serialize else message
            call.answered(data, message)
            return data

        def _wrap(behavior: Callable[[Any, Any], Any] | None) -> Callable[[Any, Any], Any] | None:
            if behavior is None:
                return None

            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                call.bind(context)
                return behavior(request, context)

            return wrapped

        return handler._replace(
            request_deserializer=_deserialize,
            response_serializer=_serialize,
            unary_unary=_wrap(handler.unary_unary),
            unary_stream=_wrap(handler.unary_stream),
            stream_unary=_wrap(handler.stream_unary),
            stream_stream=_wrap(handler.stream_stream),
        )


# --------------------------------------------------------------------------------------------
# gRPC client side
# --------------------------------------------------------------------------------------------


class SerializerTap:
    """Records what a client sends to and receives from ``peer`` (the server's party) by
    wrapping each method's (de)serializers, as :class:`LedgerTap` does on the server: the
    entry is of exactly the bytes gRPC sends or received, taken as they are made or read,
    so it matches the server's. A request is recorded when it is serialized (before gRPC
    sends it), a response when it is deserialized (a response the caller never reads is
    not recorded; a refused call records only its request). A unary-unary call's request
    is recorded before the call starts, which is not made when the ledger cannot take it,
    and a failed call is recorded as failed with its status (:class:`TappedFactories`).
    Methods in ``ignore`` (full names) are not recorded; ``wait`` as for
    :class:`LedgerTap`.

    Client interceptors would do the same at several times the cost (``docs/ledger.md``).
    """

    def __init__(
        self,
        ledger: Ledger,
        peer: str,
        kind_of: KindOf = default_kind,
        purpose_of: PurposeOf = default_purpose,
        *,
        round_of: Callable[[object], int] = default_round,
        rows_of: Callable[[object], int] = default_rows,
        ignore: Collection[str] = (),
        wait: bool = False,
    ) -> None:
        self._d = _Describer(ledger, kind_of, purpose_of, round_of, rows_of, wait)
        self.peer = peer
        self._ignore = frozenset(ignore)

    def wrap(self, method: str | bytes, request_serializer: Serializer,
             response_deserializer: Deserializer) -> tuple[Serializer, Deserializer]:
        """``method``'s serializers, recording each message they handle."""
        name = method.decode() if isinstance(method, bytes) else str(method)
        if name in self._ignore:
            return request_serializer, response_deserializer
        sent = self._d.recorder(name, Flow.RECEIVED, True)
        received = self._d.recorder(name, Flow.SENT, False)
        peer = self.peer

        def serialize(message: Any) -> bytes:
            data: bytes = request_serializer(message) if request_serializer else message
            sent(peer, data, message)
            return data

        def deserialize(data: bytes) -> Any:
            message = response_deserializer(data) if response_deserializer else data
            received(peer, data, message)
            return message

        return serialize, deserialize

    def unary(self, method: str | bytes, request_serializer: Serializer,
              response_deserializer: Deserializer) -> tuple[Send, Deserializer] | None:
        """For a unary-unary ``method``: what records and serializes a request before its
        call (:meth:`_Describer.sender`) and the recording response deserializer; None for
        an ignored method."""
        name = method.decode() if isinstance(method, bytes) else str(method)
        if name in self._ignore:
            return None
        _, deserialize = self.wrap(name, request_serializer, response_deserializer)
        return self._d.sender(name, self.peer, request_serializer), deserialize


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    code = exc.code() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


class _RecordedUnary:
    """A sync unary-unary callable whose request is recorded before the call starts (no
    call when it cannot be) and whose failure is recorded with its status."""

    def __init__(self, inner: Any, send: Send) -> None:
        self._inner = inner
        self._send = send

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        """As the channel's callable (its response, or grpc.RpcError)."""
        return self._invoke(self._inner, request, *args, **kwargs)

    def with_call(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        """As the channel's ``with_call``."""
        return self._invoke(self._inner.with_call, request, *args, **kwargs)

    def future(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        """As the channel's ``future``; a failure is recorded when the call ends."""
        data, failed = self._send(request)
        future = self._inner.future(data, *args, **kwargs)

        def done(f: Any) -> None:
            if f.code() != grpc.StatusCode.OK:
                failed(f.code())

        future.add_done_callback(done)
        return future

    def _invoke(self, fn: Callable[..., Any], request: Any, *args: Any, **kwargs: Any
                ) -> Any:
        data, failed = self._send(request)
        try:
            return fn(data, *args, **kwargs)
        except grpc.RpcError as exc:
            failed(_code(exc))
            raise


class _AioRecordedCall:
    """An aio unary-unary call whose failure (or cancellation) is recorded when awaited."""

    def __init__(self, call: Any, failed: Failed) -> None:
        self._call = call
        self._failed = failed

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._call.__await__())
        except grpc.RpcError as exc:
            self._failed(_code(exc))
            raise
        except asyncio.CancelledError:
            self._failed(grpc.StatusCode.CANCELLED)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _AioRecordedUnary:
    """:class:`_RecordedUnary` for a ``grpc.aio`` channel."""

    def __init__(self, inner: Any, send: Send) -> None:
        self._inner = inner
        self._send = send

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> _AioRecordedCall:
        """The call, its request recorded first (LedgerError: not recorded, not made)."""
        data, failed = self._send(request)
        return _AioRecordedCall(self._inner(data, *args, **kwargs), failed)


class TappedFactories:
    """The four multi-callable factories of a channel wrapper, with each method's
    serializers wrapped by ``self.tap``: shared by the sync and the aio ledger channels."""

    _channel: Any
    tap: SerializerTap

    def unary_unary(self, method: str, request_serializer: Serializer = None,
                    response_deserializer: Deserializer = None, **kwargs: Any) -> Any:
        """The channel's unary-unary callable for ``method``, its messages recorded: the
        request before the call starts, a failure with its status."""
        tapped = self.tap.unary(method, request_serializer, response_deserializer)
        if tapped is None:
            return self._channel.unary_unary(method, request_serializer,
                                             response_deserializer, **kwargs)
        send, deserialize = tapped
        inner = self._channel.unary_unary(method, None, deserialize, **kwargs)
        if isinstance(self._channel, grpc.aio.Channel):
            return _AioRecordedUnary(inner, send)
        return _RecordedUnary(inner, send)

    def unary_stream(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, **kwargs: Any) -> Any:
        """The channel's unary-stream callable for ``method``, its messages recorded."""
        return self._channel.unary_stream(
            method, *self.tap.wrap(method, request_serializer, response_deserializer),
            **kwargs)

    def stream_unary(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, **kwargs: Any) -> Any:
        """The channel's stream-unary callable for ``method``, its messages recorded."""
        return self._channel.stream_unary(
            method, *self.tap.wrap(method, request_serializer, response_deserializer),
            **kwargs)

    def stream_stream(self, method: str, request_serializer: Serializer = None,
                      response_deserializer: Deserializer = None, **kwargs: Any) -> Any:
        """The channel's stream-stream callable for ``method``, its messages recorded."""
        return self._channel.stream_stream(
            method, *self.tap.wrap(method, request_serializer, response_deserializer),
            **kwargs)


class LedgerChannel(TappedFactories, grpc.Channel):
    """``channel`` with every message recorded by ``tap``: what
    :func:`fedscore.wire.transport.secure_channel` returns when given a ledger."""

    def __init__(self, channel: grpc.Channel, tap: SerializerTap) -> None:
        self._channel = channel
        self.tap = tap

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """As the wrapped channel's ``subscribe``."""
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """As the wrapped channel's ``unsubscribe``."""
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        """Close the wrapped channel (the ledger is its owner's to close)."""
        self._channel.close()

    def __enter__(self) -> LedgerChannel:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
