"""The scoring path's guards, each through the real servers (issue 22).

The platform's EmbeddingService refuses a query in another bank's session, in an
unknown one, and a sealed query that was altered, reflected or replayed, answers
nothing to it and records it; the bank's scoring server falls back as its policy says
when its query or the platform's answer is altered on the way; it refuses a tampered
or wrongly signed release, on SIGHUP (a real ``fedscore bank score-server`` process)
and on LoadRelease, and keeps answering with the old one; and the policy's ``refer``
fallback refers through the server. Each test's docstring names the guard it holds:
with that check removed, the test fails.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from bank_node.policy import Policy
from bank_node.psi_client import run_psi
from bank_node.scoring_platform import SCORING_ROUND
from bank_node.scoring_service import build_scorer, create_server
from bank_node.scoring_store import CustomerStore
from fedscore.api.v1 import (
    common_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)
from fedscore.crypto.primitives import (
    Direction,
    Sealer,
    SigningPrivateKey,
    WindowOpener,
    derive_session_key,
    new_session_id,
)
from fedscore.federation.release import MANIFEST, MODEL_FILE, SIGNATURE
from fedscore.wire import serde
from fedscore.wire.aio import secure_aio_channel
from fedscore.wire.transport import add_secure_port, secure_channel
from platform_node.embedding_service import REFUSALS_FILE
from tests.bank_node.conftest import BANK, Live, split_ids

HANDLES = np.arange(3)
"""The intersection handles every raw query here asks for."""
REPLAY_WINDOW = 4096
"""The platform's anti-replay window for scoring queries (docs/security.md, item 7)."""


# -- a bank's raw end of a scoring session ---------------------------------------------------


def _psi(live: Live, bank: str = BANK) -> bytes:
    """A new scoring session of ``bank`` with the platform (PSI over its store): its id."""
    kit = live.federation.kit(bank)
    ids = CustomerStore.load_table(live.federation.data.bank_dirs[bank]).ids
    with secure_channel(live.platform_address, kit, "platform") as channel:
        return run_psi(channel, ids, party=bank).session_id


class _Queries:
    """``bank``'s end of scoring session ``session_id``, raw: queries sealed as
    :class:`bank_node.scoring_platform.PlatformEmbeddings` seals them, to be altered
    before they are sent; answers opened as it opens them."""

    def __init__(self, live: Live, session_id: bytes, bank: str = BANK) -> None:
        kit = live.federation.kit(bank)
        key = derive_session_key(kit.sealing_key, kit.peer("platform").sealing_public,
                                 session_id).for_scoring()
        self.sealer = Sealer(key, session_id, Direction.BANK_TO_PLATFORM)
        self._opener = WindowOpener(key, session_id, Direction.PLATFORM_TO_BANK)
        self._version = live.versions[0]

    def seal(self, round_: int = SCORING_ROUND) -> common_pb2.Sealed:
        """The next query for :data:`HANDLES`, its batch number its seq."""
        query = embedding_pb2.EmbeddingQuery(
            platform_model_version=self._version, handles=serde.handles_to_bytes(HANDLES),
            purpose=embedding_pb2.SCORING_PURPOSE_APPLICATION)
        box = self.sealer.seal(query.SerializeToString(), round=round_,
                               batch=self.sealer.next_seq)
        return serde.sealed_to_pb(box)

    def opens(self, reply: embedding_pb2.GetEmbeddingsResponse) -> np.ndarray:
        """The embeddings of an answer, which must open."""
        answer = embedding_pb2.EmbeddingAnswer.FromString(self._opener.open(
            serde.sealed_from_pb(reply.sealed), round=SCORING_ROUND))
        return serde.tensor_from_pb(answer.embeddings, rows=HANDLES.size)


@contextmanager
def _embeddings(live: Live, bank: str = BANK) -> Iterator[embedding_pb2_grpc.EmbeddingServiceStub]:
    """The platform's EmbeddingService, called with ``bank``'s certificate."""
    with secure_channel(live.platform_address, live.federation.kit(bank), "platform") as ch:
        yield embedding_pb2_grpc.EmbeddingServiceStub(ch)


