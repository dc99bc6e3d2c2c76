"""Check the nodes' ledgers against each other (``fedscore audit verify``).

One ledger proves little about its own writer (whoever holds the key can rewrite it); two
ledgers that each recorded the same message, signed by two different parties, do. So the
auditor collects the ledger folders of several nodes and :func:`verify_ledgers` checks each
chain and every signature (:func:`fedscore.ledger.verify.check_chain`), then pairs every message
A recorded as sent to B with the one B recorded as received from A (same SHA-256 and size,
same kind), and reports what only one side recorded. A message its sender recorded as
sent and then as failed (its call's status) that the receiver never recorded is an
outage, counted in :attr:`AuditReport.failed`, not a mismatch; an answer only its sender
recorded is one the receiver never got when the receiver recorded that (a call of its
that failed after its request arrived: it gave up, or the connection broke; one answer
per such call). A message the receiver recorded and the sender did not, or one the sender
recorded with no failure and the receiver did not, still fails. Verify keys come from the CA-signed
federation manifest in any party's startup kit, never from the ledgers themselves. What it
finds is an :class:`fedscore.audit.findings.AuditReport`; the command is
:mod:`fedscore.cli.audit`.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedscore.audit.findings import (
    AuditReport,
    FailedSend,
    LedgerSummary,
    Traffic,
    Unmatched,
    ledger_party,
)
from fedscore.crypto.primitives import VerifyKey
from fedscore.ledger.entry import FAILED, LEDGER_FILE, Entry
from fedscore.ledger.verify import check_chain

__all__ = ["verify_ledgers"]


@dataclass(frozen=True)
class _Rec:
    """One verified entry and where it was read (file, line)."""

    file: Path
    line: int
    entry: Entry


def verify_ledgers(
    folders: Sequence[Path], keys: Mapping[str, VerifyKey | Sequence[VerifyKey]]
) -> AuditReport:
    """Check every ledger's chain and signatures, then both ends of every message.

    ``keys`` maps party -> verify key (from the federation manifest), or its keys current
    first, then retired ones (:meth:`StartupKit.ledger_keys`): a ledger a party signed
    before its keys were rotated, or before it was revoked, verifies under the key it had
    then; with none verifying, the current key's problems are reported. Messages are matched
    only between parties whose ledgers were both given; entries that fail verification are
    reported as problems and left out of the matching.
    """
    report = AuditReport()
    records: dict[str, list[_Rec]] = {}
    for folder in folders:
        folder = Path(folder)
        path = folder / LEDGER_FILE
        if not path.is_file():
            report.problems.append(f"{path}: no ledger here")
            continue
        party = ledger_party(folder)
        if party is None:
            report.problems.append(f"{path}: cannot tell whose ledger this is (no readable "
                                   "entry and no readable head)")
            continue
        if party not in keys:
            report.problems.append(
                f"{path}: written by {party!r}, which is not a party of the federation (no "
                "verify key in the manifest)"
            )
            continue
        if any(s.folder.resolve() == folder.resolve() for s in report.ledgers):
            report.problems.append(f"{path}: given twice; checked once")
            continue
        given = keys[party]
        candidates = [given] if isinstance(given, VerifyKey) else list(given)
        found = check_chain(path, candidates[0], party)
        for older in candidates[1:]:
            if not found.problems:
                break
            other = check_chain(path, older, party)
            if not other.problems:
                found = other
        if party not in records:
            report.parties.append(party)
        report.ledgers.append(LedgerSummary(party, folder, len(found.entries),
                                            len(found.problems)))
        report.problems.extend(found.problems)
        records.setdefault(party, []).extend(
            _Rec(path, n, e) for n, e in zip(found.lines, found.entries, strict=True)
        )
    _match(report, records)
    return report


SKEW_S = 1.0
"""How far two nodes' clocks may disagree when an answer is paired with a call its
receiver gave up on (the answer cannot be older than the call's request)."""


def _match(report: AuditReport, records: dict[str, list[_Rec]]) -> None:
    """Pair sent with received entries per boundary; sort out failed sends and answers
    sent after their caller gave up; fill unmatched, failed, problems, traffic."""
    given = set(records)
    sent: dict[tuple[str, str], list[_Rec]] = defaultdict(list)
    received: dict[tuple[str, str], list[_Rec]] = defaultdict(list)
    failed: dict[tuple[str, str], list[_Rec]] = defaultdict(list)
    for party, recs in records.items():
        for r in recs:
            e = r.entry
            if e.peer == party:
                continue
            if e.direction == "sent":
                sent[(party, e.peer)].append(r)
            elif e.direction == FAILED:
                failed[(party, e.peer)].append(r)
            else:
                received[(e.peer, party)].append(r)
    failure_of = _failures(report, sent, failed)

    traffic: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])

    def count(sender: str, receiver: str, e: Entry) -> None:
        t = traffic[(sender, receiver, e.kind)]
        t[0] += 1
        t[1] += e.bytes

    for (sender, receiver), recs in sent.items():
        for r in recs:
            count(sender, receiver, r.entry)
    for (sender, receiver), recs in received.items():
        if sender not in given:
            for r in recs:
                count(sender, receiver, r.entry)

    sender_only: list[tuple[_Rec, str, str]] = []
    for sender, receiver in sorted(set(sent) | set(received)):
        if sender not in given or receiver not in given:
            continue
        waiting: dict[tuple[str, int], deque[_Rec]] = defaultdict(deque)
        for r in sorted(sent.get((sender, receiver), []), key=_order):
            waiting[(r.entry.payload_sha256, r.entry.bytes)].append(r)
        for r in sorted(received.get((sender, receiver), []), key=_order):
            e = r.entry
            queue = waiting.get((e.payload_sha256, e.bytes))
            if not queue:
                report.unmatched.append(_unmatched(r, sender, receiver, "receiver"))
                count(sender, receiver, e)
                continue
            s = queue.popleft()
            if id(s) in failure_of:
                report.failed.append(_failed_send(failure_of[id(s)], s, delivered=True))
            if s.entry.kind != e.kind or s.entry.round != e.round:
                report.problems.append(
                    f"{r.file}:{r.line} seq {e.seq}: {receiver} recorded {e.kind} (round "
                    f"{e.round}) for the message {sender} recorded as {s.entry.kind} (round "
                    f"{s.entry.round}) at {s.file}:{s.line} seq {s.entry.seq}: the two ends "
                    "disagree on what it was"
                )
        for queue in waiting.values():
            for s in queue:
                if id(s) in failure_of:
                    report.failed.append(_failed_send(failure_of[id(s)], s, delivered=False))
                else:
                    sender_only.append((s, sender, receiver))
    _answered_late(report, sender_only)
    report.unmatched.sort(key=lambda u: (u.time, u.sender, u.receiver, u.seq))
    report.failed.sort(key=lambda f: (f.time, f.sender, f.receiver, f.seq))
    report.traffic = {k: Traffic(v[0], v[1]) for k, v in sorted(traffic.items())}


