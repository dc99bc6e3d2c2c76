"""Hostile load on the platform: one bank's quiet streams, oversized queries and stalled
steps cost it a refusal while the coordinator's control calls and the other bank's work
go on (issue 15, item 1; docs/reliability.md, "Load and hostile input")."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from bank_node.psi_client import run_psi
from bank_node.scoring_platform import PlatformEmbeddings
from bank_node.trainer import BankTables
from fedscore.api.v1 import (
    embedding_pb2,
    federation_pb2,
    federation_pb2_grpc,
    psi_pb2,
    psi_pb2_grpc,
    round_control_pb2,
    round_control_pb2_grpc,
    split_learning_pb2,
    split_learning_pb2_grpc,
)
from fedscore.crypto.psi import Hello
from fedscore.wire import serde
from fedscore.wire.limits import MAX_QUERY_HANDLES, MAX_STEP_ROWS, Limits
from fedscore.wire.status import MAX_MESSAGE_CHARS
from fedscore.wire.transport import secure_channel
from platform_node.server import PlatformNode, create_server, platform_limits
from tests.conftest import Federation

IDLE_S = 1.5  # a Step stream's idle bound here
PSI_IDLE_S = 4.0  # a PSI stream's: a legitimate one pauses longer on a loaded machine


@dataclass
class Platform:
    federation: Federation
    node: PlatformNode
    address: str
    version: str
    limits: Limits

    def channel(self, party: str) -> grpc.Channel:
        return secure_channel(self.address, self.federation.kit(party), "platform")


@pytest.fixture()
def platform(federation: Federation) -> Iterator[Platform]:
    """A platform node with short idle deadlines and one committed bottom model."""
    node = PlatformNode(federation.kit("platform"), federation.platform_table())
    version = node.federation.store.save("scoring", 1, node.initial_weights(seed=11))
    limits = platform_limits(psi_idle_s=PSI_IDLE_S, step_idle_s=IDLE_S)
    server, port = create_server("127.0.0.1:0", node, limits=limits)
    server.start()
    try:
        yield Platform(federation, node, f"127.0.0.1:{port}", version, limits)
    finally:
        server.stop(grace=None)


def _quiet_psi(channel: grpc.Channel, party: str, release: threading.Event,
               outcome: list[grpc.StatusCode]) -> None:
    """A PSI stream that sends its hello and then nothing until ``release``."""

    def requests() -> Iterator[psi_pb2.IntersectRequest]:
        yield serde.psi_to_pb(Hello(party, 100, os.urandom(16)), psi_pb2.IntersectRequest)
        release.wait(30)

    try:
        for _ in psi_pb2_grpc.PsiServiceStub(channel).Intersect(requests(), timeout=30):
            pass
        outcome.append(grpc.StatusCode.OK)
    except grpc.RpcError as exc:
        outcome.append(exc.code())


def _bank_ids(federation: Federation, bank: str) -> np.ndarray:
    return BankTables.load(federation.data.bank_dirs[bank]).train.ids


def test_quiet_psi_streams_of_one_bank_starve_nobody(platform: Platform) -> None:
    """20 PSI streams from bank-2 that go quiet after their hello: all but its 2 per-peer
    slots are refused at once with RESOURCE_EXHAUSTED; meanwhile the coordinator's
    control call and bank-1's PSI and scoring query succeed; the 2 held streams end with
    DEADLINE_EXCEEDED after the idle bound, giving their slots back."""
    fed = platform.federation
    release = threading.Event()
    outcome: list[grpc.StatusCode] = []
    attacker = platform.channel("bank-2")
    threads = [threading.Thread(target=_quiet_psi, args=(attacker, "bank-2", release, outcome))
               for _ in range(20)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(outcome) < 18 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outcome.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 18, outcome
        assert platform.limits.in_flight("psi", "bank-2") == 2
        # the coordinator's control call gets through at once
        with platform.channel("coordinator") as control:
            state = federation_pb2_grpc.FederationServiceStub(control).GetRunState(
                federation_pb2.GetRunStateRequest(run_id="scoring"), timeout=2)
        assert state.last_round == 1
        # bank-1's PSI and a scoring query on its session succeed
        with platform.channel("bank-1") as channel:
            psi = run_psi(channel, _bank_ids(fed, "bank-1"), party="bank-1")
            assert psi.size > 0
            link = PlatformEmbeddings(channel, fed.kit("bank-1"), psi)
            emb, present = link.get(
                platform.version, np.arange(min(5, psi.size)), [],
                purpose=embedding_pb2.SCORING_PURPOSE_APPLICATION, timeout=5,
                dim=platform.node.bottom_config.out_dim)
            assert emb.shape[0] == present.size == min(5, psi.size)
        # the two held streams are ended by the idle bound, not by the attacker
        for t in threads:
            t.join(timeout=PSI_IDLE_S + 10)
        assert outcome.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 2, outcome
        # and their slots are free again: bank-2 itself may run PSI now
        psi2 = run_psi(attacker, _bank_ids(fed, "bank-2"), party="bank-2")
        assert psi2.size > 0
    finally:
        release.set()
        attacker.close()


def test_a_stalled_step_stream_is_ended_and_gives_its_slot_back(platform: Platform) -> None:
    """A Step stream that never sends a command ends with DEADLINE_EXCEEDED after the idle
    bound, and the bank's training slots are all free again."""

    def quiet() -> Iterator[split_learning_pb2.StepRequest]:
        time.sleep(IDLE_S + 8)
        yield from ()

    with platform.channel("bank-1") as channel:
        stub = split_learning_pb2_grpc.SplitLearningServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Step(quiet(), timeout=30))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "sent nothing" in (err.value.details() or "")
        assert time.monotonic() - started < IDLE_S + 5  # long before the client ends
    limits = platform.limits
    deadline = time.monotonic() + 5
    while limits.in_flight("training") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limits.in_flight("training") == 0


