"""``fedscore audit``: the command line of the audit room (``verify`` and ``report``).

The commands parse options, call :func:`fedscore.audit.verify.verify_ledgers` and
:func:`fedscore.audit.report.audit_and_report`, and print what they found; the checks and
the report themselves live in :mod:`fedscore.audit`. :mod:`fedscore.cli.main` mounts
:data:`audit_app` as ``fedscore audit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedscore.audit.report import audit_and_report
from fedscore.audit.verify import verify_ledgers

__all__ = ["audit_app", "report_command", "verify_command"]

audit_app = typer.Typer(
    help="Verify the audit ledgers the nodes write, and report on them.", no_args_is_help=True
)
"""The ``fedscore audit`` sub-app: ``verify`` and ``report``."""


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
        keys = load_kit(kit).ledger_keys()
    except KitError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    report = verify_ledgers(folders, keys)

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
    for line in report.outages:
        console.print(f"[yellow]outage:[/yellow] {escape(line)}")
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
