"""ReplyWatch: every wait is bounded, and the nodes that failed or kept silent are named."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from coordinator.dropouts import ReplyWatch, describe


class SilentGrid:
    """Answers only the nodes in ``answers`` (None: with an error); records the timeouts."""

    def __init__(self, answers: dict[int, bool]) -> None:
        self.answers = answers
        self.timeouts: list[float | None] = []

    def send_and_receive(self, messages: Iterable[Any], *,
                         timeout: float | None = None) -> Iterable[Any]:
        self.timeouts.append(timeout)
        out = []
        for m in messages:
            ok = self.answers.get(m.metadata.dst_node_id)
            if ok is None:
                continue  # never answers
            reason = "" if ok else "Traceback ...\n  File x\nRuntimeError: disk gone\n"
            out.append(_Reply(m.metadata.dst_node_id, reason))
        return out


@dataclass
class _Meta:
    dst_node_id: int = 0
    src_node_id: int = 0


class _Reply:
    """What ReplyWatch reads of a Flower reply (a Message needs a run to be made)."""

    def __init__(self, src: int, reason: str) -> None:
        self.metadata = _Meta(src_node_id=src)
        self.error = SimpleNamespace(reason=reason)

    def has_error(self) -> bool:
        return bool(self.error.reason)


def _msg(node: int) -> Any:
    return SimpleNamespace(metadata=_Meta(dst_node_id=node))


def test_a_silent_and_a_failing_node_are_named_and_the_wait_is_bounded() -> None:
    inner = SilentGrid({1: True, 2: False})  # node 3 never answers
    watch = ReplyWatch(inner, 7.5, lambda: {1: "bank-1", 2: "bank-2", 3: "bank-3"})  # type: ignore[arg-type]
    replies = list(watch.send_and_receive([_msg(1), _msg(2), _msg(3)]))
    assert len(replies) == 2
    assert inner.timeouts == [7.5]  # the workflow gave no timeout: the run's reply-timeout
    assert watch.lost() == {"bank-2": "error: RuntimeError: disk gone",
                            "bank-3": "no reply within 7.5 s"}
    assert describe(watch.lost()) == ("bank-2 (error: RuntimeError: disk gone), "
                                      "bank-3 (no reply within 7.5 s)")
    watch.send_and_receive([_msg(1)], timeout=2.0)
    assert inner.timeouts[-1] == 2.0  # a workflow's own timeout is kept
    watch.reset()
    assert watch.lost() == {} and describe({}) == "none"
    watch.send_and_receive([_msg(4)])
    assert watch.lost() == {"node-4": "no reply within 7.5 s"}  # not identified yet