def _send(stub: embedding_pb2_grpc.EmbeddingServiceStub, sealed: common_pb2.Sealed
          ) -> embedding_pb2.GetEmbeddingsResponse:
    reply: embedding_pb2.GetEmbeddingsResponse = stub.GetEmbeddings(
        embedding_pb2.GetEmbeddingsRequest(sealed=sealed), timeout=10)
    return reply


def _refused(stub: embedding_pb2_grpc.EmbeddingServiceStub, sealed: common_pb2.Sealed
             ) -> grpc.RpcError:
    """The error of a call the platform must refuse (answering it fails the test)."""
    with pytest.raises(grpc.RpcError) as err:
        _send(stub, sealed)
    return err.value


def _refusals(live: Live) -> list[dict[str, Any]]:
    """The platform's refusals file, each line without its time."""
    path = live.state / REFUSALS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


# -- 1. whose session ------------------------------------------------------------------------


def test_another_banks_session_is_refused_on_the_scoring_path(live: Live) -> None:
    """Guard: the owner check of ``SessionRegistry.get`` (platform_node/sessions.py), as
    ``EmbeddingServicer.GetEmbeddings`` uses it: PERMISSION_DENIED, recorded.

    bank-2, with its own certificate, sends a query that bank-1 sealed in its own
    session, byte for byte: the query is good (bank-1's sending it is answered after),
    so only the check of who owns the session refuses it."""
    own = _Queries(live, _psi(live))
    stolen = own.seal()
    with _embeddings(live, "bank-2") as other:
        err = _refused(other, stolen)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "belongs to another party" in (err.details() or "")
    assert _refusals(live) == [{"peer": "bank-2", "status": "PERMISSION_DENIED",
                                "reason": err.details(), "token_id": None}]
    with _embeddings(live) as stub:
        assert own.opens(_send(stub, stolen)).shape[0] == HANDLES.size


def test_an_unknown_session_is_unauthenticated_on_the_scoring_path(live: Live) -> None:
    """Guard: ``SessionRegistry.get``'s unknown-session branch (platform_node/sessions.py):
    UNAUTHENTICATED, its own code (the bank's scorer runs PSI again on it alone),
    recorded."""
    _psi(live)  # the platform has a session of bank-1's; not this one
    stranger = _Queries(live, new_session_id())
    with _embeddings(live) as stub:
        err = _refused(stub, stranger.seal())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "run PSI first" in (err.details() or "")
    assert _refusals(live) == [{"peer": BANK, "status": "UNAUTHENTICATED",
                                "reason": err.details(), "token_id": None}]


# -- 2. tampered and replayed sealed queries ---------------------------------------------------


def _tampered(honest: common_pb2.Sealed, how: str, other_session: bytes) -> common_pb2.Sealed:
    """``honest`` with one thing changed; ``other_session``: another session of the same
    bank."""
    box = common_pb2.Sealed()
    box.CopyFrom(honest)
    if how == "a ciphertext byte":
        box.ciphertext = _flip(box.ciphertext, 0)
    elif how == "a tag byte":  # AES-GCM's 16-byte tag ends the ciphertext
        box.ciphertext = _flip(box.ciphertext, -1)
    elif how == "the session":
        box.session_id = other_session
    elif how == "the direction":
        box.direction = common_pb2.DIRECTION_PLATFORM_TO_BANK
    elif how == "the sequence number":
        box.seq += 1
    elif how == "the round":
        box.round = 1
    elif how == "the batch":
        box.batch += 1
    else:
        raise AssertionError(how)
    return box


TAMPERS = ("a ciphertext byte", "a tag byte", "the session", "the direction",
           "the sequence number", "the round", "the batch")


