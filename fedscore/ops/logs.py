"""The one logging setup of every fedscore node.

:func:`configure` installs one handler on the root logger: human-readable lines
(``time level logger: message``, no colour codes) by default, or one JSON object per line
with ``log_format="json"`` (a node's ``--log-format json`` flag or ``log-format`` key), for
a log shipper. ``--log-level`` (key ``log-level``) sets the level:

- DEBUG: one line per message a node sends or receives (``fedscore.messages``: peer,
  direction, kind, bytes) and one per gRPC call it serves (``fedscore.requests``: method,
  code, milliseconds);
- INFO: lifecycle (loading, serving, draining, stopped), sessions, rounds, releases;
- WARNING and up: refusals, fallbacks, failures.

No line at any level carries a customer's id or a feature value: the fields of every
line are party names, kinds, methods, codes, counts and times (``tests/test_privacy.py``
plants canary ids and searches a whole run's DEBUG log for them). Fields a call passes
with ``extra={...}`` become keys of the JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JsonFormatter", "TextFormatter", "configure"]

LOG_FORMATS = ("text", "json")
"""The values of ``--log-format`` / ``log-format``."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""The values of ``--log-level`` / ``log-level``."""

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``2026-12-01 10:00:00.123 INFO    platform_node.server: message``."""

    def __init__(self, party: str = "") -> None:
        prefix = f"{party} " if party else ""
        super().__init__(f"%(asctime)s.%(msecs)03d %(levelname)-7s {prefix}%(name)s: "
                         "%(message)s", datefmt="%Y-%m-%d %H:%M:%S")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``party`` (when known), ``message``, the call's ``extra`` fields, ``exc`` (a
    traceback, when there is one)."""

    def __init__(self, party: str = "") -> None:
        super().__init__()
        self._party = party

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        t = time.gmtime(record.created)
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        if self._party:
            doc["party"] = self._party
        doc["message"] = record.getMessage()
        doc.update(_extra(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class _Ours(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """The handler :func:`configure` installs (and replaces on the next call)."""


def configure(level: str = "INFO", log_format: str = "text", *, party: str = "",
              stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr) in
    ``log_format`` ("text" or "json"); ``party`` names the node in each line. Calling it
    again replaces the handler it installed. Returns that handler."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    name = level.upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Ours)]:
        root.removeHandler(handler)
    handler = _Ours(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(party) if log_format == "json" else TextFormatter(party))
    root.addHandler(handler)
    root.setLevel(name)
    return handler
