"""Mutual-TLS gRPC plumbing built from a validated startup kit.

Every channel in the federation is mutual TLS with certificates from the federation CA:
servers require a client certificate, clients pin the server's party name (the DNS SAN
``<party>`` that provisioning puts in every TLS certificate), and both trust only the kit's
CA. Servicers learn who is calling from the verified client certificate via
:func:`peer_party`, never from anything in the request.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from cryptography import x509

from fedscore.federation.provision import KitError, PeerInfo, StartupKit

if TYPE_CHECKING:
    from fedscore.ledger.writer import Ledger

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

GRPC_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keepalive so a dead peer (bank VM gone, NAT timeout) is noticed within ~40 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Server side: accept those pings instead of answering GOAWAY "too_many_pings".
    # (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS; the default is 5 minutes.)
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # gRPC sets SO_REUSEPORT by default: a second server on a busy port would bind silently
    # and share its connections. Fail the bind instead.
    ("grpc.so_reuseport", 0),
]
"""Options for every fedscore server and channel (64 MiB messages, keepalive)."""


def _merge(
    base: Sequence[tuple[str, Any]], extra: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """Later options replace earlier ones with the same key (gRPC would keep both)."""
    merged: dict[str, Any] = {}
    for key, value in [*base, *extra]:
        merged[key] = value
    return list(merged.items())


def server_credentials(kit: StartupKit) -> grpc.ServerCredentials:
    """Server side of mutual TLS: present the kit's certificate, demand a CA-signed client."""
    return grpc.ssl_server_credentials(
        [(kit.key_pem, kit.cert_pem)],
        root_certificates=kit.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(kit: StartupKit) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: trust only the kit's CA, present the kit's certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=kit.ca_pem,
        private_key=kit.key_pem,
        certificate_chain=kit.cert_pem,
    )


def channel_options(
    kit: StartupKit, server_party: str, options: Sequence[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    """GRPC_OPTIONS plus the server-name pin; also usable for ``grpc.aio`` channels."""
    if server_party not in kit.peers:
        raise KitError(
            f"{kit.path}: cannot connect to {server_party!r}: not a party of federation "
            f"{kit.federation!r} (parties: {', '.join(sorted(kit.peers))})"
        )
    pin = [
        ("grpc.ssl_target_name_override", server_party),
        ("grpc.default_authority", server_party),
    ]
    return _merge(GRPC_OPTIONS, [*options, *pin])


def secure_channel(
    target: str,
    kit: StartupKit,
    server_party: str,
    options: Sequence[tuple[str, Any]] = (),
    *,
    ledger: Ledger | None = None,
) -> grpc.Channel:
    """A mutual-TLS channel to ``target`` that only accepts ``server_party``'s certificate.

    ``target`` is where to dial (host:port); the identity check is against the party name,
    so dialling 127.0.0.1 still verifies that the far end is, say, ``platform``. With
    ``ledger``, every message sent or received on it is recorded there (health probes
    aside).
    """
    channel = grpc.secure_channel(
        target, channel_credentials(kit), options=channel_options(kit, server_party, options)
    )
    if ledger is None:
        return channel
    from fedscore.ledger.taps import HEALTH_METHODS, LedgerChannel, SerializerTap

    return LedgerChannel(channel, SerializerTap(ledger, server_party, ignore=HEALTH_METHODS))


def add_secure_port(server: grpc.Server, address: str, kit: StartupKit) -> int:
    """Bind ``address`` (port 0 picks a free one) with mutual TLS; return the bound port."""
    try:
        port = server.add_secure_port(address, server_credentials(kit))
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC server to {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return port


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def peer_party(context: grpc.ServicerContext, kit: StartupKit | None = None) -> str:
    """The party name (certificate CN) of the authenticated client.

    Aborts the call with UNAUTHENTICATED if the connection has no verified client
    certificate, which cannot happen behind :func:`add_secure_port`, and, given the node's
    ``kit``, if that certificate is on the federation's revocation list (as the node has
    it now: a SIGHUP reload takes effect on the next call, also on open connections).
    """
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        _abort(context, grpc.StatusCode.UNAUTHENTICATED, "mutual TLS required")
    names = auth.get("x509_common_name") or []
    if len(names) != 1:
        _abort(context, grpc.StatusCode.UNAUTHENTICATED, "no verified client certificate")
    name = names[0].decode("utf-8")
    if kit is not None:
        refuse_revoked(context, kit, name)
    return name


@functools.lru_cache(maxsize=1024)
def _serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def refuse_revoked(context: grpc.ServicerContext, kit: StartupKit, name: str) -> None:
    """Abort UNAUTHENTICATED when the caller's verified certificate is revoked.

    gRPC's Python TLS has no CRL hook at the handshake, so the check runs on every call
    (serials of certificates seen are cached; a revoked one costs a set lookup)."""
    trust = kit.trust
    if not trust.revoked:
        return
    pems = context.auth_context().get("x509_pem_cert") or []
    if len(pems) != 1:
        _abort(context, grpc.StatusCode.UNAUTHENTICATED,
               "no client certificate to check against the revocation list")
    serial = _serial(pems[0])
    if serial in trust.revoked:
        _abort(context, grpc.StatusCode.UNAUTHENTICATED,
               f"certificate {serial:x} of {name!r} is revoked (federation revocation list "
               f"number {trust.crl_number})")


def authorize_peer(context: grpc.ServicerContext, kit: StartupKit, *roles: str) -> PeerInfo:
    """The caller's manifest entry; aborts UNAUTHENTICATED if its certificate is revoked,
    PERMISSION_DENIED if unknown (a revoked party is no longer in the manifest) or of
    another role."""
    name = peer_party(context, kit)
    info = kit.peers.get(name)
    if info is None:
        _abort(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            f"{name!r} is not a party of federation {kit.federation!r}",
        )
    if roles and info.role not in roles:
        _abort(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            f"{name!r} has role {info.role!r}; this call needs {' or '.join(roles)}",
        )
    return info
