"""A Flower Grid that passes everything to another one: the base of the coordinator's
wrappers (the ledger's :class:`fedscore.ledger.grid.LedgeredGrid`, the dropout watch's
:class:`coordinator.dropouts.ReplyWatch`), so each overrides only what it watches."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class DelegatingGrid(Grid):
    """Every Grid method as ``grid``'s."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Run) -> None:
        """As the wrapped Grid's."""
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped Grid's run."""
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        """As the wrapped Grid's."""
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """As the wrapped Grid's."""
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """As the wrapped Grid's."""
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """As the wrapped Grid's."""
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """As the wrapped Grid's."""
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """As the wrapped Grid's."""
        return self._grid.send_and_receive(messages, timeout=timeout)