def _session(platform: Platform, bank: str = "bank-1") -> tuple[grpc.Channel, bytes, int]:
    channel = platform.channel(bank)
    psi = run_psi(channel, _bank_ids(platform.federation, bank), party=bank)
    return channel, psi.session_id, psi.size


def test_a_scoring_query_with_too_many_handles_is_refused_before_any_work(
        platform: Platform) -> None:
    """GetEmbeddings over MAX_QUERY_HANDLES handles: INVALID_ARGUMENT naming the field and
    the bound, before the embedding table is computed; 5 million handles (20 MB) are
    refused by gRPC unread (RESOURCE_EXHAUSTED); the platform then still answers."""
    fed = platform.federation
    with platform.channel("bank-1") as channel:
        psi = run_psi(channel, _bank_ids(fed, "bank-1"), party="bank-1")
        link = PlatformEmbeddings(channel, fed.kit("bank-1"), psi)
        dim = platform.node.bottom_config.out_dim
        ask = dict(purpose=embedding_pb2.SCORING_PURPOSE_PORTFOLIO_REVIEW, timeout=10, dim=dim)
        with pytest.raises(grpc.RpcError) as err:
            link.get(platform.version, np.zeros(MAX_QUERY_HANDLES + 1, np.int64), [], **ask)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {MAX_QUERY_HANDLES}" in (err.value.details() or "")
        assert "EmbeddingQuery.handles" in (err.value.details() or "")
        assert not platform.node.embeddings._cache  # no table was computed
        with pytest.raises(grpc.RpcError) as err:
            link.get(platform.version, np.zeros(5_000_000, np.int64), [], **ask)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        emb, _ = link.get(platform.version, np.arange(3), [], **ask)
        assert emb.shape == (3, dim)


