"""A platform outage is told from a cover-up (issue 15, item 3): after a genuine outage
``fedscore audit verify`` passes and says how many sends failed and when, while a message
hidden or deleted by either end still fails it; during the outage the bank does not hammer
the platform (circuit breaker: the policy's fallback answers at once), so its ledger does
not grow with the request rate.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from bank_node.scoring_platform import CircuitBreaker
from fedscore.api.v1 import scoring_pb2
from fedscore.audit.report import audit_and_report
from fedscore.audit.verify import verify_ledgers
from fedscore.cli.audit import audit_app
from fedscore.crypto.primitives import VerifyKey
from fedscore.ledger.entry import LEDGER_FILE
from fedscore.ledger.verify import read_ledger
from fedscore.ledger.writer import Ledger
from tests.conftest import Federation
from tests.reliability.test_full_disk import BANK, Joint, joint, wait_for

__all__ = ["joint"]  # the fixture, shared with test_full_disk.py

OUTAGE_S = 3.0


def _sent_queries(folder: Path) -> list[float]:
    return [e.time for e in read_ledger(folder / LEDGER_FILE)
            if e.direction == "sent" and e.kind == "embedding-query"]


def test_a_platform_outage_verifies_and_reports_its_failed_sends(joint: Joint) -> None:
    """Stop the platform for 3 s while bank-1 scores without pause, then restart it:
    every applicant is answered (the fallback during the outage), the bank sends a
    bounded number of queries while the platform is down, joint scores resume, and the
    two ledgers verify, the failed sends counted with their status and time."""
    assert joint.score(joint.inside[0]).platform == scoring_pb2.PLATFORM_PART_JOINED
    parts: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def scoring() -> None:
        i = 0
        while not stop.is_set():
            try:
                parts.append(joint.score(joint.inside[i % len(joint.inside)]).platform)
            except BaseException as exc:  # every applicant must get an answer
                errors.append(exc)
                return
            i += 1

    worker = threading.Thread(target=scoring, daemon=True)
    worker.start()
    wait_for(lambda: len(parts) >= 10)
    down_at = time.time()
    joint.platform.stop(grace=None).wait()
    answered_before = len(parts)
    time.sleep(OUTAGE_S)
    up_at = time.time()
    during = len(parts) - answered_before
    joint.start_platform()
    wait_for(lambda: scoring_pb2.PLATFORM_PART_JOINED in parts[answered_before + during:],
             timeout=30)
    stop.set()
    worker.join(10)
    assert errors == []
    assert during >= 20  # the bank went on answering at once, on the fallback
    assert scoring_pb2.PLATFORM_PART_UNAVAILABLE in parts

    joint.bank_ledger.sync()
    sent = [t for t in _sent_queries(joint.folders[1]) if down_at + 0.5 < t < up_at]
    # without the breaker: one query per applicant (>= 20); with it, a probe now and then
    assert len(sent) <= 8, len(sent)

    joint.platform_ledger.sync()
    report = verify_ledgers(joint.folders, joint.keys())  # type: ignore[arg-type]
    assert report.ok, (report.problems[:3], [str(u) for u in report.unmatched[:3]])
    # the bank's sends that never arrived; under load the platform may also have an answer
    # the bank gave up on (recorded as failed by the platform, delivered to nobody)
    lost = [f for f in report.failed if not f.delivered and f.sender == BANK]
    # refused while down (UNAVAILABLE), or in flight when it went down (DEADLINE_EXCEEDED)
    assert any(f.status == "UNAVAILABLE" for f in lost)
    assert {f.status for f in lost} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, lost
    assert all(down_at - 1 < f.time < up_at + 30 for f in lost)
    (line,) = [x for x in report.outages if x.startswith(f"{BANK} -> platform")]
    assert f"{len(lost):,} send(s) failed with UNAVAILABLE" in line
    print(f"platform down {up_at - down_at:.1f} s: {during} applicants answered meanwhile, "
          f"{len(sent)} queries sent while down, {len(lost)} failed sends in the ledger; "
          f"verify ok; {line}")


# --------------------------------------------------------------------------------------------
# An outage against a cover-up, entry by entry
# --------------------------------------------------------------------------------------------


def _keys(federation: Federation) -> dict[str, VerifyKey]:
    kit = federation.kit("platform")
    return {name: p.verify_key for name, p in kit.peers.items()}


def _pair(federation: Federation, tmp_path: Path) -> tuple[Ledger, Ledger]:
    return (Ledger(tmp_path / "platform", federation.kit("platform").signing_key, "platform"),
            Ledger(tmp_path / "bank", federation.kit(BANK).signing_key, BANK))


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _exchange(bank: Ledger, platform: Ledger, query: bytes, answer: bytes) -> None:
    bank.record("platform", "sent", "embedding-query", query, purpose="scoring")
    platform.record(BANK, "received", "embedding-query", query, purpose="scoring")
    platform.record(BANK, "sent", "embeddings", answer, purpose="scoring")
    bank.record("platform", "received", "embeddings", answer, purpose="scoring")


def _failed(bank: Ledger, query: bytes, status: str = "UNAVAILABLE") -> None:
    bank.record("platform", "sent", "embedding-query", query, purpose="scoring")
    bank.record_failed("platform", "embedding-query", _sha(query), len(query), status,
                       purpose="scoring")


def test_sends_recorded_as_failed_are_an_outage_not_a_mismatch(
    federation: Federation, tmp_path: Path
) -> None:
    platform, bank = _pair(federation, tmp_path)
    with platform, bank:
        _exchange(bank, platform, b"q0", b"a0")
        for i in range(5):
            _failed(bank, b"lost-%d" % i)
        _exchange(bank, platform, b"q1", b"a1")
    report = verify_ledgers([tmp_path / "platform", tmp_path / "bank"], _keys(federation))
    assert report.ok, report.problems
    assert len(report.failed) == 5 and not any(f.delivered for f in report.failed)
    assert report.outages[0].startswith(f"{BANK} -> platform: 5 send(s) failed with "
                                         "UNAVAILABLE, between ")
    # the command and the reviewer's report say so too, and pass
    folders = [str(tmp_path / "platform"), str(tmp_path / "bank")]
    kit = str(federation.kits / "coordinator")
    result = CliRunner().invoke(audit_app, ["verify", *folders, "--kit", kit])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    assert "outage:" in result.output and "5 send(s) failed with UNAVAILABLE" in result.output
    reported, _, (_, md) = audit_and_report([tmp_path / "platform", tmp_path / "bank"],
                                            federation.kits / "coordinator", tmp_path / "out")
    assert reported.ok
    text = md.read_text()
    assert "Failed sends and outages" in text and "5 send(s) failed with UNAVAILABLE" in text


@pytest.mark.parametrize("cover_up", [
    "sent-without-failure",  # the bank claims it sent; the platform has nothing
    "received-not-sent",  # the platform got one the bank never recorded sending
    "failed-never-sent",  # a failure for a message never recorded as sent
    "second-late-answer",  # two answers for one call the bank gave up on
])
def test_a_hidden_message_still_fails_verify_after_an_outage(
    federation: Federation, tmp_path: Path, cover_up: str
) -> None:
    platform, bank = _pair(federation, tmp_path)
    with platform, bank:
        _exchange(bank, platform, b"q0", b"a0")
        _failed(bank, b"lost")  # a genuine outage around the cover-up
        # the bank gave up on a query the platform got and answered: one late answer
        bank.record("platform", "sent", "embedding-query", b"slow", purpose="scoring")
        platform.record(BANK, "received", "embedding-query", b"slow", purpose="scoring")
        bank.record_failed("platform", "embedding-query", _sha(b"slow"), 4,
                           "DEADLINE_EXCEEDED", purpose="scoring")
        platform.record(BANK, "sent", "embeddings", b"late", purpose="scoring")
        if cover_up == "sent-without-failure":
            bank.record("platform", "sent", "embedding-query", b"hidden", purpose="scoring")
        elif cover_up == "received-not-sent":
            platform.record(BANK, "received", "embedding-query", b"hidden",
                            purpose="scoring")
        elif cover_up == "failed-never-sent":
            bank.record_failed("platform", "embedding-query", _sha(b"hidden"), 6,
                               "UNAVAILABLE", purpose="scoring")
        else:
            platform.record(BANK, "sent", "embeddings", b"another", purpose="scoring")
    report = verify_ledgers([tmp_path / "platform", tmp_path / "bank"], _keys(federation))
    assert not report.ok
    assert len(report.problems) + len(report.unmatched) == 1, (report.problems,
                                                               report.unmatched)
    assert len(report.answered_late) == 1  # the genuine late answer is still told apart
    assert [f.status for f in report.failed] == ["UNAVAILABLE", "DEADLINE_EXCEEDED"]


def test_an_answer_made_after_the_bank_gave_up_is_recorded_as_such(
    federation: Federation, tmp_path: Path
) -> None:
    """Real gRPC, both ends ledgered: the bank gives up on a slow query (its deadline);
    the platform's answer, made after that, is recorded as sent and failed (CANCELLED), the
    bank's query as sent and failed (DEADLINE_EXCEEDED); verify passes and says so."""
    from concurrent.futures import ThreadPoolExecutor

    from fedscore.ledger.taps import LedgerTap
    from fedscore.wire.transport import GRPC_OPTIONS, add_secure_port, secure_channel

    platform, bank = _pair(federation, tmp_path)
    release = threading.Event()

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        release.wait(10)
        return b"the answer, too late"

    with platform, bank:
        server = grpc.server(ThreadPoolExecutor(max_workers=2),
                             interceptors=[LedgerTap(platform)], options=GRPC_OPTIONS)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "fedscore.v1.EmbeddingService",
            {"GetEmbeddings": grpc.unary_unary_rpc_method_handler(slow)}),))
        port = add_secure_port(server, "127.0.0.1:0", federation.kit("platform"))
        server.start()
        channel = secure_channel(f"127.0.0.1:{port}", federation.kit(BANK), "platform",
                                 ledger=bank)
        try:
            call = channel.unary_unary("/fedscore.v1.EmbeddingService/GetEmbeddings")
            with pytest.raises(grpc.RpcError) as gave_up:
                call(b"a slow query", timeout=0.3)
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.5)  # the platform learns that its client left
            release.set()

            def platform_failed() -> bool:
                platform.sync()
                return any(e.direction == "failed"
                           for e in read_ledger(tmp_path / "platform" / LEDGER_FILE))

            wait_for(platform_failed)
        finally:
            channel.close()
            server.stop(grace=None).wait()
    report = verify_ledgers([tmp_path / "platform", tmp_path / "bank"], _keys(federation))
    assert report.ok, (report.problems, [str(u) for u in report.unmatched])
    assert sorted((f.sender, f.status, f.delivered) for f in report.failed) == [
        (BANK, "DEADLINE_EXCEEDED", True), ("platform", "CANCELLED", False)]
    assert any(line.startswith(f"platform -> {BANK}: 1 send(s) failed with CANCELLED")
               for line in report.outages)


