"""Auditing several nodes' ledgers together: chains, signatures, and both ends of every message,
recorded by the gRPC taps on real mutual-TLS servers, and the ``audit verify`` command."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest as Req
from grpc_health.v1.health_pb2 import HealthCheckResponse as Resp
from typer.testing import CliRunner

from fedscore.audit.findings import Unmatched
from fedscore.audit.verify import verify_ledgers
from fedscore.cli.audit import audit_app
from fedscore.crypto.primitives import SigningPrivateKey, VerifyKey
from fedscore.federation.provision import StartupKit, load_kit, provision
from fedscore.ledger.entry import LEDGER_FILE, Entry
from fedscore.ledger.taps import Flow, LedgerChannel, LedgerTap, SerializerTap, default_kind
from fedscore.ledger.verify import read_ledger
from fedscore.ledger.writer import Ledger
from fedscore.wire.transport import GRPC_OPTIONS, add_secure_port, secure_channel
from tests.conftest import Federation

PARTIES = ("platform", "bank-1", "coordinator")


@dataclass(frozen=True)
class Kits:
    root: Path
    by_party: dict[str, StartupKit]

    @property
    def keys(self) -> dict[str, VerifyKey]:
        return {n: p.verify_key for n, p in self.by_party["platform"].peers.items()}

    def ledger(self, folder: Path, party: str, **kw: object) -> Ledger:
        return Ledger(folder / party, self.by_party[party].signing_key, party, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Kits:
    root = tmp_path_factory.mktemp("audit") / "kits"
    provision(root, parties=PARTIES)
    return Kits(root, {p: load_kit(root / p) for p in PARTIES})


def exchange(sender: Ledger, receiver: Ledger, kind: str, payload: bytes, *, round_: int = 0,
             rows: int = 0) -> None:
    """One message, as both ends record it."""
    sender.record(receiver.party, "sent", kind, payload, rows=rows, round=round_,
                  purpose="training")
    receiver.record(sender.party, "received", kind, payload, rows=rows, round=round_,
                    purpose="training")


def rewrite_without(folder: Path, signer: SigningPrivateKey, party: str,
                    drop: Callable[[Entry], bool]) -> list[Entry]:
    """Replace a ledger by an honest one (properly chained and signed) that simply never
    recorded the dropped entries; returns the dropped ones."""
    entries = read_ledger(folder / LEDGER_FILE)
    for f in folder.iterdir():
        f.unlink()
    now = [0.0]
    dropped = []
    with Ledger(folder, signer, party, clock=lambda: now[0]) as ledger:
        for e in entries:
            if drop(e):
                dropped.append(e)
                continue
            now[0] = e.time
            ledger.record_digest(e.peer, e.direction, e.kind, e.payload_sha256, e.bytes,
                                 rows=e.rows, round=e.round, purpose=e.purpose)
    return dropped


# -------------------------------------------------------------------------------------------
# verify_ledgers on ledgers written directly
# -------------------------------------------------------------------------------------------


def test_matching_ledgers_verify_and_count_each_message_once(kits: Kits, tmp_path: Path) -> None:
    with (kits.ledger(tmp_path, "platform") as platform,
          kits.ledger(tmp_path, "bank-1") as bank,
          kits.ledger(tmp_path, "coordinator") as coordinator):
        exchange(bank, platform, "psi-blinded-ids", b"p" * 320, rows=10)
        exchange(platform, bank, "psi-blinded-ids", b"q" * 640, rows=20)
        for r in range(3):
            exchange(bank, platform, "gradients", b"g%d" % r, round_=1)
            exchange(platform, bank, "embeddings", b"e%d" % r * 100, round_=1)
            exchange(bank, platform, "control", b"")  # identical payloads pair up too
        exchange(coordinator, platform, "federation-control", b"start")
    report = verify_ledgers([tmp_path / p for p in PARTIES], kits.keys)
    assert report.ok, (report.problems, [str(u) for u in report.unmatched])
    assert report.parties == list(PARTIES)
    assert report.entries == {"platform": 12, "bank-1": 11, "coordinator": 1}
    assert all(s.chain_ok for s in report.ledgers)
    t = report.traffic
    assert (t[("bank-1", "platform", "psi-blinded-ids")].messages,
            t[("bank-1", "platform", "psi-blinded-ids")].bytes) == (1, 320)
    assert t[("platform", "bank-1", "embeddings")].messages == 3
    assert t[("platform", "bank-1", "embeddings")].bytes == sum(len(b"e%d" % r * 100)
                                                               for r in range(3))
    assert t[("bank-1", "platform", "control")].messages == 3
    assert t[("coordinator", "platform", "federation-control")].messages == 1
    assert sum(x.messages for x in t.values()) == 12


def test_a_message_only_one_end_recorded_is_reported(kits: Kits, tmp_path: Path) -> None:
    with kits.ledger(tmp_path, "platform") as platform, kits.ledger(tmp_path, "bank-1") as bank:
        exchange(bank, platform, "gradients", b"both")
        bank.record("platform", "sent", "gradients", b"bank says it sent this", round=2)
        platform.record("bank-1", "received", "gradients", b"platform got this from nowhere")
        exchange(bank, platform, "control", b"")
        bank.record("platform", "sent", "control", b"")  # one more empty control than received
    report = verify_ledgers([tmp_path / "platform", tmp_path / "bank-1"], kits.keys)
    assert not report.ok and report.problems == []
    by = {(u.recorded_by, u.kind): u for u in report.unmatched}
    assert len(report.unmatched) == 3
    sender_only = by[("sender", "gradients")]
    assert isinstance(sender_only, Unmatched)
    assert (sender_only.sender, sender_only.receiver, sender_only.round) == ("bank-1",
                                                                            "platform", 2)
    text = str(sender_only)
    assert "recorded by the sender only" in text
    assert f"{tmp_path / 'bank-1' / LEDGER_FILE}:2 seq 1" in text
    assert "recorded by the receiver only" in str(by[("receiver", "gradients")])
    assert by[("sender", "control")].seq == 3


def test_a_party_may_keep_several_ledgers(kits: Kits, tmp_path: Path) -> None:
    """A bank's scoring server keeps its own chain beside the training one."""
    training = Ledger(tmp_path / "bank-training", kits.by_party["bank-1"].signing_key, "bank-1")
    scoring = Ledger(tmp_path / "bank-scoring", kits.by_party["bank-1"].signing_key, "bank-1")
    with kits.ledger(tmp_path, "platform") as platform, training, scoring:
        exchange(training, platform, "gradients", b"g")
        exchange(scoring, platform, "embedding-query", b"q")
        scoring.record("platform", "sent", "embedding-query", b"lost")
    folders = [tmp_path / "platform", tmp_path / "bank-training", tmp_path / "bank-scoring"]
    report = verify_ledgers([*folders, tmp_path / "bank-scoring"], kits.keys)
    assert report.parties == ["platform", "bank-1"]
    assert [s.folder for s in report.ledgers] == folders
    assert report.entries == {"platform": 2, "bank-1": 3}
    assert report.problems == [f"{tmp_path / 'bank-scoring' / LEDGER_FILE}: given twice; "
                               "checked once"]
    assert [(u.kind, u.recorded_by) for u in report.unmatched] == [("embedding-query",
                                                                    "sender")]


