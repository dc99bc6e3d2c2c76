"""The one place where an error that ends a gRPC call becomes the status its peer sees.

Every fedscore server installs :class:`StatusInterceptor` (``grpc.server``) or
:class:`AioStatusInterceptor` (``grpc.aio.server``). A handler then raises instead of
aborting:

- a :class:`~fedscore.errors.FedscoreError` ends the call with the error's ``code`` and
  ``message`` (written to be safe to send);
- any other exception ends it with INTERNAL and the fixed :data:`INTERNAL_MESSAGE`,
  never the exception's text (which could hold an id or a feature value); the exception
  is logged here, with its traceback, on this node only.

A handler that chose its status itself (``context.abort``, or ``set_code`` before it
raised) keeps it, and a call that is no longer active (the client cancelled, the server
stops) is left to gRPC: there is nobody to tell.

The interceptors wrap each handler's behaviour as
:class:`fedscore.ledger.taps.LedgerTap` does. For a streaming response the behaviour
returns a generator that gRPC iterates after the behaviour has returned, so its errors
surface in ``next()``: the wrapper is a generator too, which delegates with ``yield
from`` (``async for`` on aio) and so also sees them, and forwards ``close()`` so the
handler's ``finally`` blocks run as before.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio

from fedscore.errors import FedscoreError

__all__ = ["INTERNAL_MESSAGE", "AioStatusInterceptor", "StatusInterceptor", "status_of"]

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; see the server's log"
"""What a peer reads when a handler fails with anything but a FedscoreError."""

MAX_MESSAGE_CHARS = 1024
"""The longest status message a server sends: a message that quotes what a peer sent
(which it should do through :func:`fedscore.wire.limits.quote`) is cut here, so it can
never outgrow gRPC's metadata bound and turn into another status."""

Behavior = Callable[[Any, Any], Any]


def status_of(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The (code, message) a call that ended in ``exc`` answers with; logs ``exc`` when it
    is not a FedscoreError, since the peer learns nothing of it."""
    if isinstance(exc, FedscoreError):
        message = exc.message
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... (cut from {len(message)} characters)"
        return exc.code, message
    log.error("%s failed: unexpected %s", method, type(exc).__name__, exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _settled(context: grpc.ServicerContext) -> bool:
    """The handler set its own status (an abort), or nobody is listening any more."""
    return context.code() is not None or not context.is_active()


def _wrap_unary(behavior: Behavior | None, method: str) -> Behavior | None:
    if behavior is None:
        return None

    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:
            if _settled(context):
                raise
            context.abort(*status_of(exc, method))
            raise  # unreachable: abort raises

    return wrapped


def _wrap_stream(behavior: Behavior | None, method: str) -> Behavior | None:
    if behavior is None:
        return None

    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            if _settled(context):
                raise
            context.abort(*status_of(exc, method))
            raise  # unreachable: abort raises

    return wrapped


def method_name(details: grpc.HandlerCallDetails) -> str:
    """The called method's full name (gRPC hands it over as bytes or str)."""
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class StatusInterceptor(grpc.ServerInterceptor):
    """Maps what a sync server's handlers raise to gRPC status (see the module)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The handler, each of its behaviours wrapped to map what escapes it."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = method_name(handler_call_details)
        replaced: grpc.RpcMethodHandler = handler._replace(
            unary_unary=_wrap_unary(handler.unary_unary, method),
            unary_stream=_wrap_stream(handler.unary_stream, method),
            stream_unary=_wrap_unary(handler.stream_unary, method),
            stream_stream=_wrap_stream(handler.stream_stream, method),
        )
        return replaced


# --------------------------------------------------------------------------------------------
# grpc.aio
# --------------------------------------------------------------------------------------------


def _aio_settled(context: grpc.aio.ServicerContext) -> bool:
    return context.code() is not None or context.done() or context.cancelled()


def _wrap_aio(behavior: Behavior | None, method: str) -> Behavior | None:
    """Wrap a coroutine or async-generator behaviour, keeping its kind (gRPC dispatches on
    it); a plain function (a sync handler on an aio server) is left as it is."""
    if behavior is None:
        return None
    if inspect.isasyncgenfunction(behavior):
        agen: Callable[[Any, Any], AsyncIterator[Any]] = behavior

        async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[Any]:
            try:
                async for response in agen(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise  # gRPC checks that its own abort comes back unchanged
            except Exception as exc:
                if _aio_settled(context):
                    raise
                await context.abort(*status_of(exc, method))

        return wrapped_stream
    if inspect.iscoroutinefunction(behavior):
        coro: Callable[[Any, Any], Awaitable[Any]] = behavior

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await coro(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                if _aio_settled(context):
                    raise
                await context.abort(*status_of(exc, method))

        return wrapped
    return behavior


class AioStatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps what a ``grpc.aio`` server's async handlers raise to gRPC status (see the module)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The handler, each of its async behaviours wrapped to map what escapes it."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = method_name(handler_call_details)
        replaced: grpc.RpcMethodHandler = handler._replace(
            unary_unary=_wrap_aio(handler.unary_unary, method),
            unary_stream=_wrap_aio(handler.unary_stream, method),
            stream_unary=_wrap_aio(handler.stream_unary, method),
            stream_stream=_wrap_aio(handler.stream_stream, method),
        )
        return replaced