def test_a_tampered_or_reflected_sealed_query_is_refused_and_not_answered(live: Live) -> None:
    """Guards: AES-GCM's authentication of ciphertext, tag and header (``_decrypt``,
    fedscore/crypto/primitives.py), ``WindowOpener.open``'s direction and round checks,
    and ``EmbeddingServicer._answer`` turning a query that does not open into a refusal
    (platform_node/embedding_service.py): DATA_LOSS, recorded, nothing answered.

    Each altered query is refused while the same query unaltered is answered after it:
    the refusal used up nothing of the session. The platform's own answer, sent back to
    it as a query, is refused too, and so is a query the bank sealed itself for a round
    that is not scoring's."""
    own = _Queries(live, _psi(live))
    other = _psi(live)
    with _embeddings(live) as stub:
        for how in TAMPERS:
            honest = own.seal()
            err = _refused(stub, _tampered(honest, how, other))
            assert err.code() == grpc.StatusCode.DATA_LOSS, how
            assert (err.details() or "").startswith("sealed query refused: "), how
            assert own.opens(_send(stub, honest)).shape[0] == HANDLES.size, how
        answer = _send(stub, own.seal()).sealed
        reflected = _refused(stub, answer)
        other_round = _refused(stub, own.seal(round_=SCORING_ROUND + 1))
    assert reflected.code() == grpc.StatusCode.DATA_LOSS
    assert "direction" in (reflected.details() or "")
    assert other_round.code() == grpc.StatusCode.DATA_LOSS
    assert "expected round 0" in (other_round.details() or "")
    refusals = _refusals(live)
    assert len(refusals) == len(TAMPERS) + 2
    for line in refusals:
        assert line["peer"] == BANK and line["status"] == "DATA_LOSS"
        assert line["reason"].startswith("sealed query refused: ")


def test_a_replayed_sealed_query_is_refused(live: Live) -> None:
    """Guard: ``WindowOpener``'s anti-replay check (``_check_fresh``,
    fedscore/crypto/primitives.py), on the platform's scoring opener: a query answered
    once is refused the second time, and one whose seq is below the window is refused
    though it was never sent; DATA_LOSS, recorded, nothing answered."""
    own = _Queries(live, _psi(live))
    with _embeddings(live) as stub:
        first = own.seal()
        own.opens(_send(stub, first))
        again = _refused(stub, first)
        assert again.code() == grpc.StatusCode.DATA_LOSS
        assert "replayed" in (again.details() or "")

        old = own.seal()  # kept back, never sent
        for _ in range(REPLAY_WINDOW):  # seqs that are never sent either
            own.sealer.seal(b"", round=SCORING_ROUND, batch=0)
        own.opens(_send(stub, own.seal()))
        late = _refused(stub, old)
        assert late.code() == grpc.StatusCode.DATA_LOSS
        assert "older than the replay window" in (late.details() or "")
    assert [r["status"] for r in _refusals(live)] == ["DATA_LOSS", "DATA_LOSS"]


# -- a relay between the bank's scoring server and the platform -------------------------------


Alter = Callable[[common_pb2.Sealed], common_pb2.Sealed]


class _Relay(embedding_pb2_grpc.EmbeddingServiceServicer):
    """Between the bank's scoring server and the platform, with the TLS keys of both (a
    relay inside one party's estate, in docs/security.md's threat model): forwards
    GetEmbeddings as bank-1, the query and the answer altered by ``query`` and
    ``answer`` when set; or keeps the platform's answer back (``hold``) and fails the
    call; or stalls ``stall_s`` and fails it."""

    def __init__(self, upstream: grpc.Channel) -> None:
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(upstream)
        self.query: Alter | None = None
        self.answer: Alter | None = None
        self.hold = False
        self.stall_s = 0.0
        self.queries: list[common_pb2.Sealed] = []  # as the bank sent them
        self.answers: list[common_pb2.Sealed] = []  # as the platform sent them

    def GetEmbeddings(self, request: embedding_pb2.GetEmbeddingsRequest,
                      context: grpc.ServicerContext) -> embedding_pb2.GetEmbeddingsResponse:
        if self.stall_s:
            time.sleep(self.stall_s)
            context.abort(grpc.StatusCode.UNAVAILABLE, "too late")
        self.queries.append(request.sealed)
        sealed = self.query(request.sealed) if self.query else request.sealed
        try:
            reply = _send(self._stub, sealed)
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")
        self.answers.append(reply.sealed)
        if self.hold:
            context.abort(grpc.StatusCode.UNAVAILABLE, "held back")
        sealed = self.answer(reply.sealed) if self.answer else reply.sealed
        return embedding_pb2.GetEmbeddingsResponse(sealed=sealed)