def test_only_pairs_whose_ledgers_were_both_given_are_matched(kits: Kits, tmp_path: Path
                                                             ) -> None:
    with kits.ledger(tmp_path, "bank-1") as bank:
        bank.record("coordinator", "sent", "model-update", b"u" * 50)
        bank.record("platform", "received", "embeddings", b"e" * 70)
    report = verify_ledgers([tmp_path / "bank-1"], kits.keys)
    assert report.ok
    assert report.traffic[("bank-1", "coordinator", "model-update")].bytes == 50
    assert report.traffic[("platform", "bank-1", "embeddings")].bytes == 70


def test_the_two_ends_disagreeing_on_the_kind_is_a_problem(kits: Kits, tmp_path: Path) -> None:
    with kits.ledger(tmp_path, "platform") as platform, kits.ledger(tmp_path, "bank-1") as bank:
        platform.record("bank-1", "sent", "embeddings", b"x" * 10)
        bank.record("platform", "received", "metrics", b"x" * 10)
    report = verify_ledgers([tmp_path / "platform", tmp_path / "bank-1"], kits.keys)
    assert report.unmatched == []
    assert len(report.problems) == 1 and "disagree" in report.problems[0]
    assert "metrics" in report.problems[0] and "embeddings" in report.problems[0]


def test_tampering_and_unknown_parties_are_problems(kits: Kits, tmp_path: Path) -> None:
    with kits.ledger(tmp_path, "platform") as platform, kits.ledger(tmp_path, "bank-1") as bank:
        for i in range(3):
            exchange(bank, platform, "gradients", b"g%d" % i)
    path = tmp_path / "bank-1" / LEDGER_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[2])
    with Ledger(tmp_path / "stranger", SigningPrivateKey.generate(), "bank-9") as stranger:
        stranger.record("platform", "sent", "gradients", b"hello")
    report = verify_ledgers(
        [tmp_path / "platform", tmp_path / "bank-1", tmp_path / "stranger",
         tmp_path / "nowhere"], kits.keys,
    )
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"{path}:2 seq 2: seq jumps from 0 to 2: seq 1 missing" in text
    assert "'bank-9', which is not a party of the federation" in text
    assert f"{tmp_path / 'nowhere' / LEDGER_FILE}: no ledger here" in text
    chain_ok = {s.party: s.chain_ok for s in report.ledgers}
    assert chain_ok == {"bank-1": False, "platform": True}
    # The deleted entry's message is now one-sided as well.
    assert [u.recorded_by for u in report.unmatched] == ["receiver"]


