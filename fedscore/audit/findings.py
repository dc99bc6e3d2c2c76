"""What an audit finds, in types the verifier and the report share.

:func:`fedscore.audit.verify.verify_ledgers` fills an :class:`AuditReport`; the report
(:mod:`fedscore.audit.data` and the modules that render it) reads one. Both also need
:func:`ledger_party`, the guess of whose ledger a folder holds. Nothing here verifies or
renders; this module imports only :mod:`fedscore.ledger.entry` (file names, entry parser).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fedscore.ledger.entry import HEAD_FILE, LEDGER_FILE, parse_line

__all__ = ["AuditReport", "FailedSend", "LedgerSummary", "Traffic", "Unmatched",
           "ledger_party"]


@dataclass(frozen=True)
class Unmatched:
    """A message only one of its two ends recorded (both ends' ledgers were given)."""

    sender: str
    receiver: str
    recorded_by: str  # "sender" or "receiver"
    kind: str
    bytes: int
    payload_sha256: str
    round: int
    time: float
    file: Path
    line: int
    seq: int

    def __str__(self) -> str:
        other = self.receiver if self.recorded_by == "sender" else self.sender
        what = "received" if self.recorded_by == "sender" else "sent"
        when = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return (
            f"{self.file}:{self.line} seq {self.seq}: {self.kind} message {self.sender} -> "
            f"{self.receiver} ({self.bytes} bytes, round {self.round}, sha256 "
            f"{self.payload_sha256[:16]}..., {when}) recorded by the {self.recorded_by} only: "
            f"{other}'s ledger has no matching {what} entry"
        )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class FailedSend:
    """A message its sender recorded as sent and then as failed (its call's ``status``):
    an outage, not a hidden message, when the receiver has no entry for it
    (``delivered`` False); ``delivered`` when the receiver got it all the same."""

    sender: str
    receiver: str
    kind: str
    bytes: int
    payload_sha256: str
    time: float
    """When it was recorded as sent."""
    status: str
    failed_time: float
    delivered: bool
    file: Path
    line: int
    seq: int
    """Where its failed entry is."""

    def __str__(self) -> str:
        return (f"{self.file}:{self.line} seq {self.seq}: {self.kind} message {self.sender} "
                f"-> {self.receiver} ({self.bytes} bytes, sent {_iso(self.time)}) failed with "
                f"{self.status}"
                + ("; the receiver recorded it all the same" if self.delivered else ""))


@dataclass(frozen=True)
class Traffic:
    """Messages and bytes that crossed one boundary, of one kind."""

    messages: int
    bytes: int


@dataclass(frozen=True)
class LedgerSummary:
    """One ledger folder as verified: whose, where, its valid entries and its problems."""

    party: str
    folder: Path
    entries: int
    problems: int

    @property
    def chain_ok(self) -> bool:
        """Whether the chain and every signature in it verified."""
        return self.problems == 0


@dataclass
class AuditReport:
    """What :func:`verify_ledgers` found. ``ok`` only without any problem or unmatched one."""

    parties: list[str] = field(default_factory=list)
    ledgers: list[LedgerSummary] = field(default_factory=list)
    """One per ledger folder; a party may keep several (a bank's training and scoring)."""
    problems: list[str] = field(default_factory=list)
    unmatched: list[Unmatched] = field(default_factory=list)
    traffic: dict[tuple[str, str, str], Traffic] = field(default_factory=dict)
    """(from, to, kind) -> messages and bytes, each message counted once."""
    failed: list[FailedSend] = field(default_factory=list)
    """Sends their sender recorded as failed (an outage; delivered or not), by time."""
    answered_late: list[Unmatched] = field(default_factory=list)
    """Answers only their sender recorded, each explained by one call of the receiver's
    that failed after its request had arrived (it gave up: DEADLINE_EXCEEDED, CANCELLED;
    or the connection broke: UNAVAILABLE): the answer never reached it."""

    @property
    def outages(self) -> list[str]:
        """One line per boundary and status: how many sends failed, and when."""
        groups: dict[tuple[str, str, str], list[FailedSend]] = {}
        for f in self.failed:
            if not f.delivered:
                groups.setdefault((f.sender, f.receiver, f.status), []).append(f)
        lines = [
            f"{s} -> {r}: {len(fs):,} send(s) failed with {status}, between "
            f"{_iso(min(f.time for f in fs))} and {_iso(max(f.failed_time for f in fs))}"
            for (s, r, status), fs in sorted(groups.items())
        ]
        late: dict[tuple[str, str], list[Unmatched]] = {}
        for u in self.answered_late:
            late.setdefault((u.sender, u.receiver), []).append(u)
        lines += [
            f"{s} -> {r}: {len(us):,} answer(s) sent after {r} had given up on them, between "
            f"{_iso(min(u.time for u in us))} and {_iso(max(u.time for u in us))}"
            for (s, r), us in sorted(late.items())
        ]
        return lines

    @property
    def entries(self) -> dict[str, int]:
        """Valid entries per party, over all of its ledgers."""
        counts: Counter[str] = Counter()
        for s in self.ledgers:
            counts[s.party] += s.entries
        return dict(counts)

    @property
    def ok(self) -> bool:
        """Whether everything verified and every message was recorded by both ends."""
        return not self.problems and not self.unmatched



def ledger_party(folder: Path) -> str | None:
    """Whose ledger this is, as the entries say (most of them), else as the head says.

    Only a guess to pick the verify key; the chain check then proves it or reports it.
    """
    path = Path(folder) / LEDGER_FILE
    counts: Counter[str] = Counter()
    try:
        for raw in path.read_bytes().split(b"\n"):
            try:
                counts[parse_line(raw).party] += 1
            except ValueError:
                continue
    except OSError:
        return None
    if counts:
        return counts.most_common(1)[0][0]
    try:
        head = json.loads((Path(folder) / HEAD_FILE).read_bytes())
        party = head.get("party") if isinstance(head, dict) else None
    except (OSError, ValueError):
        return None
    return party if isinstance(party, str) and party else None
