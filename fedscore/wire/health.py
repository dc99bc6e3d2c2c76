"""Health and reflection on every fedscore server, and the gate that keeps a server's own
services closed until its node has loaded.

A node binds its port first, with the standard health service (``grpc.health.v1``)
answering NOT_SERVING and server reflection listing its services, while their calls
are refused with UNAVAILABLE (:data:`NOT_READY`: clients retry on that code). Once the
node has loaded its kit, data and model, :meth:`Readiness.ready` registers the real
servicers behind the gate and turns health SERVING; on shutdown :meth:`Readiness.drain`
turns it NOT_SERVING for good, before the server stops. The overall status (service
``""``) and each fedscore service's name are reported alike, so ``grpc_health_probe``
with or without ``-service`` sees the same thing.

:class:`Readiness` is for a sync ``grpc.Server``, :class:`AioReadiness` for a
``grpc.aio`` one. A node that cannot do its work safely for a while (its audit ledger
cannot be written: :func:`follow_ledger`) answers NOT_SERVING meanwhile
(:meth:`Readiness.hold`), and SERVING again once it can. Health and reflection carry no
party's data: the ledger taps leave
them out (:data:`fedscore.ledger.taps.PROBE_METHODS`). Both ride on the node's mutual
TLS like everything else, so a probe presents a certificate of the federation
(``fedscore health``, or ``grpc_health_probe -tls -tls-client-cert ...``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio
from google.protobuf import descriptor_pool
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

if TYPE_CHECKING:
    from fedscore.ledger.writer import Ledger

log = logging.getLogger(__name__)

__all__ = [
    "DETAIL_KEY",
    "HEALTH_SERVICE",
    "NOT_READY",
    "REFLECTION_SERVICE",
    "AioReadiness",
    "Readiness",
    "ServiceGate",
    "follow_ledger",
]

HEALTH_SERVICE: str = health.SERVICE_NAME
REFLECTION_SERVICE: str = reflection.SERVICE_NAME
NOT_READY = "the node is loading; retry when its health check answers SERVING"
"""What a call to a gated service answers, with UNAVAILABLE, before the node is ready."""

DETAIL_KEY = "fedscore-health-detail-bin"
"""Trailing metadata of a health answer: one UTF-8 line per warning the node has (a
certificate about to expire); the standard answer has no field for it."""

Details = Callable[[], Sequence[str]]
"""The node's current warnings, asked on every health check (so a clock moving past a
threshold shows without a restart)."""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Register = Callable[[grpc.Server], None]
"""Adds a node's servicers to a server (the generated ``add_*Servicer_to_server``)."""


class _Collector:
    """Stands in for a server while ``add_*Servicer_to_server`` runs: keeps the generic
    handlers (the registered ones are a lookup shortcut the gate does not need)."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: object) -> None:
        pass


def _refuse(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAVAILABLE, NOT_READY)


async def _refuse_aio(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_READY)


async def _refuse_aio_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_READY)
    yield  # unreachable: an async generator, as a streaming answer must be on aio


def _refusals(services: Sequence[str], aio: bool) -> dict[str, grpc.RpcMethodHandler]:
    """An UNAVAILABLE handler of the right streaming kind for every method of ``services``
    (their descriptors are in the default pool once their ``_pb2`` modules are imported)."""
    pool = descriptor_pool.Default()
    handlers = {}
    for name in services:
        for method in pool.FindServiceByName(name).methods:
            unary = _refuse_aio if aio else _refuse
            stream = _refuse_aio_stream if aio else _refuse
            if method.client_streaming and method.server_streaming:
                handler = grpc.stream_stream_rpc_method_handler(stream)
            elif method.client_streaming:
                handler = grpc.stream_unary_rpc_method_handler(unary)
            elif method.server_streaming:
                handler = grpc.unary_stream_rpc_method_handler(stream)
            else:
                handler = grpc.unary_unary_rpc_method_handler(unary)
            handlers[f"/{name}/{method.name}"] = handler
    return handlers


class ServiceGate(grpc.GenericRpcHandler):
    """The handlers of a server's own services: UNAVAILABLE for each of their methods
    until :meth:`open`, then the real servicers' handlers."""

    def __init__(self, services: Sequence[str], *, aio: bool) -> None:
        self._refusals = _refusals(services, aio)
        self._handlers: list[grpc.GenericRpcHandler] | None = None

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        """The method's handler: a refusal before :meth:`open`, the real one after."""
        handlers = self._handlers
        if handlers is None:
            return self._refusals.get(handler_call_details.method)
        for generic in handlers:
            found = generic.service(handler_call_details)
            if found is not None:
                return found
        return None

    def open(self, register: Register) -> None:
        """Let calls through to the servicers that ``register`` adds (once)."""
        if self._handlers is not None:
            raise RuntimeError("the gate is open already")
        collector = _Collector()
        register(cast(grpc.Server, collector))
        self._handlers = collector.handlers

    @property
    def is_open(self) -> bool:
        """Whether the real servicers answer."""
        return self._handlers is not None


def _detail_metadata(details: Details | None) -> tuple[tuple[str, bytes], ...]:
    lines = details() if details is not None else ()
    return tuple((DETAIL_KEY, line.encode("utf-8")) for line in lines)


class _HealthWithDetails(health.HealthServicer):
    """The standard health servicer; its Check answer carries the node's warnings as
    trailing metadata (:data:`DETAIL_KEY`)."""

    details: Details | None = None

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The standard answer, with the node's warnings in the trailing metadata."""
        found = _detail_metadata(self.details)
        if found:
            context.set_trailing_metadata(found)
        return super().Check(request, context)


