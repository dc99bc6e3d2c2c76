"""Callers that arrive together share one call: generic batchers, no fedscore logic.

:class:`Batched` serves threads, :class:`Gathered` an asyncio loop. The bank's scoring
server shares its platform calls with them (``bank_node.scoring``,
``bank_node.scoring_aio``), and ``benchmarks/grpc_floor.py`` shares its bare calls with
:class:`Gathered` exactly as the server does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["Batched", "Gathered"]

T = TypeVar("T")
R = TypeVar("R")


class Batched(Generic[T, R]):
    """Concurrent callers share one run of ``fn``: the first becomes the leader and runs
    ``fn`` on everything waiting (itself included) until nothing is left; the others
    wait for their result. One caller alone pays no hand-off; many pay one call of ``fn``
    between them (at most ``max_items`` items a run)."""

    def __init__(self, fn: Callable[[list[T]], list[R]], max_items: int = 256) -> None:
        self._fn, self._max = fn, max_items
        self._pending: list[tuple[T, Future[R]]] = []
        self._running = False
        self._lock = threading.Lock()

    def __call__(self, item: T) -> R:
        """``fn``'s result for ``item``, from a run shared with whoever waits alongside."""
        future: Future[R] = Future()
        with self._lock:
            self._pending.append((item, future))
            leader, self._running = not self._running, True
        while leader:
            with self._lock:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                if not batch:
                    self._running = False
                    break
            try:
                results = self._fn([x for x, _ in batch])
                for (_, f), r in zip(batch, results, strict=True):
                    f.set_result(r)
            except BaseException as exc:
                for _, f in batch:
                    f.set_exception(exc)
        return future.result()


class Gathered(Generic[T, R]):
    """:class:`Batched` for asyncio: items that arrive while a run of ``fn`` is under way
    (or in the same turn of the loop) share the next run: it starts on the next turn, so
    callers that became ready together share it."""

    def __init__(self, fn: Callable[[list[T]], Awaitable[list[R]]], max_items: int = 256
                 ) -> None:
        self._fn, self._max = fn, max_items
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        """``fn``'s result for ``item``, from the next run (shared with its batch)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)  # one more turn: callers ready by then join too
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                try:
                    results = await self._fn([x for x, _ in batch])
                except Exception as exc:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for (_, f), r in zip(batch, results, strict=True):
                    if not f.done():  # its caller may have given up (cancelled)
                        f.set_result(r)
        finally:
            self._runner = None