@pytest.fixture()
def relay(live: Live) -> Iterator[tuple[_Relay, str]]:
    """A :class:`_Relay` in front of the live platform, and its address."""
    upstream = secure_channel(live.platform_address, live.federation.kit(BANK), "platform")
    relay = _Relay(upstream)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(relay, server)
    port = add_secure_port(server, "127.0.0.1:0", live.federation.kit("platform"))
    server.start()
    try:
        yield relay, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
        upstream.close()


def _policy(tmp_path: Path, fallback: str) -> Policy:
    """A policy file with ``fallback`` as its [fallback] section, loaded as --policy is."""
    path = tmp_path / "policy.toml"
    path.write_text(f"[fallback]\n{fallback}\n")
    return Policy.load(path)


@contextmanager
def _scoring_server(live: Live, policy: Policy, platform_via: str
                    ) -> Iterator[scoring_pb2_grpc.ScoringServiceStub]:
    """bank-1's scoring server on release 0 with ``policy``: PSI with the platform
    itself, then every Score's platform call through ``platform_via``."""
    kit = live.federation.kit(BANK)
    scorer = build_scorer(kit, live.federation.data.bank_dirs[BANK], live.releases[0],
                          live.platform_address, policy)
    scorer.aio_channel = lambda: secure_aio_channel(platform_via, kit, "platform")
    server, port = create_server("127.0.0.1:0", scorer, kit)
    server.start()
    channel = secure_channel(f"127.0.0.1:{port}", kit, BANK)
    try:
        yield scoring_pb2_grpc.ScoringServiceStub(channel)
    finally:
        channel.close()
        server.stop(grace=None)


def test_an_altered_query_or_answer_gets_the_policys_fallback(
    live: Live, relay: tuple[_Relay, str], tmp_path: Path
) -> None:
    """Guards: the platform's refusal of a query that does not open has its own code,
    DATA_LOSS (``EmbeddingServicer._answer``), which ``Scorer.platform_failure``
    (bank_node/scoring.py) takes for the platform failing, not the request; and the
    bank's opening of the answer (``PlatformEmbeddings._answer``,
    bank_node/scoring_platform.py), an answer that does not open being the platform's
    part failing too: its tag, its session, its seq (an answer seen before) and its
    batch (an answer kept back from its own query and given to the next, never seen
    before) are checked.
    The applicant gets the policy's fallback, not an error."""
    meddler, address = relay
    inside, _ = split_ids(live)
    alters: dict[str, tuple[str, Alter]] = {
        "a query's ciphertext byte": ("query", lambda s: _tampered(s, "a ciphertext byte", b"")),
        "a query replayed for the next": ("query", lambda s: meddler.queries[0]),
        "an answer's tag byte": ("answer", lambda s: _tampered(s, "a tag byte", b"")),
        "an answer's session": ("answer", lambda s: _tampered(s, "the session",
                                                              new_session_id())),
        "an answer replayed for the next": ("answer", lambda s: meddler.answers[0]),
        "an answer kept back for the next": ("answer", lambda s: meddler.answers[-2]),
    }
    # a deadline far above a relay's hop on a busy machine: the fallback is not a timeout
    with _scoring_server(live, _policy(tmp_path, "deadline_ms = 2000"), address) as stub:
        def score() -> scoring_pb2.ScoreResponse:
            r: scoring_pb2.ScoreResponse = stub.Score(
                scoring_pb2.ScoreRequest(applicant_id=inside[0]))
            return r

        joined = score()
        assert joined.platform == scoring_pb2.PLATFORM_PART_JOINED
        for how, (side, alter) in alters.items():
            if how == "an answer kept back for the next":
                meddler.hold = True  # its own query fails, the bank never sees it
                assert score().platform == scoring_pb2.PLATFORM_PART_UNAVAILABLE
                meddler.hold = False
            setattr(meddler, side, alter)
            r = score()
            setattr(meddler, side, None)
            assert r.platform == scoring_pb2.PLATFORM_PART_UNAVAILABLE, how
            assert r.fallback == "bank-only" and r.scored, how
            assert r.pd != pytest.approx(joined.pd, abs=1e-6), how  # not the platform's row
        assert score().pd == pytest.approx(joined.pd, abs=1e-6)  # the session lives on
    assert [r["status"] for r in _refusals(live)] == ["DATA_LOSS", "DATA_LOSS"]


