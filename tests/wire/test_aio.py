"""The aio ledger channel records what the platform's server tap does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest as Req
from grpc_health.v1.health_pb2 import HealthCheckResponse as Resp

from fedscore.audit.verify import verify_ledgers
from fedscore.ledger.entry import LEDGER_FILE, Entry
from fedscore.ledger.taps import SerializerTap
from fedscore.ledger.verify import read_ledger
from fedscore.wire.aio import AioLedgerChannel, secure_aio_channel
from fedscore.wire.transport import channel_credentials, channel_options
from tests.audit.test_verify import ECHO, Kits, echo_kind, echo_server, kits  # noqa: F401


async def _aio_traffic(parties: Kits, port: int, folder: Path, wait: bool) -> None:
    bank = parties.by_party["bank-1"]
    with parties.ledger(folder, "bank-1") as ledger:
        tap = SerializerTap(ledger, "platform", echo_kind, wait=wait)
        async with AioLedgerChannel(grpc.aio.secure_channel(
                f"127.0.0.1:{port}", channel_credentials(bank),
                options=channel_options(bank, "platform")), tap) as channel:
            echo = channel.unary_unary(f"/{ECHO}/UnaryUnary",
                                       request_serializer=Req.SerializeToString,
                                       response_deserializer=Resp.FromString)
            replies = await asyncio.gather(*(echo(Req(service=f"uu-{i}")) for i in range(5)))
            assert [r.status for r in replies] == [Resp.SERVING] * 5
            refuse = channel.unary_unary(f"/{ECHO}/Refuse",
                                         request_serializer=Req.SerializeToString,
                                         response_deserializer=Resp.FromString)
            with pytest.raises(grpc.RpcError) as refused:
                await refuse(Req(service="refused"))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # health probes on the ledgered channel of the scoring path are not recorded
        async with secure_aio_channel(f"127.0.0.1:{port}", bank, "platform",
                                      ledger=ledger) as probe:
            reply = await health_pb2_grpc.HealthStub(probe).Check(Req(service=""))
            assert reply.status == Resp.SERVING


@pytest.mark.parametrize("wait", [False, True], ids=["submit", "wait"])
def test_the_aio_tap_matches_the_servers_tap(kits: Kits, tmp_path: Path,  # noqa: F811
                                             wait: bool) -> None:
    with kits.ledger(tmp_path, "platform") as p_ledger, \
            echo_server(kits, p_ledger, wait) as port:
        asyncio.run(_aio_traffic(kits, port, tmp_path, wait))
    platform = read_ledger(tmp_path / "platform" / LEDGER_FILE)
    bank = read_ledger(tmp_path / "bank-1" / LEDGER_FILE)
    # the platform records the health probe (its tap ignores nothing here); the bank not
    assert [e.kind for e in platform if e.kind == "health"] == ["health", "health"]
    # 5 echoes both ways, the refused request, and its call's failure
    assert len(bank) == 5 * 2 + 2
    (refused,) = [e for e in bank if e.direction == "failed"]
    assert refused.status != "OK" and refused.payload_sha256 in {
        e.payload_sha256 for e in bank if e.direction == "sent"}
    bank = [e for e in bank if e.direction != "failed"]
    assert {e.peer for e in bank} == {"platform"}

    def view(entries: list[Entry], sent: str) -> list[tuple[str, str, str, int, str]]:
        return sorted(("to" if e.direction == sent else "from", e.kind, e.payload_sha256,
                       e.bytes, e.purpose) for e in entries if e.kind != "health")

    assert view(bank, "sent") == view(platform, "received")
    report = verify_ledgers([tmp_path / "platform", tmp_path / "bank-1"], kits.keys)
    assert report.problems == []
    assert [u for u in report.unmatched if u.kind != "health"] == []
