"""What one call and one peer may cost a fedscore server: size bounds on every repeated
field, per-peer concurrency per work class, idle and lifetime deadlines on streams, and
admission control for the scoring server. One implementation for both parties.

Why: a certified but hostile bank could hold every worker thread of the platform with
quiet PSI streams (the coordinator's control calls then time out for everyone), send a
query with millions of handles, or pile thousands of calls onto a scoring server that
then answered them all late. The rules here make each of those cost the attacker a
RESOURCE_EXHAUSTED or INVALID_ARGUMENT answer, before any work, while the other parties'
calls go on (``docs/security.md``, "Limits"; ``docs/reliability.md``).

- **Sizes** (:func:`check_count`, :func:`check_length`, :func:`check_seed`): a request
  over a documented bound is refused with INVALID_ARGUMENT naming the field, its size
  and the bound (a fixed property of the request: retrying cannot help, so not
  RESOURCE_EXHAUSTED). Servers also cap what gRPC receives per message
  (:func:`server_options`).
- **Work classes** (:class:`WorkClass`, :class:`LimitsInterceptor` for ``grpc.server``,
  :class:`AioLimitsInterceptor` for ``grpc.aio``): each method belongs to one class
  (control, PSI, training, scoring, probes...) with a number of calls one peer may have
  in flight and a number all peers together may. A sync server gets one worker thread
  per slot of every class (:meth:`Limits.workers`), so a class at its limit never takes
  another's threads: the coordinator's control calls always find one. A call over a
  limit is refused at once with RESOURCE_EXHAUSTED and a reason.
- **Stream deadlines**: a class's ``idle_s`` ends a client stream that sends nothing for
  that long, ``stream_s`` one that lasts longer, both with DEADLINE_EXCEEDED, so a
  stalled stream gives its slot back.
- **Admission** (``admit`` on an aio class): a call whose deadline is shorter than what
  recent calls took, plus how far behind the server's event loop runs, is refused at
  once instead of being answered late.
- **Messages** (:func:`quote`): what a peer sent is quoted and cut before it goes into an
  error message, so a 1 MB run id cannot come back as a 1 MB status.

The interceptors go after :class:`fedscore.wire.status.StatusInterceptor` and before the
ledger taps: a refused call is counted and logged (``fedscore.wire.observe``) but does
no work and writes no ledger entry (a flood must not grow the ledger).
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from fedscore.errors import FedscoreError
from fedscore.wire.status import method_name
from fedscore.wire.transport import GRPC_OPTIONS

__all__ = [
    "MAX_BATCH_IDS",
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PATH_CHARS",
    "MAX_QUERY_BYTES",
    "MAX_QUERY_CONSENTED",
    "MAX_QUERY_HANDLES",
    "MAX_QUOTED",
    "MAX_SCORE_FEATURES",
    "MAX_STEP_ROWS",
    "MAX_VALUE_CHARS",
    "SEED_LIMIT",
    "AioLimitsInterceptor",
    "LimitError",
    "Limits",
    "LimitsInterceptor",
    "Overloaded",
    "StreamDeadline",
    "WorkClass",
    "check_count",
    "check_length",
    "check_seed",
    "methods_of",
    "quote",
    "server_options",
]

MAX_QUOTED = 64
"""Characters of a peer's value an error message keeps."""

# The documented bounds on what one request may carry (docs/security.md, "Limits"); both
# parties read them here, so the bank never sends what the platform would refuse.
MAX_STEP_ROWS = 65_536
"""Handles in one Step command (a training batch, an evaluation chunk)."""
MAX_QUERY_HANDLES = 16_384
"""Handles in one GetEmbeddings query (a ScoreBatch chunk's intersection customers)."""
MAX_QUERY_CONSENTED = 256
"""Consented applicants in one GetEmbeddings query."""
MAX_QUERY_BYTES = 1024 * 1024
"""Sealed bytes of one GetEmbeddings query: more than the largest the two bounds above
allow; a larger one is refused before it is decrypted."""
MAX_BATCH_IDS = MAX_QUERY_HANDLES
"""Applicant ids in one ScoreBatch message (a chunk's platform call fits one query)."""
MAX_SCORE_FEATURES = 1024
"""Inline features in one Score request."""
MAX_ID_CHARS = 256
"""Characters of an applicant id."""
MAX_NAME_CHARS = 128
"""Characters of a name a peer sends: a run id, a model version, a feature's name."""
MAX_VALUE_CHARS = 256
"""Characters of one inline feature value."""
MAX_PATH_CHARS = 4096
"""Characters of a release path (LoadRelease)."""

