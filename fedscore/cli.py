"""The ``fedscore`` command: one entry point for every party and every tool."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="fedscore",
    help="Privacy-preserving federated credit scoring for joint lending.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _register() -> None:
    from fedscore.data.cli import app as data_app
    from fedscore.provision import provision_command

    app.add_typer(data_app, name="data", help="Prepare scenario data sets and check tables.")
    app.command("provision")(provision_command)


_register()

if __name__ == "__main__":
    app()
