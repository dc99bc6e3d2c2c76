"""``fedscore provision``: the command that creates a federation's CA and startup kits, and
its ``revoke`` and ``rotate`` subcommands that shut a party out or renew its keys.

It parses options and prints where the kits went; the work itself is in
:mod:`fedscore.federation.provision`. :mod:`fedscore.cli.main` mounts :data:`provision_app`
as ``fedscore provision``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedscore.federation.provision import (
    CA_DIR,
    CA_KEY,
    CRL,
    DEFAULT_HOSTS,
    DEFAULT_PARTIES,
    SUPERNODE_PUB,
    ProvisionError,
    TrustUpdate,
    provision,
    revoke,
    role_of,
    rotate,
)

__all__ = ["provision_app", "provision_command"]

provision_app = typer.Typer(
    invoke_without_command=True, no_args_is_help=False,
    help="Create a federation CA and one startup kit per party; revoke or rotate a party.")

OUT_HELP = "Directory with the CA folder and the kits (as `fedscore provision` wrote it)."


@provision_app.callback()
def provision_command(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Directory to write the CA and kits to.")
    ] = None,
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
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        typer.echo("error: missing option '--out' (the directory to write the CA and kits "
                   "to)", err=True)
        raise typer.Exit(code=2)
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


def _report(update: TrustUpdate, what: str) -> None:
    typer.echo(f"{what}: certificate {update.revoked_serial:x} of {update.party} is on "
               f"revocation list {update.crl_number} ({CRL}); manifest version "
               f"{update.version}")
    for kit in update.updated_kits:
        typer.echo(f"  updated {kit}")
    typer.echo("Hand federation.json, federation.sig and revoked.crl to every other party and "
               "send SIGHUP to its platform node and scoring servers (or restart them); "
               "coordinators and SuperNodes read them at the next run.")


@provision_app.command("revoke")
def revoke_command(
    out: Annotated[Path, typer.Option("--out", "-o", help=OUT_HELP)],
    party: Annotated[str, typer.Option("--party", "-p", help="The party to shut out.")],
) -> None:
    """Revoke a party: its certificate goes on the CA's revocation list, its keys to the
    manifest's history (its past ledger entries still verify)."""
    try:
        update = revoke(out, party)
    except ProvisionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    _report(update, f"revoked {party}")
    if role_of(party) == "bank":
        typer.echo(f"On the SuperLink: `flwr supernode list`, then `flwr supernode unregister "
                   f"<node-id>` for {party}'s SuperNode (its key {SUPERNODE_PUB}), so it can "
                   "no longer connect.")


@provision_app.command("rotate")
def rotate_command(
    out: Annotated[Path, typer.Option("--out", "-o", help=OUT_HELP)],
    party: Annotated[str, typer.Option("--party", "-p", help="The party whose certificate "
                                       "and keys to renew.")],
    valid_days: Annotated[int, typer.Option(min=1, help="The new certificate's lifetime in "
                                            "days.")] = 365,
) -> None:
    """Give one party a new kit (new certificate from the same CA, new keys) and revoke its
    old certificate; no other party is re-keyed."""
    try:
        update = rotate(out, party, valid_days=valid_days)
    except ProvisionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    _report(update, f"rotated {party}: new kit in {out / party}")
    if (out / party / SUPERNODE_PUB).exists():
        typer.echo(f"On the SuperLink: `flwr supernode register {out / party / SUPERNODE_PUB}` "
                   f"and `flwr supernode unregister <old node-id>` for {party}.")
