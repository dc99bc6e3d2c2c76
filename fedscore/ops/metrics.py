"""Every Prometheus metric a fedscore node exports, and the ``/metrics`` endpoint.

The metrics live in ``prometheus_client``'s process-wide registry; each carries the
``party`` of the node that counts it (a test may run several nodes in one process), so a
scrape of a node's endpoint is read by its party. Label values are party names, message
kinds, directions, gRPC methods and codes, reasons and outcomes: never a customer's id or
a feature value (``tests/test_privacy.py`` searches the logs; the label sets below are
the whole vocabulary).

Where they are counted:

- messages and bytes per peer and kind: :class:`MessageCounters`, called by the audit
  ledger for every entry it is handed (``fedscore.ledger.writer.Ledger``), so the counters
  and the ledgers count the same messages, in one place, gRPC and Flower alike;
- ledger entries written and the latency of each signed write: the ledger's writer;
- gRPC requests, latency and in-flight calls per method and code: the servers'
  interceptors (``fedscore.wire.observe``);
- PSI rows (from the ledgered PSI messages), training steps, sessions and round
  durations, scoring decisions, fallbacks and refusals: where each happens.

:func:`serve` starts the HTTP endpoint (a node's ``metrics-address`` key); it is off
unless the key is set.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "GRPC_IN_FLIGHT",
    "GRPC_REQUESTS",
    "GRPC_SECONDS",
    "LEDGER_ENTRIES",
    "LEDGER_WRITE_SECONDS",
    "MESSAGES",
    "MESSAGE_BYTES",
    "PSI_INTERSECTION",
    "PSI_ROWS",
    "REFUSALS",
    "ROUNDS",
    "ROUND_SECONDS",
    "SCORING_DECISIONS",
    "SCORING_FALLBACKS",
    "SESSIONS",
    "TRAINING_STEPS",
    "MessageCounters",
    "MetricsServer",
    "metrics_address",
    "serve",
]

log = logging.getLogger("fedscore.ops.metrics")
messages_log = logging.getLogger("fedscore.messages")

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0, 60.0)
_ROUND = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

MESSAGES = Counter(
    "fedscore_messages_total",
    "Messages this node sent or received, as its audit ledger records them",
    ["party", "peer", "direction", "kind"])
MESSAGE_BYTES = Counter(
    "fedscore_message_bytes_total",
    "Payload bytes of those messages (the bytes the ledger hashes)",
    ["party", "peer", "direction", "kind"])
LEDGER_ENTRIES = Counter(
    "fedscore_ledger_entries_total", "Entries signed and appended to the audit ledger",
    ["party"])
LEDGER_WRITE_SECONDS = Histogram(
    "fedscore_ledger_write_seconds",
    "Time to hash, chain, sign and append one batch of ledger entries", ["party"],
    buckets=_LATENCY)
PSI_ROWS = Counter(
    "fedscore_psi_rows_total", "Blinded ids in the PSI messages sent or received",
    ["party", "peer", "direction"])
PSI_INTERSECTION = Gauge(
    "fedscore_psi_intersection_rows", "The intersection size of the last PSI with a peer",
    ["party", "peer"])
TRAINING_STEPS = Counter(
    "fedscore_training_steps_total",
    "Split-learning steps (one batch forward and backward) per peer", ["party", "peer"])
SESSIONS = Counter(
    "fedscore_sessions_total", "Sessions opened with a peer (each after a PSI)",
    ["party", "peer"])
ROUNDS = Counter(
    "fedscore_rounds_total", "Federated rounds finished", ["party", "outcome"])
ROUND_SECONDS = Histogram(
    "fedscore_round_duration_seconds", "Wall time of a federated round", ["party"],
    buckets=_ROUND)
GRPC_REQUESTS = Counter(
    "fedscore_grpc_requests_total", "gRPC calls served, by method and final status code",
    ["party", "method", "code"])
GRPC_SECONDS = Histogram(
    "fedscore_grpc_request_seconds", "Wall time of a served gRPC call (a stream: all of it)",
    ["party", "method"], buckets=_LATENCY)
GRPC_IN_FLIGHT = Gauge(
    "fedscore_grpc_requests_in_flight", "gRPC calls being served now", ["party", "method"])
SCORING_DECISIONS = Counter(
    "fedscore_scoring_decisions_total",
    "Applicants scored, by outcome and by what became of the platform's part",
    ["party", "method", "outcome", "platform"])
SCORING_FALLBACKS = Counter(
    "fedscore_scoring_fallbacks_total",
    "Decisions taken by the policy's fallback, by why the platform's part was missing",
    ["party", "reason"])
REFUSALS = Counter(
    "fedscore_refusals_total", "Requests refused, by reason and status code",
    ["party", "peer", "reason", "code"])

PSI_POINTS_KIND = "psi-blinded-ids"  # fedscore.ledger.taps' kinds, by value (a lower room)
PSI_RESULT_KIND = "psi-result"


class MessageCounters:
    """The message counters of one node (its ledger's party), one child per peer,
    direction and kind, looked up once: per message, two increments and a dict lookup
    (well under a microsecond). At DEBUG, one log line per message (``fedscore.messages``:
    peer, direction, kind, bytes; never its content)."""

    __slots__ = ("_children", "_lock", "party")

    def __init__(self, party: str) -> None:
        self.party = party
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def _child(self, key: tuple[str, str, str]) -> tuple[Any, Any]:
        with self._lock:
            found = self._children.get(key)
            if found is None:
                labels = (self.party, *key)
                found = (MESSAGES.labels(*labels), MESSAGE_BYTES.labels(*labels))
                self._children[key] = found
            return found

    def count(self, peer: str, direction: str, kind: str, size: int, rows: int,
              round_: int) -> None:
        """Count one message of ``size`` bytes (``rows``: its ledger rows)."""
        key = (peer, direction, kind)
        children = self._children.get(key) or self._child(key)
        children[0].inc()
        children[1].inc(size)
        if rows:
            if kind == PSI_POINTS_KIND:
                PSI_ROWS.labels(self.party, peer, direction).inc(rows)
            elif kind == PSI_RESULT_KIND:
                PSI_INTERSECTION.labels(self.party, peer).set(rows)
        if messages_log.isEnabledFor(logging.DEBUG):
            messages_log.debug("message %s %s %s: %s, %d bytes, round %d", direction,
                               "to" if direction == "sent" else "from", peer, kind, size,
                               round_, extra={"peer": peer, "kind": kind, "bytes": size,
                                              "direction": direction, "round": round_})


def observe_round(party: str, seconds: float, outcome: str = "committed") -> None:
    """A federated round finished after ``seconds``."""
    ROUNDS.labels(party, outcome).inc()
    ROUND_SECONDS.labels(party).observe(seconds)


# --------------------------------------------------------------------------------------------
# the endpoint
# --------------------------------------------------------------------------------------------

_PORT_ONLY = re.compile(r"^[0-9]{1,5}$")


def metrics_address(value: str) -> str:
    """``host:port`` for a ``metrics-address`` value: a bare port is bound to 127.0.0.1
    (metrics describe the federation's traffic: expose them on purpose, not by default)."""
    value = value.strip()
    return f"127.0.0.1:{value}" if _PORT_ONLY.match(value) else value


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it."""

    host: str
    port: int
    _shutdown: Callable[[], None]

    @property
    def url(self) -> str:
        """Where Prometheus scrapes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (idempotent)."""
        self._shutdown()


def serve(address: str, party: str = "") -> MetricsServer:
    """Serve the process's metrics on ``address`` (``host:port``, or a bare port for
    127.0.0.1; port 0: any free one) in a daemon thread; logs where (INFO)."""
    host, _, port = metrics_address(address).rpartition(":")
    host = host.strip("[]")
    server, thread = start_http_server(int(port), addr=host, registry=REGISTRY)
    done = threading.Event()

    def shutdown() -> None:
        if not done.is_set():
            done.set()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    served = MetricsServer(host, int(server.server_port), shutdown)
    log.info("%smetrics on %s", f"{party}: " if party else "", served.url,
             extra={"event": "metrics", "url": served.url})
    return served