SEED_LIMIT = 2**62
"""Seeds are 0 <= seed < 2**62 (a uint64 field; torch and numpy take what is left)."""

UNKNOWN_PEER = "unknown"



class LimitError(FedscoreError, ValueError):
    """A request over a documented size bound: refused before any work."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(FedscoreError):
    """A call over a concurrency limit, or one that cannot meet its deadline."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StreamDeadline(FedscoreError):
    """A client stream idle for longer than its class allows, or lasting too long."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def quote(value: object, limit: int = MAX_QUOTED) -> str:
    """``value`` as it may appear in an error message: ``repr``, cut to ``limit``
    characters with the full length named, so what a peer sent never makes a message
    large (or, cut short of its end, misleading)."""
    if isinstance(value, (bytes, str)) and len(value) > limit:
        kind = "bytes" if isinstance(value, bytes) else "characters"
        return f"{value[:limit]!r}... ({len(value)} {kind})"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_count(field_name: str, count: int, limit: int) -> None:
    """LimitError unless ``count`` items of ``field_name`` are at most ``limit``."""
    if count > limit:
        raise LimitError(f"{field_name}: {count} items; at most {limit} per request")


def check_length(field_name: str, value: str | bytes, limit: int) -> None:
    """LimitError unless ``value`` is at most ``limit`` characters (bytes)."""
    if len(value) > limit:
        unit = "bytes" if isinstance(value, bytes) else "characters"
        raise LimitError(f"{field_name}: {len(value)} {unit}; at most {limit}")


def check_seed(field_name: str, seed: int) -> None:
    """LimitError unless ``0 <= seed < 2**62`` (:data:`SEED_LIMIT`)."""
    if not 0 <= seed < SEED_LIMIT:
        raise LimitError(f"{field_name} = {seed}: expected 0 <= {field_name} < 2**62")


def server_options(max_receive_bytes: int) -> list[tuple[str, Any]]:
    """:data:`~fedscore.wire.transport.GRPC_OPTIONS` with a server's own bound on a
    received message: gRPC refuses a larger one (RESOURCE_EXHAUSTED) before it is read
    into memory."""
    merged = dict(GRPC_OPTIONS)
    merged["grpc.max_receive_message_length"] = max_receive_bytes
    return list(merged.items())


@dataclass(frozen=True)
class WorkClass:
    """Methods that share a budget: ``per_peer`` calls of one peer in flight, ``total``
    of all peers together; a client stream of the class ends after ``idle_s`` seconds
    without a message or ``stream_s`` seconds in all (None: no bound). ``admit`` (aio
    servers): refuse a call whose deadline is shorter than recent calls took."""

    name: str
    methods: frozenset[str]
    per_peer: int
    total: int
    idle_s: float | None = None
    stream_s: float | None = None
    admit: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.per_peer <= self.total:
            raise ValueError(f"work class {self.name}: need 1 <= per_peer <= total, got "
                             f"{self.per_peer} and {self.total}")


def methods_of(*services: str, only: Iterable[str] = ()) -> frozenset[str]:
    """Full method names: ``/service/name`` for each name of ``only``, or a service
    prefix ``/service/`` that matches all of its methods."""
    names = list(only)
    if names:
        return frozenset(f"/{s}/{n}" for s in services for n in names)
    return frozenset(f"/{s}/" for s in services)


@dataclass
class _Budget:
    cls: WorkClass
    in_flight: int = 0
    peers: dict[str, int] = field(default_factory=dict)
    ewma_s: float = 0.0  # admitted calls' recent latency (admission)


class Limits:
    """The budgets of one server (thread-safe): which class a method is of, and one slot
    per call taken and given back. ``default``: the class of any other method."""

    def __init__(self, classes: Sequence[WorkClass], default: WorkClass) -> None:
        self._classes = [*classes, default]
        names = [c.name for c in self._classes]
        if len(set(names)) != len(names):
            raise ValueError(f"work classes must have distinct names: {names}")
        self._exact: dict[str, WorkClass] = {}
        self._prefix: list[tuple[str, WorkClass]] = []
        for c in classes:
            for m in c.methods:
                if m.endswith("/"):
                    self._prefix.append((m, c))
                else:
                    self._exact[m] = c
        self._default = default
        self._budgets = {c.name: _Budget(c) for c in self._classes}
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        """Threads a sync server needs so every class can fill all its slots at once,
        plus a few for refusals (which hold a thread for microseconds)."""
        return sum(c.total for c in self._classes) + 4

    def class_of(self, method: str) -> WorkClass:
        """The class ``method`` (``/package.Service/Name``) is counted in."""
        found = self._exact.get(method)
        if found is not None:
            return found
        for prefix, c in self._prefix:
            if method.startswith(prefix):
                return c
        return self._default

    def in_flight(self, name: str, peer: str | None = None) -> int:
        """Calls of class ``name`` in flight (of ``peer`` only, when given)."""
        with self._lock:
            b = self._budgets[name]
            return b.in_flight if peer is None else b.peers.get(peer, 0)

    def acquire(self, cls: WorkClass, peer: str, remaining_s: float | None = None,
                lag_s: float = 0.0) -> None:
        """Take a slot of ``cls`` for ``peer``; Overloaded (RESOURCE_EXHAUSTED) with the
        reason when the peer or the class is at its limit, or (``admit``) when the call's
        ``remaining_s`` is shorter than recent calls took plus ``lag_s``, how far behind
        the server's event loop runs."""
        with self._lock:
            b = self._budgets[cls.name]
            mine = b.peers.get(peer, 0)
            if mine >= cls.per_peer:
                raise Overloaded(f"{cls.name} calls: {quote(peer)} has {mine} in flight, "
                                 f"the most one peer may; retry later")
            if b.in_flight >= cls.total:
                raise Overloaded(f"{cls.name} calls: all {cls.total} slots of this server "
                                 f"are busy; retry later")
            wait = b.ewma_s + lag_s
            if cls.admit and remaining_s is not None and remaining_s < wait:
                raise Overloaded(f"{cls.name} calls: {remaining_s * 1e3:.0f} ms left of the "
                                 f"call's deadline, recent calls took {wait * 1e3:.0f} ms "
                                 f"(the event loop's lag included); refused now rather than "
                                 f"answered late")
            b.in_flight += 1
            b.peers[peer] = mine + 1

    def release(self, cls: WorkClass, peer: str, elapsed_s: float | None = None) -> None:
        """Give back a slot taken by :meth:`acquire`; ``elapsed_s`` (an answered call of
        an ``admit`` class) updates the recent latency deadlines are compared with."""
        with self._lock:
            b = self._budgets[cls.name]
            b.in_flight -= 1
            left = b.peers[peer] - 1
            if left:
                b.peers[peer] = left
            else:
                del b.peers[peer]
            if elapsed_s is not None and cls.admit:
                b.ewma_s += 0.1 * (elapsed_s - b.ewma_s)