# -------------------------------------------------------------------------------------------
# the gRPC taps on a real mutual-TLS server
# -------------------------------------------------------------------------------------------

ECHO = "fedscore.test.Echo"


def echo_kind(method: str, flow: Flow) -> str:
    """A kind_of of our own: the mapping is a parameter."""
    if method.startswith(f"/{ECHO}/"):
        return "echo-request" if flow is Flow.RECEIVED else "echo-reply"
    return default_kind(method, flow)


def _echo_handler() -> grpc.GenericRpcHandler:
    def unary_unary(request: Req, context: grpc.ServicerContext) -> Resp:
        return Resp(status=Resp.SERVING)

    def unary_stream(request: Req, context: grpc.ServicerContext) -> Iterator[Resp]:
        for status in (Resp.SERVING, Resp.NOT_SERVING, Resp.UNKNOWN):
            yield Resp(status=status)

    def stream_unary(requests: Iterator[Req], context: grpc.ServicerContext) -> Resp:
        return Resp(status=Resp.SERVING if sum(1 for _ in requests) else Resp.UNKNOWN)

    def stream_stream(requests: Iterator[Req], context: grpc.ServicerContext) -> Iterator[Resp]:
        for i, _ in enumerate(requests):
            yield Resp(status=Resp.SERVING if i % 2 else Resp.NOT_SERVING)

    def refuse(request: Req, context: grpc.ServicerContext) -> Resp:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
        raise AssertionError("unreachable")

    de, se = Req.FromString, Resp.SerializeToString
    return grpc.method_handlers_generic_handler(ECHO, {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary, de, se),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream, de, se),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary, de, se),
        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream, de, se),
        "Refuse": grpc.unary_unary_rpc_method_handler(refuse, de, se),
    })


