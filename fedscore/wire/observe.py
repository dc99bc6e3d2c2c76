"""What every fedscore server counts of the calls it serves: requests by method and final
status code, their latency and how many are in flight (:mod:`fedscore.ops.metrics`), and
at DEBUG one log line per call (``fedscore.requests``: method, code, milliseconds; never
the request's content).

:class:`ObserveInterceptor` (``grpc.server``) and :class:`AioObserveInterceptor`
(``grpc.aio.server``) go first in a server's interceptors, outside
:class:`fedscore.wire.status.StatusInterceptor`, so the code they see is the one the peer
gets. Health checks and reflection are not counted (a ``Watch`` stays open for ever).
Per call: two clock reads, the in-flight gauge up and down, one histogram observation and
one counter increment (children looked up once per method and code): a few microseconds.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from typing import Any

import grpc
import grpc.aio

from fedscore.ledger.taps import PROBE_METHODS
from fedscore.ops import metrics

__all__ = ["AioObserveInterceptor", "ObserveInterceptor", "short_method"]

requests_log = logging.getLogger("fedscore.requests")
Behavior = Callable[[Any, Any], Any]
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def short_method(method: str) -> str:
    """``/fedscore.v1.ScoringService/Score`` -> ``ScoringService/Score`` (a label)."""
    service, _, name = method.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


def _code_name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code in _CODES:
        return _CODES[code].name
    return "UNKNOWN"


class _Method:
    """One method's metric children, looked up once."""

    __slots__ = ("_codes", "_lock", "in_flight", "method", "party", "seconds")

    def __init__(self, party: str, method: str) -> None:
        self.party, self.method = party, method
        self.seconds = metrics.GRPC_SECONDS.labels(party, method)
        self.in_flight = metrics.GRPC_IN_FLIGHT.labels(party, method)
        self._codes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def done(self, started: float, code: str) -> None:
        elapsed = time.perf_counter() - started
        self.in_flight.dec()
        self.seconds.observe(elapsed)
        counter = self._codes.get(code)
        if counter is None:
            with self._lock:
                counter = self._codes.setdefault(
                    code, metrics.GRPC_REQUESTS.labels(self.party, self.method, code))
        counter.inc()
        if requests_log.isEnabledFor(logging.DEBUG):
            requests_log.debug("%s %s in %.2f ms", self.method, code, elapsed * 1e3,
                               extra={"method": self.method, "code": code,
                                      "ms": round(elapsed * 1e3, 3)})


class _Observer:
    def __init__(self, party: str, ignore: Collection[str]) -> None:
        self._party = party
        self._ignore = frozenset(ignore)
        self._methods: dict[str, _Method] = {}
        self._lock = threading.Lock()

    def method(self, details: grpc.HandlerCallDetails) -> _Method | None:
        name = details.method
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name in self._ignore:
            return None
        found = self._methods.get(name)
        if found is None:
            with self._lock:
                found = self._methods.setdefault(name, _Method(self._party, short_method(name)))
        return found


def _settled_code(context: Any, default: str) -> str:
    try:
        code = context.code()
    except Exception:  # a context that cannot tell
        return default
    return default if code is None else _code_name(code)


def _wrap_unary(behavior: Behavior | None, m: _Method) -> Behavior | None:
    if behavior is None:
        return None

    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        m.in_flight.inc()
        code = "UNKNOWN"
        try:
            reply = behavior(request, context)
            code = _settled_code(context, "OK")
            return reply
        except BaseException:
            code = _settled_code(context, "UNKNOWN")
            raise
        finally:
            m.done(started, code)

    return wrapped


def _wrap_stream(behavior: Behavior | None, m: _Method) -> Behavior | None:
    if behavior is None:
        return None

    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        m.in_flight.inc()
        code = "CANCELLED"  # a generator closed before its end
        try:
            yield from behavior(request, context)
            code = _settled_code(context, "OK")
        except BaseException:
            code = _settled_code(context, "UNKNOWN")
            raise
        finally:
            m.done(started, code)

    return wrapped


class ObserveInterceptor(grpc.ServerInterceptor):
    """Counts, times and logs (DEBUG) every call a sync server serves (see the module);
    ``party``: the server's party, a label of each metric."""

    def __init__(self, party: str, ignore: Collection[str] = PROBE_METHODS) -> None:
        self._observer = _Observer(party, ignore)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The handler, each behaviour wrapped to count and time it."""
        handler = continuation(handler_call_details)
        m = self._observer.method(handler_call_details)
        if handler is None or m is None:
            return handler
        replaced: grpc.RpcMethodHandler = handler._replace(
            unary_unary=_wrap_unary(handler.unary_unary, m),
            unary_stream=_wrap_stream(handler.unary_stream, m),
            stream_unary=_wrap_unary(handler.stream_unary, m),
            stream_stream=_wrap_stream(handler.stream_stream, m),
        )
        return replaced


def _wrap_aio(behavior: Behavior | None, m: _Method) -> Behavior | None:
    if behavior is None:
        return None
    if inspect.isasyncgenfunction(behavior):
        agen: Callable[[Any, Any], AsyncIterator[Any]] = behavior

        async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            m.in_flight.inc()
            code = "CANCELLED"
            try:
                async for response in agen(request, context):
                    yield response
                code = _settled_code(context, "OK")
            except BaseException:
                code = _settled_code(context, "UNKNOWN")
                raise
            finally:
                m.done(started, code)

        return wrapped_stream
    if inspect.iscoroutinefunction(behavior):
        coro: Callable[[Any, Any], Awaitable[Any]] = behavior

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            m.in_flight.inc()
            code = "UNKNOWN"
            try:
                reply = await coro(request, context)
                code = _settled_code(context, "OK")
                return reply
            except BaseException:
                code = _settled_code(context, "UNKNOWN")
                raise
            finally:
                m.done(started, code)

        return wrapped
    return _wrap_unary(behavior, m)


class AioObserveInterceptor(grpc.aio.ServerInterceptor):
    """:class:`ObserveInterceptor` for a ``grpc.aio`` server."""

    def __init__(self, party: str, ignore: Collection[str] = PROBE_METHODS) -> None:
        self._observer = _Observer(party, ignore)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The handler, each async behaviour wrapped to count and time it."""
        handler = await continuation(handler_call_details)
        m = self._observer.method(handler_call_details)
        if handler is None or m is None:
            return handler
        replaced: grpc.RpcMethodHandler = handler._replace(
            unary_unary=_wrap_aio(handler.unary_unary, m),
            unary_stream=_wrap_aio(handler.unary_stream, m),
            stream_unary=_wrap_aio(handler.stream_unary, m),
            stream_stream=_wrap_aio(handler.stream_stream, m),
        )
        return replaced
