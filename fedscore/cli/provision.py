"""``fedscore provision``: the command that creates a federation's CA and startup kits.

It parses options and prints where the kits went; the provisioning itself is
:func:`fedscore.federation.provision.provision`. :mod:`fedscore.cli.main` mounts
:func:`provision_command` as ``fedscore provision``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedscore.federation.provision import (
    CA_DIR,
    CA_KEY,
    DEFAULT_HOSTS,
    DEFAULT_PARTIES,
    ProvisionError,
    provision,
    role_of,
)

__all__ = ["provision_command"]


def provision_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory to write the CA and kits to.")
    ],
    party: Annotated[
        list[str] | None,
        typer.Option(
            "--party", "-p", help="Party name (repeat). Default: platform, bank-1..3, coordinator."
        ),
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="DNS name or IP for every TLS certificate (repeat). Default: "
            "localhost, 127.0.0.1.",
        ),
    ] = None,
    federation: Annotated[str, typer.Option(help="Federation name.")] = "fedscore-demo",
    valid_days: Annotated[int, typer.Option(min=1, help="Certificate lifetime in days.")] = 365,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing CA and kits.")
    ] = False,
    supernode_keys: Annotated[
        bool, typer.Option("--supernode-keys", help="Also give every bank kit a Flower "
                           "SuperNode auth key pair (supernode.key, supernode.pub).")
    ] = False,
) -> None:
    """Create a federation CA and one startup kit per party (keys, certs, signed manifest)."""
    parties = tuple(party) if party else DEFAULT_PARTIES
    try:
        provision(
            out,
            parties=parties,
            hosts=tuple(host) if host else DEFAULT_HOSTS,
            federation=federation,
            valid_days=valid_days,
            force=force,
            supernode_keys=supernode_keys,
        )
    except ProvisionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"federation {federation!r}: CA in {out / CA_DIR} (keep {CA_KEY} offline)")
    for p in parties:
        typer.echo(f"  {role_of(p):<12} {p:<16} kit: {out / p}")
