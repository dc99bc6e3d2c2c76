"""Check the nodes' ledgers against each other (``fedscore audit verify``).

One ledger proves little about its own writer (whoever holds the key can rewrite it); two
ledgers that each recorded the same message, signed by two different parties, do. So the
auditor collects the ledger folders of several nodes and :func:`verify_ledgers` checks each
chain and every signature (:func:`fedscore.ledger.verify.check_chain`), then pairs every message
A recorded as sent to B with the one B recorded as received from A (same SHA-256 and size,
same kind), and reports what only one side recorded. Verify keys come from the CA-signed
federation manifest in any party's startup kit, never from the ledgers themselves. What it
finds is an :class:`fedscore.audit.findings.AuditReport`; the command is
:mod:`fedscore.cli.audit`.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedscore.audit.findings import AuditReport, LedgerSummary, Traffic, Unmatched, ledger_party
from fedscore.crypto.primitives import VerifyKey
from fedscore.ledger.entry import LEDGER_FILE, Entry
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


def _match(report: AuditReport, records: dict[str, list[_Rec]]) -> None:
    """Pair sent with received entries per boundary; fill unmatched, problems, traffic."""
    given = set(records)
    sent: dict[tuple[str, str], list[_Rec]] = defaultdict(list)
    received: dict[tuple[str, str], list[_Rec]] = defaultdict(list)
    for party, recs in records.items():
        for r in recs:
            e = r.entry
            if e.peer == party:
                continue
            if e.direction == "sent":
                sent[(party, e.peer)].append(r)
            else:
                received[(e.peer, party)].append(r)

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
            if s.entry.kind != e.kind or s.entry.round != e.round:
                report.problems.append(
                    f"{r.file}:{r.line} seq {e.seq}: {receiver} recorded {e.kind} (round "
                    f"{e.round}) for the message {sender} recorded as {s.entry.kind} (round "
                    f"{s.entry.round}) at {s.file}:{s.line} seq {s.entry.seq}: the two ends "
                    "disagree on what it was"
                )
        for queue in waiting.values():
            for s in queue:
                report.unmatched.append(_unmatched(s, sender, receiver, "sender"))
    report.unmatched.sort(key=lambda u: (u.time, u.sender, u.receiver, u.seq))
    report.traffic = {k: Traffic(v[0], v[1]) for k, v in sorted(traffic.items())}


def _order(r: _Rec) -> tuple[float, int]:
    """Message order across a party's ledgers (each chain has its own seqs)."""
    return r.entry.time, r.entry.seq


def _unmatched(r: _Rec, sender: str, receiver: str, recorded_by: str) -> Unmatched:
    e = r.entry
    return Unmatched(sender, receiver, recorded_by, e.kind, e.bytes, e.payload_sha256,
                     e.round, e.time, r.file, r.line, e.seq)
