"""ECDH private set intersection over X25519: the protocol engine, free of any transport.

Both parties run the same symmetric engine. Each sends a hello (party, set size, nonce),
streams its own ids hashed and blinded with a fresh secret scalar (H(x)^a), and blinds
every chunk of the peer's points a second time and streams it back at the same offset
(H(y)^{ba}). Each side therefore gets its own points doubly blinded in its own row order,
computes the peer's doubly blinded points itself, and intersects locally; only the 16-byte
prefixes of doubly blinded values are kept (2^-128 collision odds, a quarter of the memory).
A final ``Done`` carries the intersection size and a digest so both sides confirm agreement.

Aligned customers are then named by handles: handle h is the rank of a customer's doubly
blinded value in sorted order, which both sides compute without another message and which
is unlinkable across sessions because the scalars are fresh.

The engine is driven by two iterators so gRPC (or anything else) can carry it: ``run``
consumes the peer's messages (on a reader thread) and computes on the calling thread, and
``outgoing`` yields the messages to send. Work is interleaved: the peer's chunks are blinded
as soon as they arrive and the node's own chunks fill the gaps, so both nodes keep their core
busy and the queues between them stay a few chunks deep however large the sets are.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import grpc
import numpy as np

from fedscore.crypto.primitives import POINT_SIZE, CryptoError, PsiKey, hash_ids_to_points
from fedscore.errors import FedscoreError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
NONCE_SIZE = 16
SESSION_ID_SIZE = 16
DIGEST_SIZE = 32
DEFAULT_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 65536
"""At most 2 MiB of points per message, under gRPC's default 4 MiB message limit."""
MAX_SET_SIZE = 1 << 32
"""A peer announcing more ids than this is refused before anything is allocated."""
DEFAULT_MAX_QUEUED = 8
_DOMAIN_PREFIX = b"fedscore/psi/v1/"
_PREFIX_DTYPE = np.dtype(">u8")

Role = Literal["bank", "platform"]


class PsiError(FedscoreError, ValueError):
    """PSI could not run or did not complete; the message says why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class PsiInputError(PsiError):
    """This node's own id set is unusable (empty, duplicates, not strings)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PsiProtocolError(PsiError):
    """The peer broke the protocol: wrong order, bad lengths, offsets out of range, mismatch."""

    code = grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------------------------
# Messages (the transport maps these to and from its wire types)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """The first message each side sends: who it is, how many ids it has, its session nonce."""

    party: str
    set_size: int
    nonce: bytes
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Blinded:
    """The sender's own ids, hashed and blinded once; ``offset`` is the first one's row."""

    offset: int
    points: bytes


@dataclass(frozen=True)
class DoubleBlinded:
    """The receiver's points from ``offset`` on, blinded a second time by the sender."""

    offset: int
    points: bytes


@dataclass(frozen=True)
class Done:
    """The last message: the sender's intersection size and digest, for both to compare."""

    intersection_size: int
    intersection_digest: bytes


PsiMessage = Hello | Blinded | DoubleBlinded | Done


# --------------------------------------------------------------------------------------------
# Ids and results
# --------------------------------------------------------------------------------------------


class PsiIds:
    """A validated id column: 1-D, strings, no duplicates. Validate once, intersect many times.

    Kept as the numpy array it came in (fixed-width 'S'/'U' or object of str) so ten million
    ids cost one buffer, not ten million Python objects.
    """

    __slots__ = ("values",)

    def __init__(self, ids: np.ndarray | Sequence[str]) -> None:
        values = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), dtype=object)
        if values.ndim != 1:
            raise PsiInputError(f"PSI ids must be a 1-D array, got shape {values.shape}")
        if values.dtype.kind not in "USO":
            raise PsiInputError(
                f"PSI ids must be strings (numpy 'U'/'S' or object array of str), "
                f"got dtype {values.dtype}"
            )
        if values.dtype.kind == "O":
            for row, value in enumerate(values.tolist()):
                if not isinstance(value, str):
                    raise PsiInputError(
                        f"PSI id at row {row} is {type(value).__name__}, expected str"
                    )
        if values.size > MAX_SET_SIZE:
            raise PsiInputError(f"{values.size} PSI ids; at most {MAX_SET_SIZE} supported")
        _check_unique(values)
        self.values = values

    def __len__(self) -> int:
        return int(self.values.size)

    def chunk_as_str(self, start: int, stop: int) -> list[str]:
        """Ids ``start:stop`` as Python str (bytes ids decoded as UTF-8), ready to hash."""
        chunk = self.values[start:stop].tolist()
        if self.values.dtype.kind != "S":
            return chunk
        try:
            return [b.decode("utf-8") for b in chunk]
        except UnicodeDecodeError:
            for i, b in enumerate(chunk):
                try:
                    b.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise PsiInputError(
                        f"PSI id at row {start + i} is not valid UTF-8: {b!r}"
                    ) from exc
            raise


