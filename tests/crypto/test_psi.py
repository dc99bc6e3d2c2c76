"""PSI: the engine against plain set intersection, its errors, and the gRPC service over mTLS."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from bank_node.psi_client import run_psi
from fedscore.api.v1 import psi_pb2, psi_pb2_grpc
from fedscore.crypto.primitives import POINT_SIZE
from fedscore.crypto.psi import (
    MAX_SET_SIZE,
    Blinded,
    Done,
    DoubleBlinded,
    Hello,
    PsiError,
    PsiIds,
    PsiInputError,
    PsiMessage,
    PsiParty,
    PsiProtocolError,
    PsiResult,
    intersect_prefixes,
)
from fedscore.federation.provision import StartupKit, load_kit, provision
from fedscore.wire.status import StatusInterceptor
from fedscore.wire.transport import add_secure_port, secure_channel
from platform_node.psi_service import PsiServicer, add_psi_service

# ---- helpers --------------------------------------------------------------------------------


def random_sets(
    n_bank: int, n_platform: int, common: int, seed: int
) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    pool = [f"user-{x:08d}" for x in rng.choice(10**8, n_bank + n_platform - common, False)]
    bank = pool[:n_bank]
    platform = pool[:common] + pool[n_bank:]
    rng.shuffle(platform)
    return bank, platform


def run_pair(
    bank_ids: np.ndarray | Sequence[str],
    platform_ids: np.ndarray | Sequence[str],
    chunk: int = 64,
    tamper: dict[type, object] | None = None,
) -> tuple[PsiResult, PsiResult]:
    """Both engines in one process, wired back to back; ``tamper`` rewrites platform messages."""
    bank = PsiParty(bank_ids, party="bank-1", role="bank", chunk_size=chunk)
    platform = PsiParty(platform_ids, party="platform", role="platform", chunk_size=chunk + 7)

    def platform_out() -> Iterator[PsiMessage]:
        for msg in platform.outgoing():
            yield tamper.get(type(msg), msg) if tamper else msg  # type: ignore[misc]

    box: dict[str, object] = {}

    def side() -> None:
        try:
            box["platform"] = platform.run(bank.outgoing())
        except BaseException as exc:
            box["platform_error"] = exc
            bank.abort(exc)

    t = threading.Thread(target=side, daemon=True)
    t.start()
    try:
        bank_result = bank.run(platform_out())
    except BaseException as exc:
        platform.abort(exc)
        raise
    t.join(10)
    assert "platform_error" not in box, box.get("platform_error")
    result = box["platform"]
    assert isinstance(result, PsiResult)
    return bank_result, result


def check_against_sets(bank: list[str], platform: list[str], rb: PsiResult, rp: PsiResult) -> None:
    expected = set(bank) & set(platform)
    assert rb.size == rp.size == len(expected)
    assert {bank[r] for r in rb.rows} == expected
    # handle h names the same person on both sides
    assert [bank[r] for r in rb.rows] == [platform[r] for r in rp.rows]
    assert rb.session_id == rp.session_id and len(rb.session_id) == 16
    assert rb.other_size == len(platform) and rp.other_size == len(bank)


# ---- the engine -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_bank", "n_platform", "common"),
    [
        (300, 200, 120),  # different sizes, partial overlap
        (40, 500, 40),  # small bank fully inside a large platform
        (150, 180, 0),  # no overlap
        (250, 250, 250),  # full overlap
        (1, 1, 1),  # one element each
        (1, 90, 0),  # one element, not found
    ],
)
def test_matches_plain_set_intersection(n_bank: int, n_platform: int, common: int) -> None:
    bank, platform = random_sets(n_bank, n_platform, common, seed=n_bank * 7 + common)
    rb, rp = run_pair(bank, platform)
    check_against_sets(bank, platform, rb, rp)


def test_numpy_id_columns_of_mixed_dtypes() -> None:
    bank, platform = random_sets(200, 260, 90, seed=3)
    rb, rp = run_pair(np.array(bank, dtype="S"), np.array(platform, dtype="U"), chunk=1)
    check_against_sets(bank, platform, rb, rp)


def test_handles_are_fresh_per_session_and_map_rows() -> None:
    bank, platform = random_sets(120, 120, 60, seed=11)
    first, _ = run_pair(bank, platform)
    second, _ = run_pair(bank, platform)
    assert first.session_id != second.session_id
    assert sorted(first.rows.tolist()) == sorted(second.rows.tolist())
    assert first.rows.tolist() != second.rows.tolist()  # a new random order of handles
    handles = first.handles_for_rows(len(bank))
    assert handles.dtype == np.int64 and handles.shape == (len(bank),)
    assert (handles[first.rows] == np.arange(first.size)).all()
    assert (handles >= 0).sum() == first.size == 60
    assert not first.rows.flags.writeable
    with pytest.raises(ValueError, match="n_rows is 10"):
        first.handles_for_rows(10)


def test_duplicate_ids_are_named_with_their_rows() -> None:
    ids = ["a", "b", "c", "b", "d"]
    with pytest.raises(PsiError, match=r"duplicate id 'b' at rows 1, 3"):
        PsiIds(ids)
    with pytest.raises(PsiError, match=r"duplicate id 'x' at rows 0, 2"):
        PsiParty(np.array([b"x", b"y", b"x"]), party="bank-1", role="bank")


def test_empty_and_non_string_ids_are_refused() -> None:
    with pytest.raises(PsiInputError, match="bank-1: the id set is empty"):
        PsiParty([], party="bank-1", role="bank")
    with pytest.raises(PsiInputError, match="dtype int64"):
        PsiIds(np.arange(4))
    with pytest.raises(PsiInputError, match="row 1 is int, expected str"):
        PsiIds(["a", 5])  # type: ignore[list-item]


def test_intersection_survives_64_bit_half_collisions() -> None:
    """Values sharing their first 8 bytes are told apart by the second 8 (and ordered by them)."""
    rng = np.random.default_rng(4)
    theirs = rng.integers(0, 2**63, (400, 2), dtype=np.uint64)
    theirs[:40, 0] = theirs[40:80, 0]  # 40 pairs of equal hi halves on their side
    mine = np.concatenate([theirs[:150], rng.integers(0, 2**63, (100, 2), dtype=np.uint64)])
    mine[200:240, 0] = theirs[:40, 0]  # same hi as theirs, different lo: no match
    mine = mine[rng.permutation(len(mine))]
    expected = {tuple(v) for v in theirs.tolist()}
    want = [i for i, v in enumerate(mine.tolist()) if tuple(v) in expected]
    rows, digest = intersect_prefixes(
        mine[:, 0].copy(), mine[:, 1].copy(), theirs[:, 0].copy(), theirs[:, 1].copy()
    )
    assert sorted(rows.tolist()) == want and len(want) == 150
    got = [tuple(mine[r]) for r in rows]
    assert got == sorted(got)  # handle order is value order
    # ...and the peer, starting from the other side, gets the same digest
    _, theirs_digest = intersect_prefixes(
        theirs[:, 0].copy(), theirs[:, 1].copy(), mine[:, 0].copy(), mine[:, 1].copy()
    )
    assert theirs_digest == digest
    repeated = theirs.copy()
    repeated[7] = repeated[300]
    with pytest.raises(PsiProtocolError, match="the peer's doubly blinded points contain repeats"):
        intersect_prefixes(
            mine[:, 0].copy(), mine[:, 1].copy(), repeated[:, 0].copy(), repeated[:, 1].copy()
        )


# ---- protocol violations, fed by a scripted peer ---------------------------------------------


def _hello(size: int = 2, **kw: object) -> Hello:
    fields: dict[str, object] = {"party": "platform", "set_size": size, "nonce": os.urandom(16)}
    fields.update(kw)
    return Hello(**fields)  # type: ignore[arg-type]


def _points(k: int) -> bytes:
    raw = bytearray(os.urandom(k * POINT_SIZE))
    for i in range(k):
        raw[i * POINT_SIZE] |= 9  # not a low-order point
    return bytes(raw)


def _run_scripted(script: Iterable[PsiMessage], ids: list[str] | None = None) -> None:
    party = PsiParty(ids or ["a", "b"], party="bank-1", role="bank", chunk_size=1)
    drain = threading.Thread(target=lambda: list(party.outgoing()), daemon=True)
    drain.start()
    party.run(iter(list(script)))


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([Blinded(0, _points(1))], "expected hello first, got blinded"),
        ([_hello(protocol_version=9)], "protocol version 9"),
        ([_hello(nonce=b"short")], "nonce is 5 bytes"),
        ([_hello(size=0)], "announced an empty id set"),
        ([_hello(size=MAX_SET_SIZE + 1)], f"at most {MAX_SET_SIZE} supported"),
        ([_hello(), Blinded(0, b"\x01" * 31)], "is 31 bytes; expected a positive multiple of 32"),
        ([_hello(), Blinded(1, _points(1))], r"covers \[1, 2\); expected it to start at 0"),
        ([_hello(size=2), Blinded(0, _points(3))], "end by the announced set size 2"),
        ([_hello(), DoubleBlinded(0, _points(1))], "end by 0, the points sent so far"),
        ([_hello(), Done(0, b"")], "unexpected done before all points were exchanged"),
        ([_hello(), _hello()], "unexpected hello"),
        ([_hello(), Blinded(0, bytes(POINT_SIZE))], "low-order point"),
        ([_hello()], "peer closed the stream"),
    ],
)
def test_protocol_violations(script: list[PsiMessage], message: str) -> None:
    with pytest.raises(PsiProtocolError, match=message):
        _run_scripted(script)


def test_a_reflected_hello_is_refused() -> None:
    """A relay that sends a party its own hello back is not a second party."""
    party = PsiParty(["a", "b"], party="bank-1", role="bank", chunk_size=1)
    outgoing = party.outgoing()

    def reflect() -> Iterator[PsiMessage]:
        yield next(outgoing)  # our hello, as sent

    with pytest.raises(PsiProtocolError, match="echoes our own nonce"):
        party.run(reflect())


def test_mismatched_done_is_detected() -> None:
    bank, platform = random_sets(80, 90, 30, seed=5)
    with pytest.raises(PsiProtocolError, match="peer reports 29"):
        run_pair(bank, platform, tamper={Done: Done(29, bytes(32))})
    with pytest.raises(PsiProtocolError, match="different digest"):
        run_pair(bank, platform, tamper={Done: Done(30, bytes(32))})


# ---- over gRPC with mutual TLS -------------------------------------------------------------


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StartupKit]:
    out = tmp_path_factory.mktemp("kits")
    provision(Path(out), parties=["platform", "bank-1"])
    return {p: load_kit(Path(out) / p) for p in ("platform", "bank-1")}


class _Platform:
    def __init__(self, kits: dict[str, StartupKit], ids: list[str]) -> None:
        self.sessions: list[tuple[str, PsiResult]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  interceptors=[StatusInterceptor()])
        add_psi_service(
            self.server,
            PsiServicer(ids, lambda peer, r: self.sessions.append((peer, r)), chunk_size=50),
        )
        self.port = add_secure_port(self.server, "127.0.0.1:0", kits["platform"])
        self.server.start()
        self.channel = secure_channel(f"127.0.0.1:{self.port}", kits["bank-1"], "platform")

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)


def test_grpc_mutual_tls_session(kits: dict[str, StartupKit]) -> None:
    bank, platform = random_sets(400, 300, 170, seed=21)
    node = _Platform(kits, platform)
    try:
        result = run_psi(node.channel, bank, "bank-1", chunk_size=64)
    finally:
        node.close()
    ((peer, stored),) = node.sessions
    assert peer == "bank-1"  # from the client certificate
    check_against_sets(bank, platform, result, stored)


def test_grpc_errors_become_psi_errors(kits: dict[str, StartupKit]) -> None:
    bank, platform = random_sets(30, 30, 10, seed=2)
    empty = _Platform(kits, [])
    try:
        with pytest.raises(PsiError, match=r"FAILED_PRECONDITION.*platform: the id set is empty"):
            run_psi(empty.channel, bank, "bank-1")
    finally:
        empty.close()
    node = _Platform(kits, platform)
    try:
        # The hello must name the party the certificate proves.
        with pytest.raises(PsiError, match=r"INVALID_ARGUMENT.*names party 'bank-2'"):
            run_psi(node.channel, bank, "bank-2")
        # A raw protocol violation gets INVALID_ARGUMENT with the reason.
        stub = psi_pb2_grpc.PsiServiceStub(node.channel)
        bad = [
            psi_pb2.IntersectRequest(
                hello=psi_pb2.PsiHello(
                    party="bank-1", set_size=1, nonce=os.urandom(16), protocol_version=1
                )
            ),
            psi_pb2.IntersectRequest(blinded=psi_pb2.PsiPoints(offset=5, points=_points(1))),
        ]
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Intersect(iter(bad)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected it to start at 0" in (info.value.details() or "")
        assert node.sessions == []
        # ...and the service is still fine afterwards.
        result = run_psi(node.channel, bank, "bank-1")
        assert result.size == 10 and len(node.sessions) == 1
    finally:
        node.close()