# -- 3, 4. releases that must not be taken ---------------------------------------------------

BAD_RELEASES = ("a byte of the model file", "the model file swapped for valid weights",
                "the manifest edited", "signed by another key")


def _newer(live: Live, folder: Path) -> None:
    """Put the newer release (release 1) in ``folder``'s place."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(live.releases[1], folder)


def _bad_release(live: Live, folder: Path, how: str) -> str:
    """Put release 1, spoilt as ``how`` says, in ``folder``'s place; returns what its
    refusal says."""
    _newer(live, folder)
    if how == "a byte of the model file":
        model = folder / MODEL_FILE
        model.write_bytes(_flip(model.read_bytes(), len(model.read_bytes()) // 2))
        return f"{MODEL_FILE}: missing or altered"
    if how == "the model file swapped for valid weights":  # only the manifest's hash tells
        shutil.copy(live.releases[0] / MODEL_FILE, folder / MODEL_FILE)
        return f"{MODEL_FILE}: missing or altered"
    if how == "the manifest edited":
        doc = json.loads((folder / MANIFEST).read_text())
        doc["version"] = "scoring-9-r0009"
        (folder / MANIFEST).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return "signature does not verify"
    if how == "signed by another key":  # a whole, consistent release, not the coordinator's
        (folder / SIGNATURE).write_bytes(
            SigningPrivateKey.generate().sign((folder / MANIFEST).read_bytes()))
        return "signature does not verify"
    raise AssertionError(how)


def test_load_release_refuses_a_tampered_or_wrongly_signed_release(live: Live,
                                                                   tmp_path: Path) -> None:
    """Guards: ``verify_release``'s signature and file-hash checks
    (fedscore/federation/release.py), which ``Scorer.load_release`` runs before it
    swaps: FAILED_PRECONDITION, and the old release keeps answering."""
    inside, _ = split_ids(live)
    folder = tmp_path / "incoming"

    def serving() -> str:
        version: str = live.stub.Score(
            scoring_pb2.ScoreRequest(applicant_id=inside[0])).model_version
        return version

    for how in BAD_RELEASES:
        says = _bad_release(live, folder, how)
        with pytest.raises(grpc.RpcError) as err:
            live.stub.LoadRelease(scoring_pb2.LoadReleaseRequest(path=str(folder)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, how
        assert says in (err.value.details() or ""), how
        assert serving() == "scoring-0-r0001", how
    _newer(live, folder)  # the same folder, unspoilt, is taken
    taken = live.stub.LoadRelease(scoring_pb2.LoadReleaseRequest(path=str(folder)))
    assert (taken.model_version, taken.previous_model_version) == (
        "scoring-1-r0001", "scoring-0-r0001")
    assert serving() == "scoring-1-r0001"


class _Process:
    """A ``fedscore bank score-server`` process; its output lines, as they come."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # the process closed its output: it ended

    def line(self, prefix: str, timeout: float = 90.0) -> str:
        """The next output line that starts with ``prefix``."""
        end = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self._lines.put(None)
                raise AssertionError(f"no line {prefix!r} (exit {self.proc.poll()}):\n"
                                     + "\n".join(self.seen[-30:]))
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def test_sighup_takes_a_good_release_and_keeps_the_old_one_otherwise(live: Live,
                                                                       tmp_path: Path) -> None:
    """Guards: ``serve``'s SIGHUP handler (bank_node/scoring_service.py) loads through
    ``Scorer.load_release``, so ``verify_release``'s signature and file-hash checks
    hold: a spoilt release or one signed by another key is refused, the server says so
    in its log and keeps answering with the old one; a good newer one is taken."""
    served = tmp_path / "served"
    shutil.copytree(live.releases[0], served)
    fed = live.federation
    server = _Process([
        sys.executable, "-m", "fedscore.cli.main", "bank", "score-server",
        "--kit", str(fed.kits / BANK), "--data", str(fed.data.bank_dirs[BANK]),
        "--release", str(served), "--platform", live.platform_address,
        "--address", "127.0.0.1:0", "--ledger-dir", str(tmp_path / "ledger")])
    try:
        ready = re.fullmatch(rf"{BANK} scoring server on (\S+): release (\S+), .*",
                             server.line(f"{BANK} scoring server on "))
        assert ready is not None and ready[2] == "scoring-0-r0001"
        inside, _ = split_ids(live)
        with secure_channel(ready[1], fed.kit(BANK), BANK) as channel:
            stub = scoring_pb2_grpc.ScoringServiceStub(channel)

            def serving() -> str:
                version: str = stub.Score(
                    scoring_pb2.ScoreRequest(applicant_id=inside[0])).model_version
                return version

            assert serving() == "scoring-0-r0001"
            for how in BAD_RELEASES:
                says = _bad_release(live, served, how)
                server.proc.send_signal(signal.SIGHUP)
                said = server.line("release ")
                assert said.startswith(f"release {served} not loaded, scoring-0-r0001 "
                                       "stays: "), (how, said)
                assert says in said, (how, said)
                assert serving() == "scoring-0-r0001", how
            _newer(live, served)
            server.proc.send_signal(signal.SIGHUP)
            assert server.line("release ") == "release scoring-1-r0001 replaces scoring-0-r0001"
            assert serving() == "scoring-1-r0001"
    finally:
        code = server.stop()
    assert code == 0, "\n".join(server.seen)


