"""Hostile and excess load on a bank's scoring server: oversized requests are refused
before any work, a quiet portfolio stream is ended, and calls over the in-flight limit
are shed at once with RESOURCE_EXHAUSTED and a reason, never CANCELLED without a word
(issue 15, items 1 and 6; docs/reliability.md, "Load and hostile input")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from bank_node.policy import Policy
from bank_node.scoring_service import build_scorer, create_server, scoring_limits
from bank_node.scoring_store import CustomerStore
from fedscore.api.v1 import scoring_pb2, scoring_pb2_grpc
from fedscore.wire.aio import secure_aio_channel
from fedscore.wire.limits import (
    MAX_BATCH_IDS,
    MAX_SCORE_FEATURES,
    LimitError,
    Limits,
    Overloaded,
    WorkClass,
    check_seed,
    quote,
)
from fedscore.wire.transport import secure_channel
from platform_node.server import PlatformNode
from platform_node.server import create_server as create_platform_server
from tests.conftest import Federation, seeded_release

BANK = "bank-1"
IN_FLIGHT = 4
IDLE_S = 1.0


@dataclass
class Scoring:
    address: str
    kit_party: str
    inside: list[str]
    limits: Limits
    federation: Federation


@pytest.fixture()
def scoring(federation: Federation, tmp_path: Path) -> Iterator[Scoring]:
    """A platform node and bank-1's scoring server with an in-flight limit of 4 Score
    calls and a 1 s idle bound on ScoreBatch streams."""
    node = PlatformNode(federation.kit("platform"), federation.platform_table())
    version = node.federation.store.save("scoring", 1, node.initial_weights(seed=10))
    platform, pport = create_platform_server("127.0.0.1:0", node)
    platform.start()
    release = seeded_release(federation, federation.data.bank_dirs[BANK],
                             tmp_path / "release", version, seed=0)
    kit = federation.kit(BANK)
    scorer = build_scorer(kit, federation.data.bank_dirs[BANK], release,
                          f"127.0.0.1:{pport}", Policy.default())
    limits = scoring_limits(max_in_flight=IN_FLIGHT, batch_idle_s=IDLE_S)
    server, port = create_server("127.0.0.1:0", scorer, kit, limits=limits)
    server.start()
    store = CustomerStore.load_table(federation.data.bank_dirs[BANK])
    users = set(node.table.ids)
    inside = [str(i) for i in store.ids if i in users]
    try:
        yield Scoring(f"127.0.0.1:{port}", BANK, inside, limits, federation)
    finally:
        server.stop(grace=None)
        platform.stop(grace=None)


def _stub(s: Scoring) -> tuple[grpc.Channel, scoring_pb2_grpc.ScoringServiceStub]:
    channel = secure_channel(s.address, s.federation.kit(BANK), BANK)
    return channel, scoring_pb2_grpc.ScoringServiceStub(channel)


def _refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    assert err.value.code() == code, err.value.details()
    return err.value.details() or ""


def test_oversized_score_requests_are_refused_before_any_work(scoring: Scoring) -> None:
    """Over MAX_SCORE_FEATURES inline features, an over-long name, value or applicant id:
    INVALID_ARGUMENT naming the field and the bound; a million feature names (a message
    over the server's receive bound) RESOURCE_EXHAUSTED from gRPC, unread; the server
    then scores as before."""
    channel, stub = _stub(scoring)
    with channel:
        many = {f"f{i}": "1" for i in range(MAX_SCORE_FEATURES + 1)}
        details = _refused(lambda: stub.Score(scoring_pb2.ScoreRequest(
            applicant_id="a-1", features=many), timeout=10), grpc.StatusCode.INVALID_ARGUMENT)
        assert f"features: {MAX_SCORE_FEATURES + 1} items; at most {MAX_SCORE_FEATURES}" \
            in details
        details = _refused(lambda: stub.Score(scoring_pb2.ScoreRequest(
            applicant_id="a-1", features={"x" * 1000: "1"}), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT)
        assert "features (a name): 1000 characters; at most" in details
        details = _refused(lambda: stub.Score(scoring_pb2.ScoreRequest(
            applicant_id="a" * 10_000), timeout=10), grpc.StatusCode.INVALID_ARGUMENT)
        assert "applicant_id: 10000 characters" in details and len(details) < 200
        huge = {f"feature-{i:07d}": "1" for i in range(1_000_000)}
        started = time.monotonic()
        _refused(lambda: stub.Score(scoring_pb2.ScoreRequest(
            applicant_id="a-1", features=huge), timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED)
        reply = stub.Score(scoring_pb2.ScoreRequest(applicant_id=scoring.inside[0]), timeout=30)
        assert reply.scored and time.monotonic() - started < 45


def test_a_score_batch_message_over_the_bound_is_refused(scoring: Scoring) -> None:
    """A ScoreBatch message of MAX_BATCH_IDS + 1 ids: INVALID_ARGUMENT naming the field
    and the bound, before any id is looked up."""
    channel, stub = _stub(scoring)
    with channel:
        ids = [scoring.inside[0]] * (MAX_BATCH_IDS + 1)
        details = _refused(lambda: list(stub.ScoreBatch(iter([scoring_pb2.ScoreBatchRequest(
            applicant_ids=ids)]), timeout=10)), grpc.StatusCode.INVALID_ARGUMENT)
        assert f"ScoreBatchRequest.applicant_ids: {MAX_BATCH_IDS + 1} items" in details
        replies = list(stub.ScoreBatch(iter([scoring_pb2.ScoreBatchRequest(
            applicant_ids=scoring.inside[:3])]), timeout=10))
        assert len(replies[0].pd) == 3


def test_a_quiet_score_batch_stream_is_ended(scoring: Scoring) -> None:
    """A ScoreBatch stream that sends nothing: DEADLINE_EXCEEDED after the idle bound, and
    its slot is given back."""

    def quiet() -> Iterator[scoring_pb2.ScoreBatchRequest]:
        time.sleep(IDLE_S + 8)
        yield from ()

    channel, stub = _stub(scoring)
    with channel:
        started = time.monotonic()
        details = _refused(lambda: list(stub.ScoreBatch(quiet(), timeout=30)),
                           grpc.StatusCode.DEADLINE_EXCEEDED)
        assert "sent nothing" in details
        assert time.monotonic() - started < IDLE_S + 5  # long before the quiet client ends
    deadline = time.monotonic() + 5
    while scoring.limits.in_flight("batch") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scoring.limits.in_flight("batch") == 0


def test_calls_over_the_in_flight_limit_are_shed_with_a_reason(scoring: Scoring) -> None:
    """300 Score calls at once against an in-flight limit of 4: each is answered, OK or
    RESOURCE_EXHAUSTED with a reason (none CANCELLED or late), and a health check and a
    LoadRelease-class call still get through meanwhile."""
    kit = scoring.federation.kit(BANK)

    async def flood() -> tuple[list[tuple[grpc.StatusCode, str]], bool]:
        async with secure_aio_channel(scoring.address, kit, BANK) as channel:
            stub = scoring_pb2_grpc.ScoringServiceStub(channel)

            async def one(i: int) -> tuple[grpc.StatusCode, str]:
                try:
                    await stub.Score(scoring_pb2.ScoreRequest(
                        applicant_id=scoring.inside[i % len(scoring.inside)]), timeout=20)
                    return grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), exc.details() or ""

            async def probe() -> bool:
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                await asyncio.sleep(0.01)
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            results = await asyncio.gather(*(one(i) for i in range(300)), probe())
            return list(results[:-1]), bool(results[-1])  # type: ignore[arg-type]

    outcomes, healthy = asyncio.run(flood())
    codes = [c for c, _ in outcomes]
    assert healthy
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    assert codes.count(grpc.StatusCode.OK) >= IN_FLIGHT
    refused = [d for c, d in outcomes if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert refused and all("score calls" in d and "retry" in d for d in refused)
    assert scoring.limits.in_flight("score") == 0


def test_admission_refuses_a_call_whose_deadline_is_shorter_than_recent_calls() -> None:
    """An admitting class refuses at once a call with less time left than its recent
    calls took (plus the event loop's lag), and admits one without a deadline or with
    enough time."""
    cls = WorkClass("score", frozenset({"/s/Score"}), per_peer=8, total=8, admit=True)
    limits = Limits([cls], WorkClass("other", frozenset(), 1, 1))
    for _ in range(60):  # recent calls took 200 ms
        limits.acquire(cls, "bank-1")
        limits.release(cls, "bank-1", 0.2)
    with pytest.raises(Overloaded, match="refused now rather than answered late") as err:
        limits.acquire(cls, "bank-1", remaining_s=0.05)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(Overloaded, match="recent calls took 400 ms"):
        limits.acquire(cls, "bank-1", remaining_s=0.3, lag_s=0.2)
    limits.acquire(cls, "bank-1", remaining_s=1.0)
    limits.acquire(cls, "bank-1", remaining_s=None, lag_s=5.0)
    assert limits.in_flight("score") == 2


def test_per_peer_and_class_slots_are_separate() -> None:
    """A peer at its per-peer limit is refused while another peer and another class still
    get slots; the pool has a thread for every slot of every class."""
    psi = WorkClass("psi", frozenset({"/p/"}), per_peer=2, total=3)
    control = WorkClass("control", frozenset({"/c/Go"}), per_peer=1, total=1)
    limits = Limits([psi, control], WorkClass("other", frozenset(), 1, 1))
    assert limits.class_of("/p/Intersect") is psi
    assert limits.class_of("/c/Go") is control
    assert limits.class_of("/c/Other").name == "other"
    assert limits.workers == 3 + 1 + 1 + 4
    limits.acquire(psi, "bank-2")
    limits.acquire(psi, "bank-2")
    with pytest.raises(Overloaded, match="'bank-2' has 2 in flight"):
        limits.acquire(psi, "bank-2")
    limits.acquire(psi, "bank-1")
    with pytest.raises(Overloaded, match="all 3 slots"):
        limits.acquire(psi, "bank-3")
    limits.acquire(control, "coordinator")  # the control class is untouched
    limits.release(psi, "bank-2")
    limits.acquire(psi, "bank-3")
    assert limits.in_flight("psi", "bank-2") == 1
    with pytest.raises(ValueError, match="per_peer <= total"):
        WorkClass("bad", frozenset(), per_peer=3, total=2)


def test_untrusted_values_are_quoted_short_and_seeds_bounded() -> None:
    """quote() keeps at most 64 characters of a peer's value and names its length; a seed
    must be below 2**62 (INVALID_ARGUMENT naming the field)."""
    assert quote("run-1") == "'run-1'"
    long = quote("x" * 1_000_000)
    assert len(long) < 100 and "1000000 characters" in long
    assert "2000 bytes" in quote(b"y" * 2000)
    check_seed("seed", 2**62 - 1)
    with pytest.raises(LimitError, match=r"seed = 18446744073709551615: expected") as err:
        check_seed("seed", 2**64 - 1)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
