"""Which banks the coordinator lost: a Grid that bounds every wait and notes who failed.

Flower's workflows wait for every reply without a deadline (``timeout=None``), so one
bank's SuperNode that died or hangs would hold the run for ever. The coordinator's Grid
is wrapped in :class:`ReplyWatch`, which gives every ``send_and_receive`` the run's
``reply-timeout`` when the workflow gave none, and remembers each node that answered
with an error or not at all since the last :meth:`ReplyWatch.reset` (a round's or round
0's start). The strategies use it to name the banks a round went on without, or, when
too few are left, the banks whose loss stopped the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Message
from flwr.serverapp import Grid

from fedscore.federation.grid import DelegatingGrid

log = logging.getLogger(__name__)


class ReplyWatch(DelegatingGrid):
    """Delegates to ``grid``; bounds every wait by ``timeout`` seconds and notes lost nodes."""

    def __init__(self, grid: Grid, timeout: float,
                 names: Callable[[], Mapping[int, str]] | None = None) -> None:
        super().__init__(grid)
        self._timeout = timeout
        self._names = names or dict
        self._lost: dict[int, str] = {}  # node id -> why (since the last reset)

    # -- watched -------------------------------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Send, wait at most ``timeout`` (the run's reply-timeout when None), and note
        every node whose reply is an error or did not come."""
        messages = list(messages)
        wait = self._timeout if timeout is None else timeout
        replies = list(self._grid.send_and_receive(messages, timeout=wait))
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                self._lost.setdefault(node, f"error: {_last_line(reply.error.reason)}")
        for m in messages:
            node = m.metadata.dst_node_id
            if node not in answered:
                self._lost.setdefault(node, f"no reply within {wait:g} s")
        return replies

    def reset(self) -> None:
        """Forget the nodes lost so far (a new round starts)."""
        self._lost.clear()

    def lost(self) -> dict[str, str]:
        """Bank (or ``node-<id>`` before it identified) -> why it was lost, since the reset."""
        names = self._names()
        return {names.get(node, f"node-{node}"): why for node, why in sorted(self._lost.items())}

    def name(self, node_id: int) -> str:
        """The bank a node proved to be (``node-<id>`` if it has not)."""
        return self._names().get(node_id, f"node-{node_id}")


def _last_line(text: str | None) -> str:
    """The last non-empty line of an error (Flower's carry a whole remote traceback,
    whose last line says what happened), shortened to 200 characters."""
    lines = [x.strip() for x in (text or "").splitlines() if x.strip()]
    return (lines[-1] if lines else "no reason given")[:200]


def describe(lost: Mapping[str, str]) -> str:
    """``bank-2 (no reply within 30 s), bank-3 (error: ...)``, or ``none`` (for messages)."""
    return ", ".join(f"{bank} ({why})" for bank, why in sorted(lost.items())) or "none"