def _peer(context: Any) -> str:
    """The caller's certificate name (the only identity a fedscore server trusts);
    "unknown" on a connection without exactly one (tests without TLS)."""
    try:
        auth = context.auth_context()
    except Exception:
        return UNKNOWN_PEER
    names = auth.get("x509_common_name") or []
    if auth.get("transport_security_type") != [b"ssl"] or len(names) != 1:
        return UNKNOWN_PEER
    return str(names[0].decode("utf-8", "replace"))


# --------------------------------------------------------------------------------------------
# grpc.server (threads)
# --------------------------------------------------------------------------------------------

_END = object()


class _IdleIterator:
    """A request iterator read on a thread of its own, so that the handler's ``next()``
    can give up: StreamDeadline after ``idle_s`` without a message or ``stream_s`` in
    all. The reader thread ends with the call (gRPC ends the request stream then)."""

    def __init__(self, source: Iterator[Any], cls: WorkClass) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=4)
        self._cls = cls
        self._start = time.monotonic()
        self._done = False
        self._closed = threading.Event()
        threading.Thread(target=self._read, args=(source,), daemon=True,
                         name=f"limits-{cls.name}").start()

    def _put(self, entry: tuple[str, Any]) -> bool:
        """Queue ``entry`` unless the handler is gone (then the reader stops)."""
        while not self._closed.is_set():
            try:
                self._q.put(entry, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                if not self._put(("item", item)):
                    return
            self._put(("end", _END))
        except BaseException as exc:  # the call ended, or the peer failed it
            self._put(("error", exc))

    def close(self) -> None:
        """The handler is done: a reader blocked on a full queue stops."""
        self._closed.set()

    def __iter__(self) -> _IdleIterator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        cls = self._cls
        wait = cls.idle_s
        if cls.stream_s is not None:
            left = cls.stream_s - (time.monotonic() - self._start)
            wait = left if wait is None else min(wait, left)
        try:
            kind, item = self._q.get(timeout=None if wait is None else max(wait, 0.0))
        except queue.Empty:
            self._done = True
            raise self._expired() from None
        if kind == "item":
            return item
        self._done = True
        if kind == "error":
            raise item
        raise StopIteration

    def _expired(self) -> StreamDeadline:
        cls = self._cls
        if cls.stream_s is not None and time.monotonic() - self._start >= cls.stream_s:
            return StreamDeadline(f"{cls.name} stream open for {cls.stream_s:g} s, the most "
                                  f"this server allows")
        return StreamDeadline(f"{cls.name} stream sent nothing for {cls.idle_s:g} s; "
                              f"ended to free its slot")


Behavior = Callable[[Any, Any], Any]


def _abort(context: grpc.ServicerContext, error: FedscoreError) -> None:
    context.abort(error.code, error.message)


class LimitsInterceptor(grpc.ServerInterceptor):
    """Per-peer, per-class concurrency and stream deadlines on a ``grpc.server`` (see the
    module); size the server's pool with :attr:`Limits.workers`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The handler, each behaviour wrapped to take and give back its class's slot."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        cls = self.limits.class_of(method_name(handler_call_details))
        wrapped: grpc.RpcMethodHandler = handler._replace(
            unary_unary=self._unary(handler.unary_unary, cls, False),
            stream_unary=self._unary(handler.stream_unary, cls, True),
            unary_stream=self._stream(handler.unary_stream, cls, False),
            stream_stream=self._stream(handler.stream_stream, cls, True),
        )
        return wrapped

    def _enter(self, cls: WorkClass, context: grpc.ServicerContext) -> str:
        peer = _peer(context)
        try:
            self.limits.acquire(cls, peer)
        except Overloaded as exc:
            _abort(context, exc)
        return peer

    def _requests(self, request: Any, cls: WorkClass, streaming: bool) -> Any:
        if streaming and (cls.idle_s is not None or cls.stream_s is not None):
            return _IdleIterator(request, cls)
        return request

    def _unary(self, behavior: Behavior | None, cls: WorkClass, streaming: bool
               ) -> Behavior | None:
        if behavior is None:
            return None

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            peer = self._enter(cls, context)
            requests = self._requests(request, cls, streaming)
            try:
                return behavior(requests, context)
            finally:
                self.limits.release(cls, peer)
                if isinstance(requests, _IdleIterator):
                    requests.close()

        return wrapped

    def _stream(self, behavior: Behavior | None, cls: WorkClass, streaming: bool
                ) -> Behavior | None:
        if behavior is None:
            return None

        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            peer = self._enter(cls, context)
            requests = self._requests(request, cls, streaming)
            try:
                yield from behavior(requests, context)
            finally:
                self.limits.release(cls, peer)
                if isinstance(requests, _IdleIterator):
                    requests.close()

        return wrapped


# --------------------------------------------------------------------------------------------
# grpc.aio
# --------------------------------------------------------------------------------------------


async def _idle_aiter(source: AsyncIterator[Any], cls: WorkClass) -> AsyncIterator[Any]:
    """``source``, ended with StreamDeadline after ``idle_s`` without a message or
    ``stream_s`` in all."""
    start = time.monotonic()
    it = source.__aiter__()
    while True:
        wait = cls.idle_s
        if cls.stream_s is not None:
            left = cls.stream_s - (time.monotonic() - start)
            wait = left if wait is None else min(wait, left)
        try:
            item = await asyncio.wait_for(it.__anext__(), timeout=wait)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if cls.stream_s is not None and time.monotonic() - start >= cls.stream_s:
                raise StreamDeadline(f"{cls.name} stream open for {cls.stream_s:g} s, the "
                                     f"most this server allows") from None
            raise StreamDeadline(f"{cls.name} stream sent nothing for {cls.idle_s:g} s; "
                                 f"ended to free its slot") from None
        yield item


class AioLimitsInterceptor(grpc.aio.ServerInterceptor):
    """:class:`LimitsInterceptor` for a ``grpc.aio`` server, with admission (``admit``
    classes): a call is refused at once, with RESOURCE_EXHAUSTED and the reason, when
    its class is at its in-flight limit or its deadline is shorter than recent calls
    took, so that a server under too much load answers what it admits in time and
    refuses the rest early instead of queueing everything late."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.lag_s = 0.0  # how late the event loop runs its timers, recent peak
        self._ticking = False

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        """Every 10 ms on the server's loop: how late this timer ran (a peak that decays),
        the lag every call the loop has not yet seen waits at least. A timer handle, not
        a task: it goes with the loop."""
        now = loop.time()
        self.lag_s = max(now - due, self.lag_s * 0.8)
        loop.call_later(0.01, self._tick, loop, now + 0.01)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The handler, each async behaviour wrapped to take and give back its slot."""
        if not self._ticking:
            self._ticking = True
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, self._tick, loop, loop.time() + 0.01)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        cls = self.limits.class_of(method_name(handler_call_details))
        replaced: grpc.RpcMethodHandler = handler._replace(
            unary_unary=self._wrap(handler.unary_unary, cls, False),
            unary_stream=self._wrap(handler.unary_stream, cls, False),
            stream_unary=self._wrap(handler.stream_unary, cls, True),
            stream_stream=self._wrap(handler.stream_stream, cls, True),
        )
        return replaced

    async def _enter(self, cls: WorkClass, context: grpc.aio.ServicerContext) -> str:
        peer = _peer(context)
        try:
            self.limits.acquire(cls, peer, context.time_remaining(), self.lag_s)
        except Overloaded as exc:
            await context.abort(exc.code, exc.message)
        return peer

    def _requests(self, request: Any, cls: WorkClass, streaming: bool) -> Any:
        if streaming and (cls.idle_s is not None or cls.stream_s is not None):
            return _idle_aiter(request, cls)
        return request

    def _wrap(self, behavior: Behavior | None, cls: WorkClass, streaming: bool
              ) -> Behavior | None:
        if behavior is None:
            return None
        limits = self.limits
        if inspect.isasyncgenfunction(behavior):
            agen: Callable[[Any, Any], AsyncIterator[Any]] = behavior

            async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext
                                     ) -> AsyncIterator[Any]:
                peer = await self._enter(cls, context)
                try:
                    async for response in agen(self._requests(request, cls, streaming),
                                               context):
                        yield response
                finally:
                    limits.release(cls, peer)

            return wrapped_stream
        if inspect.iscoroutinefunction(behavior):
            coro: Callable[[Any, Any], Awaitable[Any]] = behavior

            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                peer = await self._enter(cls, context)
                started = time.perf_counter()
                elapsed: float | None = None
                try:
                    reply = await coro(self._requests(request, cls, streaming), context)
                    elapsed = time.perf_counter() - started
                    return reply
                finally:
                    limits.release(cls, peer, elapsed)

            return wrapped
        return behavior  # a sync handler on an aio server: none of fedscore's
