"""When and how long the bank waits before trying the platform again.

A call that failed because the platform was unreachable or too slow (UNAVAILABLE,
DEADLINE_EXCEEDED: it restarted, the network blinked, it was overloaded) is worth
another try after a pause; every other code (PERMISSION_DENIED, INVALID_ARGUMENT,
FAILED_PRECONDITION, ...) is an answer, and trying again would get the same one. The
decision is on the error's gRPC code, never on its text. Pauses grow exponentially up to
a cap, with jitter so that banks cut off together do not come back together.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from fedscore.errors import FedscoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""The codes worth another try."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the project's errors with a :data:`TRANSIENT` code."""
    return isinstance(exc, FedscoreError) and exc.code in TRANSIENT


@dataclass(frozen=True)
class Backoff:
    """Pauses of ``first_s`` x ``factor``^n, at most ``max_s`` each (each drawn uniformly
    from its upper half: jitter), for at most ``attempts`` tries in all."""

    first_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    attempts: int = 10

    def __post_init__(self) -> None:
        if not (self.first_s > 0 and self.factor >= 1 and self.max_s >= self.first_s
                and self.attempts >= 1):
            raise ValueError("Backoff: first_s > 0, factor >= 1, max_s >= first_s and "
                             "attempts >= 1 required")

    def pauses(self, rng: random.Random | None = None) -> Iterator[float]:
        """The pause before each retry (``attempts - 1`` of them)."""
        draw = rng or random.Random()
        for n in range(self.attempts - 1):
            ceiling = min(self.max_s, self.first_s * self.factor ** n)
            yield ceiling / 2 + draw.random() * ceiling / 2


def retrying(call: Callable[[int], T], backoff: Backoff, *,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """``call(attempt)`` until it returns; a transient error is retried after a pause,
    any other error (or the last attempt's) is raised as it is."""
    pauses = backoff.pauses()
    attempt = 0
    while True:
        try:
            return call(attempt)
        except FedscoreError as exc:
            if not is_transient(exc):
                raise
            pause = next(pauses, None)
            if pause is None:
                raise
            attempt += 1
            log.warning("the platform is unreachable (%s); trying again in %.1f s "
                        "(attempt %d of %d)", exc.code.name, pause, attempt + 1,
                        backoff.attempts)
            sleep(pause)
