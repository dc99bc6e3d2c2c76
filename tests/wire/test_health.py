"""Health and reflection on every fedscore server: NOT_SERVING while the node loads,
SERVING once it has, NOT_SERVING again while it drains; reflection lists its services."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bank_node.policy import Policy
from bank_node.scoring_service import SCORING_SERVICES, bind_server, build_scorer
from fedscore.api.v1 import federation_pb2, federation_pb2_grpc, scoring_pb2, scoring_pb2_grpc
from fedscore.ledger.writer import Ledger
from fedscore.wire.health import HEALTH_SERVICE, NOT_READY, REFLECTION_SERVICE
from fedscore.wire.transport import secure_channel
from platform_node.server import PLATFORM_SERVICES, PlatformNode
from platform_node.server import bind_server as bind_platform
from platform_node.server import create_server as create_platform
from tests.conftest import Federation, seeded_release

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(channel: grpc.Channel, service: str = "") -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


def _services(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    return {s.name for r in replies for s in r.list_services_response.service}


def _answered(stub: scoring_pb2_grpc.ScoringServiceStub,
              request: scoring_pb2.ScoreRequest) -> bool:
    """The scoring servicer itself answered (an unknown applicant: NOT_FOUND)."""
    with pytest.raises(grpc.RpcError) as answer:
        stub.Score(request, timeout=10)
    return answer.value.code() == grpc.StatusCode.NOT_FOUND


def test_platform_health_goes_not_serving_serving_not_serving(federation: Federation,
                                                              tmp_path: Path) -> None:
    kit = federation.kit("platform")
    with Ledger(tmp_path / "ledger", kit.signing_key, kit.party) as ledger:
        bound = bind_platform("127.0.0.1:0", kit, ledger=ledger)
        bound.server.start()
        seen: list[int] = []
        try:
            with secure_channel(f"127.0.0.1:{bound.port}", federation.kit("coordinator"),
                                "platform") as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=""))

                def follow() -> None:
                    try:
                        for reply in watch:
                            seen.append(int(reply.status))
                    except grpc.RpcError:
                        pass  # the server stopped

                watcher = threading.Thread(target=follow, daemon=True)
                watcher.start()
                # loading: health says so, and the platform's own calls are UNAVAILABLE
                assert _status(channel) == NOT_SERVING
                assert all(_status(channel, s) == NOT_SERVING for s in PLATFORM_SERVICES)
                federation_stub = federation_pb2_grpc.FederationServiceStub(channel)
                with pytest.raises(grpc.RpcError) as refused:
                    federation_stub.GetRunState(federation_pb2.GetRunStateRequest(run_id="r"),
                                                timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert refused.value.details() == NOT_READY
                # reflection answers already: grpcurl can list the services while it loads
                assert _services(channel) == {*PLATFORM_SERVICES, HEALTH_SERVICE,
                                              REFLECTION_SERVICE}

                bound.ready(PlatformNode(kit, federation.platform_table()))
                assert _status(channel) == SERVING
                assert all(_status(channel, s) == SERVING for s in PLATFORM_SERVICES)
                federation_stub.GetRunState(federation_pb2.GetRunStateRequest(run_id="r"),
                                            timeout=5)

                bound.readiness.drain()  # SIGTERM: draining, calls in flight still served
                assert _status(channel) == NOT_SERVING
                assert _status(channel, PLATFORM_SERVICES[0]) == NOT_SERVING
                bound.server.stop(grace=None).wait()
                watcher.join(timeout=10)
        finally:
            bound.server.stop(grace=None)
    assert seen == [NOT_SERVING, SERVING, NOT_SERVING]
    # probes carry nothing of anyone's: the ledger holds the GetRunState call alone
    entries = [line for f in sorted((tmp_path / "ledger").glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    assert entries and not any("grpc.health" in e or "reflection" in e for e in entries)


def test_a_created_platform_server_serves_at_once(federation: Federation) -> None:
    node = PlatformNode(federation.kit("platform"), federation.platform_table())
    server, port = create_platform("127.0.0.1:0", node)
    server.start()
    try:
        with secure_channel(f"127.0.0.1:{port}", federation.kit("bank-1"),
                            "platform") as channel:
            assert _status(channel) == SERVING
    finally:
        server.stop(grace=None)


def test_scoring_server_health_and_reflection(federation: Federation, tmp_path: Path) -> None:
    node = PlatformNode(federation.kit("platform"), federation.platform_table(),
                        state_dir=tmp_path / "platform-state")
    version = node.federation.store.save("scoring", 1, node.initial_weights(seed=11))
    platform, pport = create_platform("127.0.0.1:0", node)
    platform.start()
    bank = "bank-1"
    kit = federation.kit(bank)
    server = bind_server("127.0.0.1:0", kit)
    server.start()
    try:
        with secure_channel(f"127.0.0.1:{server.port}", kit, bank) as channel:
            stub = scoring_pb2_grpc.ScoringServiceStub(channel)
            request = scoring_pb2.ScoreRequest(applicant_id="nobody")
            assert _status(channel) == NOT_SERVING
            assert _status(channel, SCORING_SERVICES[0]) == NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                stub.Score(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as refused:  # a stream is refused alike
                list(stub.ScoreBatch(iter([scoring_pb2.ScoreBatchRequest()]), timeout=5))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert _services(channel) == {*SCORING_SERVICES, HEALTH_SERVICE,
                                          REFLECTION_SERVICE}

            release = seeded_release(federation, federation.data.bank_dirs[bank],
                                     tmp_path / "release", version, seed=1)
            server.ready(build_scorer(kit, federation.data.bank_dirs[bank], release,
                                      f"127.0.0.1:{pport}", Policy.default()))
            assert _status(channel) == SERVING
            assert _answered(stub, request)

            server.drain()
            assert _status(channel) == NOT_SERVING
            assert _answered(stub, request)  # calls are still served while it drains
    finally:
        server.stop(grace=None)
        platform.stop(grace=None)


def test_the_health_command_exits_0_only_when_serving(federation: Federation) -> None:
    from typer.testing import CliRunner

    from fedscore.cli.main import app

    kit = federation.kit("platform")
    bound = bind_platform("127.0.0.1:0", kit)
    bound.server.start()
    address = f"127.0.0.1:{bound.port}"
    probe = ["health", address, "--kit", str(federation.kits / "bank-2")]
    runner = CliRunner()
    try:
        loading = runner.invoke(app, probe)
        assert (loading.exit_code, loading.stdout.strip()) == (1, "NOT_SERVING")
        bound.ready(PlatformNode(kit, federation.platform_table()))
        serving = runner.invoke(app, [*probe, "--service", "fedscore.v1.PsiService"])
        assert (serving.exit_code, serving.stdout.strip()) == (0, "SERVING")
        listed = runner.invoke(app, [*probe, "--list"])
        assert set(listed.stdout.split()) == {*PLATFORM_SERVICES, HEALTH_SERVICE,
                                              REFLECTION_SERVICE}
        # a scoring server's party pinned against the platform: refused, named, exit 1
        wrong = runner.invoke(app, [*probe, "--server", "bank-1"])
        assert wrong.exit_code == 1 and "UNAVAILABLE" in wrong.output
    finally:
        bound.stop(grace=None)
    gone = runner.invoke(app, [*probe, "--timeout", "1"])
    assert gone.exit_code == 1 and address in gone.output