def test_a_step_with_too_many_handles_is_refused(platform: Platform) -> None:
    """A Step command over MAX_STEP_ROWS handles: INVALID_ARGUMENT naming the bound, and
    the session's model is not run."""
    from fedscore.crypto.primitives import Direction, Sealer, derive_session_key

    fed = platform.federation
    channel, session_id, _ = _session(platform)
    with channel:
        control = round_control_pb2_grpc.RoundControlServiceStub(channel)
        control.OpenSession(round_control_pb2.OpenSessionRequest(
            session_id=session_id, round=1, seed=3, learning_rate=0.01), timeout=10)
        kit = fed.kit("bank-1")
        key = derive_session_key(kit.sealing_key, kit.peers["platform"].sealing_public,
                                 session_id).for_round(1)
        sealer = Sealer(key, session_id, Direction.BANK_TO_PLATFORM)
        command = split_learning_pb2.StepCommand(
            mode=split_learning_pb2.STEP_MODE_EVAL,
            handles=serde.handles_to_bytes(np.zeros(MAX_STEP_ROWS + 1, np.int64)))
        box = sealer.seal(command.SerializeToString(), round=1, batch=0)
        stub = split_learning_pb2_grpc.SplitLearningServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Step(iter([split_learning_pb2.StepRequest(
                sealed=serde.sealed_to_pb(box))]), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {MAX_STEP_ROWS}" in (err.value.details() or "")


def test_a_seed_of_2_64_minus_1_is_invalid_argument_naming_the_field(
        platform: Platform) -> None:
    """OpenSession with seed 2^64-1: INVALID_ARGUMENT naming ``seed`` (it was UNKNOWN,
    "Overflow"); the session can still be opened with a valid seed."""
    channel, session_id, _ = _session(platform)
    with channel:
        control = round_control_pb2_grpc.RoundControlServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            control.OpenSession(round_control_pb2.OpenSessionRequest(
                session_id=session_id, round=1, seed=2**64 - 1, learning_rate=0.01),
                timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "seed" in (err.value.details() or "")
        reply = control.OpenSession(round_control_pb2.OpenSessionRequest(
            session_id=session_id, round=1, seed=2**62 - 1, learning_rate=0.01), timeout=10)
        assert reply.embedding_dim > 0


@pytest.mark.parametrize("run_id", ["x" * 1_000_000, "bad/" + "y" * 100])
def test_a_huge_run_id_comes_back_with_its_real_status_and_a_short_message(
        platform: Platform, run_id: str) -> None:
    """A 1 MB run id (or a bad one) from the coordinator: INVALID_ARGUMENT (not
    RESOURCE_EXHAUSTED from an oversized status), with a short message that quotes at
    most the id's start."""
    with platform.channel("coordinator") as channel:
        stub = federation_pb2_grpc.FederationServiceStub(channel)
        for call in (lambda: stub.StartRound(federation_pb2.StartRoundRequest(
                         run_id=run_id, round=1, seed=1), timeout=10),
                     lambda: stub.GetRunState(federation_pb2.GetRunStateRequest(
                         run_id=run_id), timeout=10)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = err.value.details() or ""
            assert "run" in details and len(details) < 400 < MAX_MESSAGE_CHARS + 100


def test_a_psi_chunk_over_the_bound_is_a_protocol_error() -> None:
    """A blinded chunk of more than MAX_CHUNK_SIZE points is refused (INVALID_ARGUMENT)
    before a point is blinded; one of exactly the bound is counted."""
    from fedscore.crypto.primitives import POINT_SIZE
    from fedscore.crypto.psi import MAX_CHUNK_SIZE, Blinded, PsiParty, PsiProtocolError

    assert PsiParty._count(Blinded(0, bytes(POINT_SIZE * MAX_CHUNK_SIZE)), "blinded") \
        == MAX_CHUNK_SIZE
    with pytest.raises(PsiProtocolError, match=f"at most {MAX_CHUNK_SIZE} points") as err:
        PsiParty._count(Blinded(0, bytes(POINT_SIZE * (MAX_CHUNK_SIZE + 1))), "blinded")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
