"""Tests for fedscore.wire.transport: mutual TLS between kits of one federation, and refusals."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedscore.federation.provision import KitError, StartupKit, load_kit, provision
from fedscore.wire.transport import (
    GRPC_OPTIONS,
    MAX_MESSAGE_BYTES,
    add_secure_port,
    authorize_peer,
    peer_party,
    secure_channel,
)

TIMEOUT = 10.0
WHO = "/fedscore.test.Who/Call"


@dataclass
class Fed:
    kits: dict[str, StartupKit]
    foreign: StartupKit  # same party name, another federation's CA


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    parties = ["platform", "bank-1", "coordinator"]
    out = provision(tmp_path_factory.mktemp("fed") / "f", parties=parties)
    other = provision(tmp_path_factory.mktemp("other") / "f", parties=parties, federation="evil")
    return Fed({p: load_kit(out / p) for p in parties}, load_kit(other / "bank-1"))


@pytest.fixture(scope="module")
def server(fed: Fed) -> Iterator[int]:
    """The platform's server: a health service and a method echoing the caller's identity."""
    kit = fed.kits["platform"]

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"banks-only":
            authorize_peer(context, kit, "bank")
        return peer_party(context).encode()

    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=GRPC_OPTIONS)
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    handler = grpc.unary_unary_rpc_method_handler(who)
    srv.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("fedscore.test.Who", {"Call": handler}),)
    )
    port = add_secure_port(srv, "127.0.0.1:0", kit)
    srv.start()
    yield port
    srv.stop(grace=None)


def _check(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT).status


def test_same_federation_client_is_served(fed: Fed, server: int) -> None:
    with secure_channel(f"127.0.0.1:{server}", fed.kits["bank-1"], "platform") as ch:
        assert _check(ch) == health_pb2.HealthCheckResponse.SERVING


def test_peer_party_is_the_client_cert_name(fed: Fed, server: int) -> None:
    for party in ("bank-1", "coordinator"):
        with secure_channel(f"localhost:{server}", fed.kits[party], "platform") as ch:
            assert ch.unary_unary(WHO)(b"", timeout=TIMEOUT) == party.encode()


def test_authorize_peer_checks_role(fed: Fed, server: int) -> None:
    with secure_channel(f"127.0.0.1:{server}", fed.kits["bank-1"], "platform") as ch:
        assert ch.unary_unary(WHO)(b"banks-only", timeout=TIMEOUT) == b"bank-1"
    with (
        secure_channel(f"127.0.0.1:{server}", fed.kits["coordinator"], "platform") as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        ch.unary_unary(WHO)(b"banks-only", timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_client_from_another_ca_is_refused(fed: Fed, server: int) -> None:
    with (
        secure_channel(f"127.0.0.1:{server}", fed.foreign, "platform") as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        _check(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_foreign_client_cert_refused_even_if_it_trusts_our_ca(fed: Fed, server: int) -> None:
    """Only the server's check of the client certificate stands between them here."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=fed.kits["bank-1"].ca_pem,
        private_key=fed.foreign.key_pem,
        certificate_chain=fed.foreign.cert_pem,
    )
    opts = [("grpc.ssl_target_name_override", "platform")]
    with (
        grpc.secure_channel(f"127.0.0.1:{server}", creds, options=opts) as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        _check(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(fed: Fed, server: int) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=fed.kits["bank-1"].ca_pem)
    opts = [("grpc.ssl_target_name_override", "platform")]
    with (
        grpc.secure_channel(f"127.0.0.1:{server}", creds, options=opts) as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        _check(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_is_refused(server: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server}") as ch, pytest.raises(grpc.RpcError) as err:
        _check(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_expecting_another_server_party_is_refused(fed: Fed, server: int) -> None:
    with (
        secure_channel(f"127.0.0.1:{server}", fed.kits["bank-1"], "coordinator") as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        _check(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_unknown_server_party_rejected_before_dialling(fed: Fed) -> None:
    with pytest.raises(KitError, match="'localhost': not a party"):
        secure_channel("127.0.0.1:1", fed.kits["bank-1"], "localhost")


def test_options(fed: Fed) -> None:
    opts = dict(GRPC_OPTIONS)
    assert opts["grpc.max_send_message_length"] == MAX_MESSAGE_BYTES == 64 * 1024 * 1024
    assert opts["grpc.max_receive_message_length"] == MAX_MESSAGE_BYTES


def test_add_secure_port_reports_bind_failure(fed: Fed, server: int) -> None:
    """gRPC's default SO_REUSEPORT would let a second server share the port silently."""
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=GRPC_OPTIONS)
    try:
        with pytest.raises(OSError, match="cannot bind"):
            add_secure_port(srv, f"127.0.0.1:{server}", fed.kits["platform"])
    finally:
        srv.stop(grace=None)


class _Aborted(Exception):
    pass


class _Context:
    """A servicer context with a given auth context; abort raises, as gRPC's does."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth
        self.status: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise _Aborted(details)


def _ssl(*names: bytes) -> dict[str, list[bytes]]:
    return {"transport_security_type": [b"ssl"], "x509_common_name": list(names)}


@pytest.mark.parametrize(
    "auth",
    [{}, {"transport_security_type": [b"insecure"], "x509_common_name": [b"bank-1"]},
     _ssl(), _ssl(b"bank-1", b"platform")],
    ids=["nothing", "plaintext", "no-name", "two-names"],
)
def test_peer_party_needs_one_verified_certificate_name(auth: dict[str, list[bytes]]) -> None:
    """What mTLS makes unreachable behind add_secure_port, checked without it: a call whose
    connection has no single verified client name has no party, whatever it claims."""
    context = _Context(auth)
    with pytest.raises(_Aborted):
        peer_party(context)
    assert context.status is not None and context.status[0] == grpc.StatusCode.UNAUTHENTICATED
    assert peer_party(_Context(_ssl(b"bank-1"))) == "bank-1"


def test_authorize_peer_refuses_a_name_the_manifest_does_not_know(fed: Fed) -> None:
    """A certificate name the federation manifest lacks (a CA that signed more than it
    should, a kit of a removed party) is refused, with no role asked for at all."""
    context = _Context(_ssl(b"bank-9"))
    with pytest.raises(_Aborted):
        authorize_peer(context, fed.kits["platform"])
    assert context.status is not None
    assert context.status[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "'bank-9' is not a party of federation" in context.status[1]
    info = authorize_peer(_Context(_ssl(b"bank-1")), fed.kits["platform"])
    assert info.role == "bank"