def test_deleting_a_failed_entry_breaks_the_chain(federation: Federation, tmp_path: Path
                                                  ) -> None:
    """A bank cannot turn an outage into a cover-up (or back) by editing its ledger."""
    platform, bank = _pair(federation, tmp_path)
    with platform, bank:
        _exchange(bank, platform, b"q0", b"a0")
        _failed(bank, b"lost")
        _exchange(bank, platform, b"q1", b"a1")
    path = tmp_path / "bank" / LEDGER_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(line for line in lines if b'"status"' not in line))
    report = verify_ledgers([tmp_path / "platform", tmp_path / "bank"], _keys(federation))
    assert not report.ok
    assert any("missing" in p or "prev does not match" in p for p in report.problems)


def test_the_breaker_refuses_while_open_and_probes_one_call_at_a_time() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=3, base_s=1.0, max_s=4.0, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.admit()
        breaker.done(grpc.StatusCode.UNAVAILABLE)
    assert not breaker.open
    assert breaker.admit()
    breaker.done(grpc.StatusCode.DEADLINE_EXCEEDED)  # slow, or down: it tells neither
    assert not breaker.open and breaker.admit()
    breaker.done(grpc.StatusCode.UNAVAILABLE)
    assert breaker.open and not breaker.admit() and breaker.retry_in() == 1.0
    now[0] = 1.0
    assert breaker.admit() and not breaker.admit()  # one probe at a time
    breaker.done(grpc.StatusCode.UNAVAILABLE)  # still down: twice as long
    now[0] = 2.5
    assert not breaker.admit()
    now[0] = 3.0
    assert breaker.admit()
    breaker.done(grpc.StatusCode.DEADLINE_EXCEEDED)  # a probe that does not get through
    assert breaker.open and breaker.retry_in() == 4.0
    now[0] = 7.0
    assert breaker.admit()
    breaker.done(None)  # the probe never went (the ledger refused it): nothing learnt
    assert breaker.open and breaker.admit()
    breaker.done(grpc.StatusCode.INVALID_ARGUMENT)  # an answer: the platform is up
    assert not breaker.open and breaker.admit()
