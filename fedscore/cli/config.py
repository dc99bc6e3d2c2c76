"""``fedscore config``: check a node's config file before the node starts, list the keys.

The schemas and the loader are :mod:`fedscore.federation.nodeconfig`; this is only the
command line over them.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

config_app = typer.Typer(help="Check node config files; list each role's keys.",
                         no_args_is_help=True)
console = Console()
err = Console(stderr=True)

ROLE_HELP = ("The role to check for: platform, score-server, bank-train, supernode or "
             "coordinator (default: the file's role key; Flower's files, supernode and "
             "coordinator, carry none).")


@config_app.command("check")
def check(
    files: list[Path] = typer.Argument(..., help="Node config files (TOML)."),
    role: str | None = typer.Option(None, help=ROLE_HELP),
) -> None:
    """Check each file for its role; name every problem: file, key, value, expectation."""
    from fedscore.federation.nodeconfig import NodeConfigError, check_file

    failed = False
    for path in files:
        try:
            cfg = check_file(path, role)
        except NodeConfigError as exc:
            failed = True
            for problem in exc.problems:
                err.print(f"[red]error:[/red] {escape(problem)}", highlight=False,
                          soft_wrap=True)
            continue
        console.print(f"{escape(str(path))}: a valid {cfg.role} config (for {cfg.command})",
                      highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@config_app.command("keys")
def keys(role: str = typer.Argument(..., help="platform, score-server, bank-train, "
                                    "supernode or coordinator.")) -> None:
    """List a role's keys with their defaults and meaning."""
    from fedscore.federation.nodeconfig import ROLES, show

    model = ROLES.get(role)
    if model is None:
        err.print(f"[red]error:[/red] role {escape(show(role))}: expected one of "
                  f"{', '.join(ROLES)}", highlight=False)
        raise typer.Exit(1)
    table = Table(title=f"{role}: keys of a file for {model.command}")
    for column in ("key", "default", "meaning"):
        table.add_column(column)
    for name, field in model.model_fields.items():
        default = "(required)" if field.is_required() else (
            "(none)" if field.default is None else show(field.default))
        table.add_row(field.alias or name, default, field.description or "")
    console.print(table)