# -- 5. the refer fallback -------------------------------------------------------------------


def test_the_refer_fallback_refers_through_the_server(live: Live, relay: tuple[_Relay, str],
                                                      tmp_path: Path) -> None:
    """Guards: ``Scorer.finish``'s fallback branch (bank_node/scoring.py) and
    ``fallback_decision``'s mode (bank_node/policy_decide.py), through the server: with
    ``mode = "refer"``, a platform too slow or stopped mid-run gets REFER with the bank's
    own reason codes, where the default policy approves the same applicants."""
    meddler, address = relay
    inside, outside = split_ids(live)
    some = inside[:40]
    refer = _policy(tmp_path, 'deadline_ms = 300\nmode = "refer"')
    with _scoring_server(live, refer, address) as stub:
        def score(stub: scoring_pb2_grpc.ScoringServiceStub, i: str
                  ) -> scoring_pb2.ScoreResponse:
            r: scoring_pb2.ScoreResponse = stub.Score(scoring_pb2.ScoreRequest(applicant_id=i))
            return r

        assert {score(stub, i).platform for i in some} == {scoring_pb2.PLATFORM_PART_JOINED}
        meddler.stall_s = 1.0  # too slow
        slow = score(stub, some[0])
        meddler.stall_s = 0.0
        assert slow.platform == scoring_pb2.PLATFORM_PART_TIMED_OUT
        assert (slow.outcome, slow.fallback) == (scoring_pb2.OUTCOME_REFER, "refer")

        live.platform.stop(grace=None).wait()  # stopped mid-run
        by_default = {i: score(live.stub, i) for i in some}  # bank-only, the same release
        approved = [i for i, d in by_default.items() if d.outcome == scoring_pb2.OUTCOME_APPROVE]
        assert approved
        for i in approved:
            d, r = by_default[i], score(stub, i)
            assert d.fallback == "bank-only"
            assert r.platform == scoring_pb2.PLATFORM_PART_UNAVAILABLE
            assert (r.outcome, r.fallback) == (scoring_pb2.OUTCOME_REFER, "refer")
            assert (r.score, r.grade, r.credit_limit, r.apr) == (d.score, d.grade, 0, 0)
            assert r.reasons and [x.code for x in r.reasons] == [x.code for x in d.reasons]

        # a portfolio chunk: the platform's rows referred, the others decided
        ids = approved[:3] + outside[:3]
        chunk = next(iter(stub.ScoreBatch(iter([
            scoring_pb2.ScoreBatchRequest(applicant_ids=ids)]))))
        assert list(chunk.platform) == [scoring_pb2.PLATFORM_PART_UNAVAILABLE] * 3 + [
            scoring_pb2.PLATFORM_PART_ABSENT] * 3
        assert list(chunk.outcome[:3]) == [scoring_pb2.OUTCOME_REFER] * 3
        assert list(chunk.outcome[3:]) == [score(live.stub, i).outcome for i in outside[:3]]