def _check_unique(values: np.ndarray) -> None:
    """Sort once (cheap even for 10M fixed-width ids) and name a duplicate if there is one."""
    if values.size < 2:
        return
    ordered = np.sort(values)
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if same.size == 0:
        return
    example = ordered[same[0]]
    rows = np.flatnonzero(values == example)
    shown_id = example.item() if isinstance(example, np.generic) else example
    if isinstance(shown_id, bytes):
        shown_id = shown_id.decode("utf-8", errors="backslashreplace")
    shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if rows.size > 5 else "")
    raise PsiInputError(
        f"duplicate id {shown_id!r} at rows {shown} (0-based; {same.size} repeated "
        "occurrence(s) in all); PSI needs each id once"
    )


@dataclass(frozen=True, eq=False)
class PsiResult:
    """The aligned customers of one PSI session, as seen by one side.

    ``rows[h]`` is the local row index of the customer with handle ``h``; the peer's
    ``rows[h]`` is the same customer in its own table.
    """

    session_id: bytes
    rows: np.ndarray
    other_size: int

    @property
    def size(self) -> int:
        """The number of aligned customers (handles run 0..size-1)."""
        return int(self.rows.size)

    def handles_for_rows(self, n_rows: int) -> np.ndarray:
        """Handle per local row (int64), -1 where the row is not in the intersection."""
        if self.size and int(self.rows.max()) >= n_rows:
            raise ValueError(f"result has row {int(self.rows.max())} but n_rows is {n_rows}")
        handles = np.full(n_rows, -1, dtype=np.int64)
        handles[self.rows] = np.arange(self.size, dtype=np.int64)
        return handles


def session_id_of(bank_nonce: bytes, platform_nonce: bytes) -> bytes:
    """The session id both sides derive from the two hello nonces (so neither picks it alone)."""
    return hashlib.sha256(bank_nonce + platform_nonce).digest()[:SESSION_ID_SIZE]


_BLOCK = 1 << 20
"""Rows matched per pass, so the scratch arrays stay a few MB whatever the set sizes."""