class _AioHealthWithDetails(health_aio.HealthServicer):
    """:class:`_HealthWithDetails` for ``grpc.aio``."""

    details: Details | None = None

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The standard answer, with the node's warnings in the trailing metadata."""
        found = _detail_metadata(self.details)
        if found:
            context.set_trailing_metadata(found)
        return await super().Check(request, context)


def _listed(services: Sequence[str]) -> tuple[str, ...]:
    return (*services, HEALTH_SERVICE, REFLECTION_SERVICE)


class Readiness:
    """Health, reflection and the gate of a sync ``grpc.Server``; create it before the
    server starts. NOT_SERVING until :meth:`ready`, NOT_SERVING again after :meth:`drain`."""

    def __init__(self, server: grpc.Server, services: Sequence[str]) -> None:
        self.services = tuple(services)
        self.gate = ServiceGate(self.services, aio=False)
        server.add_generic_rpc_handlers((self.gate,))
        self._health = _HealthWithDetails()
        self._held: dict[str, str] = {}
        for name in ("", *self.services):
            self._health.set(name, NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(_listed(self.services), server)

    def ready(self, register: Register) -> None:
        """The node has loaded: serve what ``register`` adds, and answer SERVING (unless
        held)."""
        self.gate.open(register)
        self._publish()

    def hold(self, what: str, reason: str | None) -> None:
        """NOT_SERVING while ``what`` cannot work (``reason``); ``reason`` None: it works
        again (SERVING once nothing else holds and the node is ready)."""
        _note(self._held, what, reason)
        self._publish()

    @property
    def held(self) -> dict[str, str]:
        """What holds health at NOT_SERVING now, and why."""
        return dict(self._held)

    def _publish(self) -> None:
        status = SERVING if self.gate.is_open and not self._held else NOT_SERVING
        for name in ("", *self.services):
            self._health.set(name, status)  # ignored once draining

    def set_details(self, details: Details) -> None:
        """Every health answer from now on carries ``details()`` (:data:`DETAIL_KEY`)."""
        self._health.details = details

    def drain(self) -> None:
        """Shutting down: NOT_SERVING from now on (calls still in flight finish)."""
        self._health.enter_graceful_shutdown()


class AioReadiness:
    """:class:`Readiness` for a ``grpc.aio`` server: build it with :meth:`create` on the
    server's event loop; :meth:`ready` and :meth:`drain` run there too."""

    def __init__(self, server: grpc.aio.Server, services: Sequence[str],
                 servicer: _AioHealthWithDetails) -> None:
        self.services = tuple(services)
        self.gate = ServiceGate(self.services, aio=True)
        server.add_generic_rpc_handlers((self.gate,))
        self._health = servicer
        self._held: dict[str, str] = {}
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        reflection.enable_server_reflection(_listed(self.services), server)

    @classmethod
    async def create(cls, server: grpc.aio.Server, services: Sequence[str]) -> AioReadiness:
        """Health (NOT_SERVING), reflection and the gate on ``server``, before it starts."""
        servicer = _AioHealthWithDetails()
        for name in ("", *services):
            await servicer.set(name, NOT_SERVING)
        return cls(server, services, servicer)

    async def ready(self, register: Register) -> None:
        """The node has loaded: serve what ``register`` adds, and answer SERVING (unless
        held)."""
        self.gate.open(register)
        await self._publish()

    async def hold(self, what: str, reason: str | None) -> None:
        """:meth:`Readiness.hold`, on the server's event loop."""
        _note(self._held, what, reason)
        await self._publish()

    @property
    def held(self) -> dict[str, str]:
        """What holds health at NOT_SERVING now, and why."""
        return dict(self._held)

    async def _publish(self) -> None:
        status = SERVING if self.gate.is_open and not self._held else NOT_SERVING
        for name in ("", *self.services):
            await self._health.set(name, status)  # ignored once draining

    def set_details(self, details: Details) -> None:
        """Every health answer from now on carries ``details()`` (:data:`DETAIL_KEY`)."""
        self._health.details = details

    async def drain(self) -> None:
        """Shutting down: NOT_SERVING from now on."""
        await self._health.enter_graceful_shutdown()


def _note(held: dict[str, str], what: str, reason: str | None) -> None:
    if reason is None:
        if held.pop(what, None) is not None:
            log.info("health: %s works again", what)
    elif what not in held:
        held[what] = reason
        log.error("health: NOT_SERVING: %s", reason)


LEDGER_HOLD = "ledger"
"""What :func:`follow_ledger` holds health for."""


def follow_ledger(readiness: Readiness | AioReadiness, ledger: Ledger,
                  loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Health NOT_SERVING while ``ledger`` refuses entries (its disk is full), SERVING
    again once it takes them: a node that cannot record a message does not send it, so
    whatever routes work to it should know. ``loop``: the aio server's event loop (the
    ledger tells from whichever thread saw the change)."""
    if isinstance(readiness, AioReadiness):
        if loop is None:
            raise ValueError("an aio server's readiness needs its event loop")
        aio, on = readiness, loop

        def watcher(reason: str | None) -> None:
            asyncio.run_coroutine_threadsafe(aio.hold(LEDGER_HOLD, reason), on)
    else:
        sync = readiness

        def watcher(reason: str | None) -> None:
            sync.hold(LEDGER_HOLD, reason)

    ledger.watch(watcher)
