"""``fedscore audit``: check the nodes' ledgers against each other.

One ledger proves little about its own writer (whoever holds the key can rewrite it); two
ledgers that each recorded the same message, signed by two different parties, do. So the
auditor collects the ledger folders of several nodes and :func:`verify_ledgers` checks each
chain and every signature (:func:`fedscore.ledger.verify.check_chain`), then pairs every message
A recorded as sent to B with the one B recorded as received from A (same SHA-256 and size,
same kind), and reports what only one side recorded. Verify keys come from the CA-signed
federation manifest in any party's startup kit, never from the ledgers themselves.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from fedscore.crypto.primitives import VerifyKey
from fedscore.ledger.entry import HEAD_FILE, LEDGER_FILE, Entry, parse_line
from fedscore.ledger.verify import check_chain


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


@dataclass(frozen=True)
class Traffic:
    """Messages and bytes that crossed one boundary, of one kind."""

    messages: int
    bytes: int


@dataclass(frozen=True)
class LedgerSummary:
    party: str
    folder: Path
    entries: int
    problems: int

    @property
    def chain_ok(self) -> bool:
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

    @property
    def entries(self) -> dict[str, int]:
        """Valid entries per party, over all of its ledgers."""
        counts: Counter[str] = Counter()
        for s in self.ledgers:
            counts[s.party] += s.entries
        return dict(counts)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unmatched


@dataclass(frozen=True)
class _Rec:
    file: Path
    line: int
    entry: Entry


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


def verify_ledgers(folders: Sequence[Path], keys: Mapping[str, VerifyKey]) -> AuditReport:
    """Check every ledger's chain and signatures, then both ends of every message.

    ``keys`` maps party -> verify key (from the federation manifest). Messages are matched
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
        found = check_chain(path, keys[party], party)
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


def audit_and_report(
    folders: Sequence[Path], kit: Path, out: Path, *, platform_state: Path | None = None,
    run_dir: Path | None = None, leakage: Path | None = None,
) -> tuple[AuditReport, list[str], tuple[Path, Path]]:
    """Verify ``folders`` with the keys of ``kit``'s manifest and write the reviewer's
    report (HTML, Markdown) under ``out``: (what verification found, warnings, paths)."""
    from fedscore.audit.report import build_report, write_report
    from fedscore.federation.provision import load_kit

    loaded = load_kit(kit)
    peers = loaded.peers
    keys = {name: p.verify_key for name, p in peers.items()}
    report = verify_ledgers(folders, keys)
    data = build_report(
        federation=loaded.federation, parties={n: p.role for n, p in peers.items()},
        keys=keys, folders=folders, audit=report, kit=kit, platform_state=platform_state,
        run_dir=run_dir, leakage=leakage,
    )
    return report, list(data.warnings), write_report(data, out)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

audit_app = typer.Typer(
    help="Verify the audit ledgers the nodes write, and report on them.", no_args_is_help=True
)


@audit_app.callback()
def _audit() -> None:
    """Verify the audit ledgers the nodes write (chains, signatures, both ends of every
    message) and render what crossed which boundary for a reviewer."""


@audit_app.command("verify")
def verify_command(
    folders: Annotated[
        list[Path],
        typer.Argument(help="Ledger folders (each with ledger.jsonl and ledger.head), one "
                       "per node."),
    ],
    kit: Annotated[
        Path,
        typer.Option(help="Any party's startup kit: its CA-signed manifest supplies every "
                     "party's verify key."),
    ],
) -> None:
    """Check every chain and signature, and that each message was recorded by both ends.

    Exit code 0 when everything verifies, 1 on any problem or one-sided message.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fedscore.federation.provision import KitError, load_kit

    console = Console(highlight=False, soft_wrap=True)
    try:
        peers = load_kit(kit).peers
    except KitError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    report = verify_ledgers(folders, {name: p.verify_key for name, p in peers.items()})

    ledgers = Table(title="ledgers")
    for column in ("party", "folder", "entries", "chain"):
        ledgers.add_column(column, justify="right" if column == "entries" else "left")
    for s in report.ledgers:
        chain = "[green]ok[/green]" if s.chain_ok else f"[red]{s.problems} problem(s)[/red]"
        ledgers.add_row(s.party, escape(str(s.folder)), str(s.entries), chain)
    console.print(ledgers)

    boundaries = Table(title="what crossed which boundary")
    for column in ("from", "to", "kind", "messages", "bytes"):
        boundaries.add_column(column, justify="right" if column in ("messages", "bytes")
                              else "left")
    for (sender, receiver, kind), t in report.traffic.items():
        boundaries.add_row(sender, receiver, kind, f"{t.messages:,}", f"{t.bytes:,}")
    console.print(boundaries)

    for problem in report.problems:
        console.print(f"[red]problem:[/red] {escape(problem)}")
    for u in report.unmatched:
        console.print(f"[red]unmatched:[/red] {escape(str(u))}")
    if report.ok:
        total = sum(report.entries.values())
        console.print(
            f"[green]verified[/green]: {len(report.ledgers)} ledger(s), {total:,} entries; "
            "every chain and signature valid, every message between them recorded by both "
            "ends"
        )
        return
    console.print(
        f"[red]FAILED[/red]: {len(report.problems)} problem(s), {len(report.unmatched)} "
        "message(s) recorded by one end only"
    )
    raise typer.Exit(1)


@audit_app.command("report")
def report_command(
    folders: Annotated[
        list[Path],
        typer.Argument(help="Ledger folders (each with ledger.jsonl and ledger.head); a "
                       "party may have several."),
    ],
    kit: Annotated[
        Path,
        typer.Option(help="Any party's startup kit: its CA-signed manifest supplies the "
                     "parties, their roles and their verify keys."),
    ],
    out: Annotated[
        Path, typer.Option(help="Folder to write report.html and report.md into."),
    ],
    platform_state: Annotated[
        Path | None,
        typer.Option(help="The platform's state folder, for its scoring-refusals.jsonl.",
                     exists=True, file_okay=False),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="A run's folder, for its privacy.jsonl (privacy budget per round).",
                     exists=True, file_okay=False),
    ] = None,
    leakage: Annotated[
        Path | None,
        typer.Option(help="JSON output of benchmarks/privacy.py (the whole file or its last "
                     "line): the leakage measurements.", exists=True, dir_okay=False),
    ] = None,
) -> None:
    """Verify the ledgers as `verify` does and write an HTML and a Markdown report for a
    reviewer: parties, data flow with volumes and protection, intersection sizes, scoring
    and refusals, privacy budget and leakage.

    The report is written either way; exit code 1 when verification failed.
    """
    from fedscore.federation.provision import KitError

    try:
        report, warnings, (html_path, md_path) = audit_and_report(
            folders, kit, out, platform_state=platform_state, run_dir=run_dir,
            leakage=leakage)
    except KitError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(str(html_path))
    typer.echo(str(md_path))
    if report.ok:
        return
    typer.echo(
        f"FAILED: {len(report.problems)} problem(s), {len(report.unmatched)} message(s) "
        "recorded by one end only (see the report)", err=True,
    )
    raise typer.Exit(1)