def _sort_in_place(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Sort (hi, lo) pairs in place by value; return the permutation applied.

    A plain argsort of ``hi`` decides the order unless two 64-bit halves tie (odds ~n²/2^65),
    in which case the two-key lexsort, five times slower, settles it.
    """
    order = np.argsort(hi, kind="stable")
    ordered = hi[order]
    if hi.size > 1 and bool((ordered[1:] == ordered[:-1]).any()):
        order = np.lexsort((lo, hi))
        ordered = hi[order]
    hi[:] = ordered
    del ordered
    lo[:] = lo[order]
    return order


def intersect_prefixes(
    mine_hi: np.ndarray, mine_lo: np.ndarray, theirs_hi: np.ndarray, theirs_lo: np.ndarray
) -> tuple[np.ndarray, bytes]:
    """Rows of ``mine`` whose 128-bit value is in ``theirs``, in handle order, and the digest.

    Values are (hi, lo) uint64 pairs of the big-endian 16-byte prefixes, so numeric order is
    byte order. All four arrays are sorted in place (no second copy of either set); sorted
    ``mine`` is then matched against sorted ``theirs`` block by block, so the matches come out
    already in handle order. O((n + m) log(n + m)).
    """
    mine_order = _sort_in_place(mine_hi, mine_lo)
    _sort_in_place(theirs_hi, theirs_lo)
    for hi, lo, whose in ((mine_hi, mine_lo, "our"), (theirs_hi, theirs_lo, "the peer's")):
        # Distinct ids give distinct values; repeats mean the peer sent or returned garbage.
        if hi.size > 1 and bool(((hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])).any()):
            raise PsiProtocolError(f"{whose} doubly blinded points contain repeats")
    m = theirs_hi.size
    matched: list[np.ndarray] = []
    for start in range(0, mine_hi.size, _BLOCK):
        hi = mine_hi[start : start + _BLOCK]
        lo = mine_lo[start : start + _BLOCK]
        cand = np.arange(hi.size, dtype=np.int64)
        pos = np.searchsorted(theirs_hi, hi)
        while cand.size:  # more than one pass only where two 64-bit halves collide
            keep = pos < m
            keep[keep] = theirs_hi[pos[keep]] == hi[cand[keep]]
            cand, pos = cand[keep], pos[keep]
            hit = theirs_lo[pos] == lo[cand]
            matched.append(cand[hit] + start)
            cand, pos = cand[~hit], pos[~hit] + 1
    where = np.sort(np.concatenate(matched)) if matched else np.zeros(0, np.int64)
    digest = hashlib.sha256()
    for start in range(0, where.size, _BLOCK):
        block = where[start : start + _BLOCK]
        values = np.empty((block.size, 2), dtype=_PREFIX_DTYPE)
        values[:, 0] = mine_hi[block]
        values[:, 1] = mine_lo[block]
        digest.update(values.tobytes())
    return mine_order[where].astype(np.int64, copy=False), digest.digest()


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass
class _Queues:
    cv: threading.Condition = field(default_factory=threading.Condition)
    incoming: deque[PsiMessage] = field(default_factory=deque)
    outgoing: deque[PsiMessage] = field(default_factory=deque)
    peer_closed: bool = False
    peer_failure: BaseException | None = None
    aborted: BaseException | None = None
    out_closed: bool = False


class PsiParty:
    """One side of one PSI session. Single use: ``outgoing()`` for the transport, ``run()``."""

    def __init__(
        self,
        ids: PsiIds | np.ndarray | Sequence[str],
        *,
        party: str,
        role: Role,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_queued: int = DEFAULT_MAX_QUEUED,
        expected_peer: str | None = None,
    ) -> None:
        if role not in ("bank", "platform"):
            raise ValueError(f"PSI role must be 'bank' or 'platform', got {role!r}")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        self._ids = ids if isinstance(ids, PsiIds) else PsiIds(ids)
        if len(self._ids) == 0:
            raise PsiInputError(f"{party}: the id set is empty; there is nothing to intersect")
        self._party = party
        self._role = role
        self._chunk = chunk_size
        self._max_queued = max_queued
        self._expected_peer = expected_peer
        self._key = PsiKey.generate()
        self._nonce = os.urandom(NONCE_SIZE)
        self._q = _Queues()
        self._started = False

    # -- transport side ------------------------------------------------------------------

    def outgoing(self) -> Iterator[PsiMessage]:
        """Messages to send, in order; ends after ``Done`` or when the session fails."""
        q = self._q
        while True:
            with q.cv:
                q.cv.wait_for(lambda: bool(q.outgoing) or q.out_closed)
                if not q.outgoing:
                    return
                msg = q.outgoing.popleft()
                q.cv.notify_all()
            yield msg

    def abort(self, reason: BaseException) -> None:
        """Stop the session from outside (RPC cancelled, shutdown); ``run`` raises ``reason``."""
        q = self._q
        with q.cv:
            if q.aborted is None:
                q.aborted = reason
            q.out_closed = True
            q.outgoing.clear()
            q.cv.notify_all()

    def run(self, incoming: Iterable[PsiMessage]) -> PsiResult:
        """Run the protocol to the end; raises PsiError or whatever broke the transport."""
        if self._started:
            raise RuntimeError("a PsiParty runs once; create a new one per session")
        self._started = True
        reader = threading.Thread(
            target=self._read, args=(incoming,), name=f"psi-reader-{self._party}", daemon=True
        )
        reader.start()
        try:
            return self._run()
        except BaseException as exc:
            self.abort(exc)
            raise
        finally:
            with self._q.cv:
                self._q.out_closed = True
                self._q.cv.notify_all()

    def _read(self, incoming: Iterable[PsiMessage]) -> None:
        q = self._q
        try:
            for msg in incoming:
                with q.cv:
                    q.cv.wait_for(
                        lambda: len(q.incoming) < self._max_queued or q.aborted is not None
                    )
                    if q.aborted is not None:
                        return
                    q.incoming.append(msg)
                    q.cv.notify_all()
        except BaseException as exc:
            with q.cv:
                q.peer_failure = exc
                q.cv.notify_all()
        else:
            with q.cv:
                q.peer_closed = True
                q.cv.notify_all()

    # -- compute side --------------------------------------------------------------------

    def _send(self, msg: PsiMessage) -> None:
        q = self._q
        with q.cv:
            if q.aborted is not None:
                raise q.aborted
            q.outgoing.append(msg)
            q.cv.notify_all()

    def _raise_if_failed(self) -> None:
        """Caller holds the lock."""
        q = self._q
        if q.aborted is not None:
            raise q.aborted
        if q.peer_failure is not None:
            raise q.peer_failure

    def _next_message(self, waiting_for: str) -> PsiMessage:
        q = self._q
        with q.cv:
            while True:
                if q.incoming:
                    msg = q.incoming.popleft()
                    q.cv.notify_all()
                    return msg
                self._raise_if_failed()
                if q.peer_closed:
                    raise PsiProtocolError(
                        f"peer closed the stream while we waited for {waiting_for}"
                    )
                q.cv.wait()

    def _check_hello(self, msg: PsiMessage) -> Hello:
        if not isinstance(msg, Hello):
            raise PsiProtocolError(f"expected hello first, got {type(msg).__name__.lower()}")
        if msg.protocol_version != PROTOCOL_VERSION:
            raise PsiProtocolError(
                f"peer speaks PSI protocol version {msg.protocol_version}; "
                f"this node speaks {PROTOCOL_VERSION}"
            )
        if len(msg.nonce) != NONCE_SIZE:
            raise PsiProtocolError(f"hello nonce is {len(msg.nonce)} bytes; expected {NONCE_SIZE}")
        if msg.nonce == self._nonce:
            raise PsiProtocolError("peer's hello echoes our own nonce; refusing a reflection")
        if not msg.party:
            raise PsiProtocolError("hello names no party")
        if self._expected_peer is not None and msg.party != self._expected_peer:
            raise PsiProtocolError(
                f"hello names party {msg.party!r} but the peer's certificate says "
                f"{self._expected_peer!r}"
            )
        if msg.set_size == 0:
            raise PsiProtocolError(f"{msg.party}: announced an empty id set; nothing to intersect")
        if msg.set_size > MAX_SET_SIZE:
            raise PsiProtocolError(
                f"peer announced {msg.set_size} ids; at most {MAX_SET_SIZE} supported"
            )
        return msg

    @staticmethod
    def _count(msg: Blinded | DoubleBlinded, kind: str) -> int:
        size = len(msg.points)
        if size == 0 or size % POINT_SIZE or size > MAX_CHUNK_SIZE * POINT_SIZE:
            raise PsiProtocolError(
                f"{kind} chunk at offset {msg.offset} is {size} bytes; expected a positive "
                f"multiple of {POINT_SIZE}, at most {MAX_CHUNK_SIZE} points"
            )
        return size // POINT_SIZE

    def _run(self) -> PsiResult:
        ids = self._ids
        n = len(ids)
        self._send(Hello(self._party, n, self._nonce))
        hello = self._check_hello(self._next_message("the peer's hello"))
        if self._role == "bank":
            session_id = session_id_of(self._nonce, hello.nonce)
        else:
            session_id = session_id_of(hello.nonce, self._nonce)
        domain = _DOMAIN_PREFIX + session_id
        m = int(hello.set_size)
        key = self._key
        mine_hi = np.empty(n, np.uint64)
        mine_lo = np.empty(n, np.uint64)
        theirs_hi = np.empty(m, np.uint64)
        theirs_lo = np.empty(m, np.uint64)
        sent = got_double = got_blinded = 0
        idle = 0.0  # seconds the compute thread had nothing to do: the figure to watch
        started = time.perf_counter()
        q = self._q
        while got_double < n or got_blinded < m:
            msg: PsiMessage | None = None
            with q.cv:
                while True:
                    if q.incoming:
                        msg = q.incoming.popleft()
                        q.cv.notify_all()
                        break
                    self._raise_if_failed()
                    if sent < n and len(q.outgoing) < self._max_queued:
                        break
                    if q.peer_closed:
                        raise PsiProtocolError(
                            f"peer closed the stream after {got_blinded}/{m} of its blinded "
                            f"points and {got_double}/{n} of ours doubly blinded"
                        )
                    idle_from = time.perf_counter()
                    q.cv.wait()
                    idle += time.perf_counter() - idle_from
            if msg is None:  # nothing from the peer to serve: blind our next chunk
                stop = min(sent + self._chunk, n)
                points = key.blind(hash_ids_to_points(ids.chunk_as_str(sent, stop), domain))
                self._send(Blinded(sent, points))
                sent = stop
            elif isinstance(msg, Blinded):
                k = self._count(msg, "blinded")
                if msg.offset != got_blinded or got_blinded + k > m:
                    raise PsiProtocolError(
                        f"blinded chunk covers [{msg.offset}, {msg.offset + k}); expected it to "
                        f"start at {got_blinded} and end by the announced set size {m}"
                    )
                try:
                    double = key.blind(msg.points)
                except CryptoError as exc:
                    raise PsiProtocolError(f"blinded chunk at offset {msg.offset}: {exc}") from None
                _store_prefixes(double, theirs_hi, theirs_lo, msg.offset)
                self._send(DoubleBlinded(msg.offset, double))
                got_blinded += k
            elif isinstance(msg, DoubleBlinded):
                k = self._count(msg, "doubly blinded")
                if msg.offset != got_double or got_double + k > sent:
                    raise PsiProtocolError(
                        f"doubly blinded chunk covers [{msg.offset}, {msg.offset + k}); expected "
                        f"it to start at {got_double} and end by {sent}, the points sent so far"
                    )
                _store_prefixes(msg.points, mine_hi, mine_lo, msg.offset)
                got_double += k
            else:
                raise PsiProtocolError(
                    f"unexpected {type(msg).__name__.lower()} before all points were exchanged "
                    f"({got_blinded}/{m} blinded received, {got_double}/{n} doubly blinded)"
                )
        exchanged = time.perf_counter()
        rows, digest = intersect_prefixes(mine_hi, mine_lo, theirs_hi, theirs_lo)
        log.debug(
            "%s: exchange %.2fs (idle %.2fs), intersection %.2fs; %d of %d aligned",
            self._party,
            exchanged - started,
            idle,
            time.perf_counter() - exchanged,
            rows.size,
            n,
        )
        del mine_hi, mine_lo, theirs_hi, theirs_lo
        self._send(Done(int(rows.size), digest))
        done = self._next_message("the peer's done")
        if not isinstance(done, Done):
            raise PsiProtocolError(f"expected done, got {type(done).__name__.lower()}")
        if done.intersection_size != rows.size or done.intersection_digest != digest:
            raise PsiProtocolError(
                f"intersection mismatch: we found {rows.size} aligned ids, the peer reports "
                f"{done.intersection_size}"
                + ("" if done.intersection_size != rows.size else " with a different digest")
            )
        with q.cv:  # our side is complete: let the transport finish sending, then wait for
            q.out_closed = True  # the peer to close cleanly so a late failure is not missed
            q.cv.notify_all()
            while True:
                if q.incoming:
                    extra = q.incoming.popleft()
                    raise PsiProtocolError(f"unexpected {type(extra).__name__.lower()} after done")
                self._raise_if_failed()
                if q.peer_closed:
                    break
                q.cv.wait()
        rows.flags.writeable = False
        return PsiResult(session_id=session_id, rows=rows, other_size=m)


def _store_prefixes(points: bytes, hi: np.ndarray, lo: np.ndarray, offset: int) -> None:
    words = np.frombuffer(points, dtype=_PREFIX_DTYPE).reshape(-1, POINT_SIZE // 8)
    hi[offset : offset + words.shape[0]] = words[:, 0]
    lo[offset : offset + words.shape[0]] = words[:, 1]
