"""fedscore.wire.status: what escapes a handler reaches the peer as its code, or as INTERNAL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

from fedscore.errors import FedscoreError
from fedscore.wire.status import INTERNAL_MESSAGE, AioStatusInterceptor, StatusInterceptor

SERVICE = "fedscore.test.Status"
SECRET = "applicant 4711 earns 93000"  # what a plain exception's text could hold


class Refused(FedscoreError):
    """A test error with a class-level code."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def _raise(kind: bytes) -> None:
    """What a handler does for a request that names the case."""
    if kind == b"domain":
        raise Refused("the round is not open")
    if kind == b"per-raise":
        raise Refused("no such version", code=grpc.StatusCode.NOT_FOUND)
    if kind == b"plain":
        raise ValueError(SECRET)


# -- sync ---------------------------------------------------------------------------------------


def _sync_handlers() -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"abort":
            context.abort(grpc.StatusCode.ABORTED, "aborted by the handler")
        _raise(request)
        return b"ok"

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        _raise(request)
        yield b"last"

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            _raise(request)
            yield request

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


@pytest.fixture(scope="module")
def sync_channel() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[StatusInterceptor()])
    server.add_generic_rpc_handlers((_sync_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    server.stop(None)


CASES = [
    (b"domain", grpc.StatusCode.FAILED_PRECONDITION, "the round is not open"),
    (b"per-raise", grpc.StatusCode.NOT_FOUND, "no such version"),
    (b"plain", grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE),
]


def _call(kind: str, channel: Any) -> Callable[[bytes], Any]:
    """A callable sending one request of the test's kind through ``channel``."""
    if kind == "Unary":
        return channel.unary_unary(f"/{SERVICE}/Unary")
    if kind == "Stream":
        return lambda request: list(channel.unary_stream(f"/{SERVICE}/Stream")(request))
    return lambda request: list(channel.stream_stream(f"/{SERVICE}/Bidi")(iter([b"x", request])))


@pytest.mark.parametrize("kind", ["Unary", "Stream", "Bidi"])
@pytest.mark.parametrize(("request_", "code", "message"), CASES, ids=[c[0].decode() for c in CASES])
def test_sync_errors_reach_the_peer_as_their_code(
    sync_channel: grpc.Channel, kind: str, request_: bytes, code: grpc.StatusCode, message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, "fedscore.wire.status"), \
            pytest.raises(grpc.RpcError) as err:
        _call(kind, sync_channel)(request_)
    assert err.value.code() == code
    assert err.value.details() == message
    assert SECRET not in (err.value.details() or "")
    # only what the peer learns nothing of is logged, and here with its text
    logged = [r for r in caplog.records if r.name == "fedscore.wire.status"]
    assert bool(logged) == (code == grpc.StatusCode.INTERNAL)


def test_sync_abort_and_success_are_untouched(sync_channel: grpc.Channel) -> None:
    assert _call("Unary", sync_channel)(b"fine") == b"ok"
    assert _call("Stream", sync_channel)(b"fine") == [b"first", b"last"]
    with pytest.raises(grpc.RpcError) as err:
        _call("Unary", sync_channel)(b"abort")
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert err.value.details() == "aborted by the handler"


# -- aio ----------------------------------------------------------------------------------------


def _aio_handlers() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"abort":
            await context.abort(grpc.StatusCode.ABORTED, "aborted by the handler")
        await asyncio.sleep(0)
        _raise(request)
        return b"ok"

    async def stream(request: bytes, context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[bytes]:
        yield b"first"
        _raise(request)
        yield b"last"

    async def bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[bytes]:
        async for request in requests:
            _raise(request)
            yield request

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


async def _aio_outcomes() -> dict[tuple[str, bytes], tuple[grpc.StatusCode, str | None] | Any]:
    server = grpc.aio.server(interceptors=[AioStatusInterceptor()])
    server.add_generic_rpc_handlers((_aio_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    outcomes: dict[tuple[str, bytes], Any] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for kind in ("Unary", "Stream", "Bidi"):
                for request in (b"domain", b"per-raise", b"plain", b"abort", b"fine"):
                    try:
                        if kind == "Unary":
                            outcome: Any = await channel.unary_unary(f"/{SERVICE}/Unary")(request)
                        elif kind == "Stream":
                            call = channel.unary_stream(f"/{SERVICE}/Stream")(request)
                            outcome = [r async for r in call]
                        else:
                            call = channel.stream_stream(f"/{SERVICE}/Bidi")(iter([b"x", request]))
                            outcome = [r async for r in call]
                    except grpc.aio.AioRpcError as exc:
                        outcome = (exc.code(), exc.details())
                    outcomes[kind, request] = outcome
    finally:
        await server.stop(None)
    return outcomes


def test_aio_errors_reach_the_peer_as_their_code(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "fedscore.wire.status"):
        outcomes = asyncio.run(_aio_outcomes())
    for kind in ("Unary", "Stream", "Bidi"):
        for request, code, message in CASES:
            assert outcomes[kind, request] == (code, message), (kind, request)
    assert outcomes["Unary", b"abort"] == (grpc.StatusCode.ABORTED, "aborted by the handler")
    assert outcomes["Unary", b"fine"] == b"ok"
    assert outcomes["Stream", b"fine"] == [b"first", b"last"]
    assert outcomes["Bidi", b"fine"] == [b"x", b"fine"]
    assert all(SECRET not in str(o) for o in outcomes.values())
    logged = [r for r in caplog.records if r.name == "fedscore.wire.status"]
    assert len(logged) == 3  # the plain ValueError, once per kind of call
