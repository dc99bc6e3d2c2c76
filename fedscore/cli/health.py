"""``fedscore health``: ask a node's gRPC health service, or list its services by reflection.

Every fedscore server answers ``grpc.health.v1`` (NOT_SERVING while it loads and while it
drains, SERVING in between) and server reflection, over the node's mutual TLS: the probe
presents a startup kit of the federation (any party's) and pins the server's party name,
as every channel does. For a container's ``HEALTHCHECK``: exit 0 when SERVING, 1 else.
The node's warnings (a certificate within ``cert-warn-days`` of expiry) follow the status,
one ``warning:`` line each; they do not change the exit code.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)


def health_command(
    address: str = typer.Argument(..., help="The server's host:port."),
    kit: Path = typer.Option(..., help="A startup kit of the federation (for mutual TLS)."),
    server: str = typer.Option("platform", help="The server's party: platform, or the bank "
                               "whose scoring server it is."),
    service: str = typer.Option("", help="One service's status (default: the server's)."),
    list_services: bool = typer.Option(False, "--list", help="List the server's services "
                                       "(reflection) instead."),
    timeout: float = typer.Option(5.0, help="Seconds to wait for the answer."),
) -> None:
    """Print the server's health status (exit 0 only when SERVING), or its services."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from fedscore.federation.provision import KitError, load_kit
    from fedscore.wire.health import DETAIL_KEY
    from fedscore.wire.transport import secure_channel

    try:
        party_kit = load_kit(kit)
        with secure_channel(address, party_kit, server) as channel:
            if list_services:
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                replies = stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                    timeout=timeout)
                for reply in replies:
                    for found in reply.list_services_response.service:
                        console.print(found.name, highlight=False)
                return
            answer, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except KitError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    except grpc.RpcError as exc:
        err.print(f"[red]error:[/red] {address}: {exc.code().name}: "
                  f"{escape(exc.details() or '')}", highlight=False)
        raise typer.Exit(1) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    console.print(status, highlight=False)
    for key, value in call.trailing_metadata() or ():
        if key == DETAIL_KEY:  # the node's warnings, e.g. a certificate about to expire
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            console.print(f"warning: {escape(text)}", highlight=False, soft_wrap=True)
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(1)