@contextmanager
def echo_server(kits: Kits, ledger: Ledger, wait: bool) -> Iterator[int]:
    """The platform's mTLS server with health and the echo service, ledgered by its tap;
    yields the port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[LedgerTap(ledger, echo_kind, wait=wait)],
                         options=GRPC_OPTIONS)
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((_echo_handler(),))
    port = add_secure_port(server, "127.0.0.1:0", kits.by_party["platform"])
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait()


def run_traffic(kits: Kits, folder: Path, wait: bool) -> None:
    """Every RPC shape between bank-1 (client) and the platform (server), both ledgered."""
    with kits.ledger(folder, "platform") as p_ledger, \
            kits.ledger(folder, "bank-1") as b_ledger, \
            echo_server(kits, p_ledger, wait) as port:
        raw = secure_channel(f"127.0.0.1:{port}", kits.by_party["bank-1"], "platform")
        tap = SerializerTap(b_ledger, "platform", echo_kind, wait=wait)
        with LedgerChannel(raw, tap) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert stub.Check(Req(service="")).status == Resp.SERVING
            assert stub.Check.future(Req(service="")).result().status == Resp.SERVING

            def call(kind: str, name: str) -> Callable[..., object]:
                make = getattr(channel, kind)
                c: Callable[..., object] = make(
                    f"/{ECHO}/{name}", request_serializer=Req.SerializeToString,
                    response_deserializer=Resp.FromString)
                return c

            assert call("unary_unary", "UnaryUnary")(Req(service="uu"))
            got = list(call("unary_stream", "UnaryStream")(Req(service="us")))  # type: ignore[call-overload]
            assert len(got) == 3
            reqs = [Req(service=f"su-{i}") for i in range(5)]
            assert call("stream_unary", "StreamUnary")(iter(reqs))
            reqs = [Req(service=f"ss-{i % 3}") for i in range(7)]
            assert len(list(call("stream_stream", "StreamStream")(iter(reqs)))) == 7  # type: ignore[call-overload]
            with pytest.raises(grpc.RpcError) as refused:
                call("unary_unary", "Refuse")(Req(service="refused"))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(params=[False, True], ids=["submit", "wait"])
def traffic(kits: Kits, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    run_traffic(kits, tmp_path, wait=request.param)
    return tmp_path


def test_the_taps_record_matching_entries_on_both_ends(kits: Kits, traffic: Path) -> None:
    platform = read_ledger(traffic / "platform" / LEDGER_FILE)
    bank = read_ledger(traffic / "bank-1" / LEDGER_FILE)
    # 2 health checks, uu, us (1 + 3), su (5 + 1), ss (7 + 7), refused (request only);
    # the bank also records that the refused call failed, and with which status
    assert len(platform) == len(bank) - 1 == 2 * 2 + 2 + 4 + 6 + 14 + 1
    assert [e.status for e in bank if e.direction == "failed"] == ["PERMISSION_DENIED"]
    bank = [e for e in bank if e.direction != "failed"]
    assert {e.peer for e in platform} == {"bank-1"}  # from the client certificate
    assert {e.peer for e in bank} == {"platform"}

    def view(entries: list[Entry], sent: str) -> list[tuple[str, str, str, int]]:
        return sorted(("to" if e.direction == sent else "from", e.kind, e.payload_sha256,
                       e.bytes) for e in entries)

    # what the bank sent is what the platform received, byte for byte, and vice versa
    assert view(bank, "sent") == view(platform, "received")
    kinds = {(e.direction, e.kind, e.purpose) for e in platform}
    assert kinds == {("received", "health", "health"), ("sent", "health", "health"),
                     ("received", "echo-request", "other"), ("sent", "echo-reply", "other")}
    report = verify_ledgers([traffic / "platform", traffic / "bank-1"], kits.keys)
    assert report.ok, (report.problems, [str(u) for u in report.unmatched])
    assert report.traffic[("bank-1", "platform", "echo-request")].messages == 1 + 1 + 5 + 7 + 1
    assert report.traffic[("platform", "bank-1", "echo-reply")].messages == 1 + 3 + 1 + 7
    (failed,) = report.failed  # the refused call: delivered, then refused; not an outage
    assert (failed.status, failed.delivered, report.outages) == ("PERMISSION_DENIED", True, [])


@pytest.mark.parametrize(("drop_direction", "expected"), [
    ("received", "recorded by the sender only"),
    ("sent", "recorded by the receiver only"),
])
def test_a_message_the_platform_never_recorded_is_reported(
    kits: Kits, traffic: Path, drop_direction: str, expected: str
) -> None:
    folder = traffic / "platform"
    seen: list[Entry] = []

    def drop(e: Entry) -> bool:
        hit = e.direction == drop_direction and e.kind.startswith("echo") and not seen
        if hit:
            seen.append(e)
        return hit

    dropped = rewrite_without(folder, kits.by_party["platform"].signing_key, "platform", drop)
    assert len(dropped) == 1
    report = verify_ledgers([folder, traffic / "bank-1"], kits.keys)
    assert report.problems == []  # an honest-looking ledger: every chain verifies
    assert len(report.unmatched) == 1
    u = report.unmatched[0]
    assert u.payload_sha256 == dropped[0].payload_sha256
    assert expected in str(u)
    assert str(traffic / "bank-1" / LEDGER_FILE) in str(u)


def test_psi_with_a_real_platform_node_is_recorded_by_both_ends(
    federation: Federation, tmp_path: Path
) -> None:
    from bank_node.psi_client import run_psi
    from bank_node.trainer import BankTables
    from platform_node.server import PlatformNode, create_server

    platform_kit, bank_kit = federation.kit("platform"), federation.kit("bank-1")
    ids = BankTables.load(federation.data.bank_dirs["bank-1"]).train.ids
    node = PlatformNode(platform_kit, federation.platform_table())
    with (Ledger(tmp_path / "platform", platform_kit.signing_key, "platform") as p_ledger,
          Ledger(tmp_path / "bank-1", bank_kit.signing_key, "bank-1") as b_ledger):
        server, port = create_server("127.0.0.1:0", node, interceptors=[LedgerTap(p_ledger)])
        server.start()
        try:
            raw = secure_channel(f"127.0.0.1:{port}", bank_kit, "platform")
            with LedgerChannel(raw, SerializerTap(b_ledger, "platform")) as channel:
                result = run_psi(channel, ids, "bank-1")
        finally:
            server.stop(grace=None).wait()
    keys = {n: p.verify_key for n, p in platform_kit.peers.items()}
    report = verify_ledgers([tmp_path / "platform", tmp_path / "bank-1"], keys)
    assert report.ok, (report.problems, [str(u) for u in report.unmatched])
    assert result.size > 0
    # rows: each side sends its own ids blinded, then the other side's blinded again
    expected_rows = len(ids) + len(node.table.ids)
    for party in ("bank-1", "platform"):
        sent = [e for e in read_ledger(tmp_path / party / LEDGER_FILE) if e.direction == "sent"]
        assert sum(e.rows for e in sent if e.kind == "psi-blinded-ids") == expected_rows
        # the closing Done is its own kind, its rows the intersection size
        assert [e.rows for e in sent if e.kind == "psi-result"] == [result.size]
    assert {k for (_, _, k) in report.traffic} == {"psi-blinded-ids", "psi-result"}
    assert {e.purpose for e in read_ledger(tmp_path / "platform" / LEDGER_FILE)} == {
        "alignment"}


# -------------------------------------------------------------------------------------------
# fedscore audit verify
# -------------------------------------------------------------------------------------------


def test_audit_verify_command(kits: Kits, traffic: Path) -> None:
    runner = CliRunner()
    folders = [str(traffic / "platform"), str(traffic / "bank-1")]
    kit = str(kits.root / "coordinator")  # any party's kit will do
    result = runner.invoke(audit_app, ["verify", *folders, "--kit", kit])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and "echo-request" in result.output
    assert "platform" in result.output and "bank-1" in result.output

    path = traffic / "bank-1" / LEDGER_FILE
    data = bytearray(path.read_bytes())
    at = data.index(b'"bytes":') + len(b'"bytes":')
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    path.write_bytes(bytes(data))
    result = runner.invoke(audit_app, ["verify", *folders, "--kit", kit])
    assert result.exit_code == 1, result.output
    # a signed entry fails its signature; one its successor's signature covers, the chain
    signed = json.loads(path.read_bytes().split(b"\n")[0])["signature"]
    expected = (f"{path}:1 seq 0: signature does not verify" if signed else
                f"{path}:2 seq 1: prev does not match")
    assert expected in result.output
    assert "FAILED" in result.output

    result = runner.invoke(audit_app, ["verify", *folders, "--kit", str(traffic / "nope")])
    assert result.exit_code == 1 and "startup kit directory not found" in result.output