def _failures(report: AuditReport, sent: dict[tuple[str, str], list[_Rec]],
              failed: dict[tuple[str, str], list[_Rec]]) -> dict[int, _Rec]:
    """Pair each failed entry with the sent entry of its message (same party and peer,
    SHA-256 and size, recorded before it): id(sent record) -> failed record. A failed
    entry with no such sent entry is a problem (nothing it could be about)."""
    failure_of: dict[int, _Rec] = {}
    for pair, frecs in failed.items():
        by_message: dict[tuple[str, int], deque[_Rec]] = defaultdict(deque)
        for r in sorted(sent.get(pair, []), key=_order):
            by_message[(r.entry.payload_sha256, r.entry.bytes)].append(r)
        for f in sorted(frecs, key=_order):
            e = f.entry
            queue = by_message.get((e.payload_sha256, e.bytes))
            if not queue or _order(queue[0]) > _order(f):
                report.problems.append(
                    f"{f.file}:{f.line} seq {e.seq}: {e.party} recorded a {e.kind} message "
                    f"to {e.peer} as failed ({e.status}) but never recorded sending it "
                    f"(sha256 {e.payload_sha256[:16]}...): an entry was removed or forged"
                )
                continue
            failure_of[id(queue.popleft())] = f
    return failure_of


def _answered_late(report: AuditReport, sender_only: list[tuple[_Rec, str, str]]) -> None:
    """Each message only its sender recorded is unmatched, unless it is an answer to a
    call its receiver never got the answer of: one per failed call of the receiver's
    whose request arrived, at most ``SKEW_S`` older than the answer."""
    gave_up: dict[tuple[str, str], list[FailedSend]] = defaultdict(list)
    for f in report.failed:
        if f.delivered:
            gave_up[(f.sender, f.receiver)].append(f)
    for calls in gave_up.values():
        calls.sort(key=lambda f: f.time)
    for s, sender, receiver in sorted(sender_only, key=lambda x: _order(x[0])):
        calls = gave_up.get((receiver, sender), [])
        u = _unmatched(s, sender, receiver, "sender")
        i = next((i for i, f in enumerate(calls) if f.time <= s.entry.time + SKEW_S), None)
        if i is None:
            report.unmatched.append(u)
        else:
            calls.pop(i)
            report.answered_late.append(u)


def _failed_send(f: _Rec, s: _Rec, *, delivered: bool) -> FailedSend:
    e = s.entry
    return FailedSend(e.party, e.peer, e.kind, e.bytes, e.payload_sha256, e.time,
                      f.entry.status, f.entry.time, delivered, f.file, f.line, f.entry.seq)


def _order(r: _Rec) -> tuple[float, int]:
    """Message order across a party's ledgers (each chain has its own seqs)."""
    return r.entry.time, r.entry.seq


def _unmatched(r: _Rec, sender: str, receiver: str, recorded_by: str) -> Unmatched:
    e = r.entry
    return Unmatched(sender, receiver, recorded_by, e.kind, e.bytes, e.payload_sha256,
                     e.round, e.time, r.file, r.line, e.seq)
