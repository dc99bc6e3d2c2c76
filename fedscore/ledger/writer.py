"""The ledger's writer: :class:`Ledger` appends one signed, hash-chained entry per message.

Every node keeps ``<folder>/ledger.jsonl`` (the format: :mod:`fedscore.ledger.entry`) and
writes it through one :class:`Ledger`, which continues the chain from the last entry on
open, refuses a damaged chain or a second writer (either would fork it), and signs each
write of a batch once: the signature of its last entry covers the entries before it
through ``prev``.

``<folder>/ledger.head`` names the last entry known to be on disk (seq and line hash),
rewritten atomically at most every :data:`HEAD_INTERVAL_S` (and on :meth:`Ledger.sync`
and :meth:`Ledger.close`): a ledger that ends before the head's seq lost entries. The head
lags the synced tail by up to a second while a node is busy, because rewriting it (sign,
write, fsync, rename, fsync the folder) with every group commit cost more than the commit.

Two ways in: :meth:`Ledger.record` returns once the signed line is in the OS (it survives
the process crashing); :meth:`Ledger.submit`, what the gRPC taps
(:mod:`fedscore.ledger.taps`) use by default, only takes the seq and the time on the
message's path and leaves hashing, signing and appending to a background thread. Either
way a background thread fsyncs (group commit) and rewrites the head; no message waits for
the disk. What each costs, measured: ``docs/ledger.md``.

Every entry handed in is also counted (``fedscore_messages_total`` and
``fedscore_message_bytes_total`` per peer, direction and kind, :mod:`fedscore.ops.metrics`)
as it takes its seq, and every batch written counts its entries and the write's latency:
the metrics and the ledger count the same messages in one place.

A node that cannot write its ledger (a full disk, an I/O error) fails closed: the batch
whose write failed is cut back off the file (so no partial line stays), every caller of
:meth:`Ledger.record` whose entry was in it gets a :class:`LedgerError` (its message must
not be sent), entries of :meth:`Ledger.submit` (messages already on their way) are kept
to be written first once the disk takes them, and every new entry is refused with
UNAVAILABLE. Every ``probe_interval_s`` (on the next entry handed in, or on the
background thread's timer if none comes) it writes a probe file beside the ledger; once
that works the ledger takes entries again. :meth:`Ledger.watch` tells a node's health
(:mod:`fedscore.wire.health`) each change.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import grpc

from fedscore.atomic import fsync_dir
from fedscore.crypto.primitives import SignatureError, SigningPrivateKey
from fedscore.ledger.entry import (
    DIRECTIONS,
    ENTRY_DOMAIN,
    FAILED,
    HEAD_FILE,
    HEX64,
    LEDGER_FILE,
    SIGN_EVERY,
    ZERO_HASH,
    Entry,
    Head,
    LedgerError,
    encode_line,
    head_line,
    head_signed_bytes,
    is_int,
    line_fragments,
    parse_head,
    parse_line,
    verify_entry_signature,
    verify_head_signature,
)
from fedscore.ops import metrics

log = logging.getLogger(__name__)

HEAD_INTERVAL_S = 1.0
"""Most often the background thread rewrites ``ledger.head`` (3 of the 4 fsyncs of a
commit); when the ledger goes quiet, the head catches up within this long."""
PROBE_FILE = "ledger.probe"
"""What a failed ledger writes (then removes) beside itself to learn that the disk is back."""
PROBE_BYTES = 64 * 1024
"""Size of the probe: room for a few batches, so a disk with a few bytes free does not
let the ledger flap between failing and taking entries."""

Watcher = Callable[[str | None], None]
"""Told of each change: why the ledger refuses entries, or None once it takes them again."""



def _lock(fd: int, path: Path, timeout_s: float) -> None:
    """Take the writer's lock, waiting up to ``timeout_s`` for another writer to close.

    A SuperNode runs each Flower message in a fresh process, so one may still be closing
    its ledger when the next opens it; two writers at once would fork the chain.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LedgerError(
                    f"{path}: in use by another writer; two writers would fork the chain",
                    code=grpc.StatusCode.UNAVAILABLE,
                ) from None
            time.sleep(0.02)


def _refuse(peer: object, direction: object, kind: object, purpose: object, rows: object,
            round: object) -> NoReturn:
    """What is wrong with an entry's fields (the hot path checks them all at once)."""
    if direction not in DIRECTIONS[:2]:
        raise ValueError(f"direction must be 'sent' or 'received', got {direction!r}")
    if not (isinstance(peer, str) and isinstance(kind, str) and isinstance(purpose, str)):
        raise TypeError("peer, kind and purpose must be strings")
    for name, v in (("rows", rows), ("round", round)):
        if not is_int(v) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    raise ValueError(f"rows and round must be plain ints, got {rows!r}, {round!r}")


class Ledger:
    """Append-only, signed, hash-chained ledger of one node; thread-safe.

    ``record`` returns once the line is in the OS (so it survives the process crashing);
    ``submit`` only queues the entry for the background thread (hot paths). The background
    thread fsyncs at most every ``sync_interval_s`` (group commit) and rewrites
    ``ledger.head`` at most every ``HEAD_INTERVAL_S``, so no caller waits for the disk;
    ``sync()`` forces both now; ``close()`` appends what is queued, syncs and stops the
    thread. On open, the chain continues from the last entry (a torn last line from a crash
    is dropped with a warning); a damaged chain or a second writer on the same folder
    (either would fork the chain) is refused, after waiting up to ``lock_timeout_s`` for it
    to close. A write that fails makes it refuse entries until a probe every
    ``probe_interval_s`` succeeds (module docstring).
    """

    _write_fd: Callable[[int, Any], int] = staticmethod(os.write)
    """How the ledger writes to its file and to the probe: a test puts a failing one
    on an instance to give it a full disk."""

    def __init__(
        self,
        folder: Path,
        signer: SigningPrivateKey,
        party: str,
        *,
        clock: Callable[[], float] = time.time,
        sync_interval_s: float = 0.05,
        drain_interval_s: float = 0.05,
        lock_timeout_s: float = 0.0,
        probe_interval_s: float = 1.0,
    ) -> None:
        if not party:
            raise ValueError("party must be a non-empty string")
        if not sync_interval_s > 0 or not drain_interval_s > 0:
            raise ValueError(
                f"sync_interval_s and drain_interval_s must be > 0, got {sync_interval_s!r}, "
                f"{drain_interval_s!r}"
            )
        self.folder = Path(folder)
        self.path = self.folder / LEDGER_FILE
        self.head_path = self.folder / HEAD_FILE
        self.party = party
        self._counters = metrics.MessageCounters(party)
        self._entries = metrics.LEDGER_ENTRIES.labels(party)
        self._write_seconds = metrics.LEDGER_WRITE_SECONDS.labels(party)
        self._signer = signer
        self._key = signer.verify_key()
        self._clock = clock
        self._interval = float(sync_interval_s)
        self._drain_interval = min(float(drain_interval_s), self._interval)
        self._probe_interval = float(probe_interval_s)
        self._failed_at = -math.inf  # monotonic time of the last failure or failed probe
        self._watchers: list[Watcher] = []
        self._queue_lock = threading.Lock()  # next seq, the queue, closed
        self._chain_lock = threading.Lock()  # prev, the file; held while signing a batch
        self._sync_lock = threading.Lock()  # one fsync + head write at a time, in order
        # (seq, time, peer, direction, kind, purpose, rows, round, size, payload bytes or
        # its hex SHA-256, a list that receives (prev, signature) once written or None,
        # status: "" or a failed entry's code name)
        self._queue: list[tuple[Any, ...]] = []
        self._failed: BaseException | None = None
        self._closed = False
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            _lock(self._fd, self.path, lock_timeout_s)
            self._next_seq, self._prev = self._resume()
            self._size = os.fstat(self._fd).st_size  # what the chain's entries take
        except BaseException:
            os.close(self._fd)
            raise
        self._written_seq = self._synced_seq = self._next_seq - 1
        self._synced_prev = self._prev
        self._head_seq = -2  # unknown: the background thread rewrites it first thing
        if not self.head_path.exists():
            self._write_head(self._synced_seq, self._prev if self._next_seq else ZERO_HASH)
        self._dirty = threading.Event()  # something recorded is not fsynced yet
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"ledger-sync-{party}", daemon=True
        )
        self._thread.start()

    # -- opening --------------------------------------------------------------------------

    def _resume(self) -> tuple[int, str]:
        """(next seq, hash of the last line); truncates a torn last line (crash mid-write)."""
        size = os.fstat(self._fd).st_size
        tail = self._tail(size)
        last_line = b""
        if tail:
            cut = tail.rfind(b"\n", 0, len(tail) - 1) + 1
            last_line = tail[cut:]
            if not tail.endswith(b"\n"):
                keep = size - len(last_line)
                log.warning(
                    "%s: dropping a torn last line of %d bytes (a crash mid-write); the chain "
                    "continues from the last complete entry", self.path, len(last_line),
                )
                os.ftruncate(self._fd, keep)
                os.fsync(self._fd)
                size = keep
                last_line = b""
                if keep:
                    tail = self._tail(keep)
                    last_line = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1 :]
        head = self._read_head()
        if not last_line:
            if head is not None and head.seq >= 0:
                raise LedgerError(
                    f"{self.path}: empty, but {HEAD_FILE} vouches for entries up to seq "
                    f"{head.seq}: the ledger was truncated; refusing to start a fork"
                )
            return 0, ZERO_HASH
        line = last_line.rstrip(b"\n")
        where = f"{self.path}: last entry"
        try:
            last = parse_line(line)
        except ValueError as exc:
            raise LedgerError(f"{where} is malformed: {exc}; refusing to continue") from None
        if last.party != self.party:
            raise LedgerError(f"{where} was written by {last.party!r}, not {self.party!r}")
        try:
            self._verify_tail(size, last)
        except SignatureError:
            raise LedgerError(
                f"{where} (seq {last.seq}) does not verify under this node's key: edited, or "
                "another key; refusing to continue the chain"
            ) from None
        if head is None:
            raise LedgerError(
                f"{self.head_path}: missing while {self.path} has entries: entries may have "
                "been cut from the end; restore it, or start a new ledger folder"
            )
        if head.seq > last.seq:
            raise LedgerError(
                f"{self.path}: ends at seq {last.seq} but {HEAD_FILE} vouches for seq "
                f"{head.seq}: entries were cut from the end; refusing to start a fork"
            )
        if head.seq == last.seq and head.hash != last.hash:
            raise LedgerError(f"{self.path}: seq {last.seq} is not the entry {HEAD_FILE} "
                              "vouches for: the ledger was rewritten")
        return last.seq + 1, hashlib.sha256(line).hexdigest()

    def _tail(self, size: int, lines: int = 1) -> bytes:
        """Enough of the file's end to hold its last ``lines`` lines (reads backwards)."""
        block = 8192
        start = size
        data = b""
        while start > 0:
            start = max(0, start - block)
            data = os.pread(self._fd, size - start - len(data), start) + data
            if data.count(b"\n", 0, len(data) - 1) >= lines:
                break
            block *= 2
        return data

    def _verify_tail(self, size: int, last: Entry) -> None:
        """The last entry is signed, or chained to a signed one at most SIGN_EVERY back
        (a crash mid-write can leave the start of a batch without its signed end)."""
        if last.signature:
            verify_entry_signature(last, self._key)
            return
        raw = self._tail(size, SIGN_EVERY + 1).rstrip(b"\n").split(b"\n")[-SIGN_EVERY - 1:]
        entries = []
        for line in raw:
            try:
                entries.append(parse_line(line))
            except ValueError:
                entries = []  # a partial first line of the block; later ones are whole
        signed = [i for i, e in enumerate(entries) if e.signature]
        if not signed:
            raise SignatureError("no signature among the last entries")
        verify_entry_signature(entries[signed[-1]], self._key)
        for before, after in itertools.pairwise(entries[signed[-1]:]):
            if after.prev != before.hash:
                raise SignatureError(f"seq {after.seq} does not chain to seq {before.seq}")

    def _read_head(self) -> Head | None:
        try:
            data = self.head_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            head = parse_head(data)
            if head.party != self.party:
                raise ValueError(f"written by {head.party!r}, not {self.party!r}")
            verify_head_signature(head, self._key)
        except (ValueError, SignatureError) as exc:
            raise LedgerError(f"{self.head_path}: {exc}; refusing to continue") from None
        return head

    # -- recording ------------------------------------------------------------------------

    def record(
        self,
        peer: str,
        direction: str,
        kind: str,
        payload: bytes,
        *,
        rows: int = 0,
        round: int = 0,
        purpose: str = "",
    ) -> Entry:
        """Sign and append one entry for ``payload`` (hashed here); returns the entry.

        When it returns, the line is in the OS (it survives the process crashing); it is on
        disk after the next group commit (``sync_interval_s``) or :meth:`sync`.
        """
        return self.record_digest(
            peer, direction, kind, hashlib.sha256(payload).hexdigest(), len(payload),
            rows=rows, round=round, purpose=purpose,
        )

    def record_digest(
        self,
        peer: str,
        direction: str,
        kind: str,
        payload_sha256: str,
        size: int,
        *,
        rows: int = 0,
        round: int = 0,
        purpose: str = "",
    ) -> Entry:
        """As :meth:`record`, for a payload already hashed (hex SHA-256) of ``size`` bytes."""
        if not (isinstance(payload_sha256, str) and HEX64.fullmatch(payload_sha256)):
            raise ValueError("payload_sha256 must be 64 lowercase hex digits")
        if not is_int(size) or size < 0:
            raise ValueError(f"size must be a non-negative integer, got {size!r}")
        return self._record(peer, direction, kind, payload_sha256, size, rows, round,
                            purpose, "")

    def record_failed(
        self,
        peer: str,
        kind: str,
        payload_sha256: str,
        size: int,
        status: str,
        *,
        rows: int = 0,
        round: int = 0,
        purpose: str = "",
    ) -> Entry:
        """Record that the call carrying a message recorded as sent earlier (same peer,
        kind, SHA-256 and size) failed with gRPC status ``status`` (a code name): as far
        as this node knows it never arrived. :meth:`record`'s guarantees."""
        if not (isinstance(status, str) and status.isupper() and status.replace("_", "")
                .isalpha()):
            raise ValueError(f"status must be a gRPC status code name, got {status!r}")
        if not (isinstance(payload_sha256, str) and HEX64.fullmatch(payload_sha256)):
            raise ValueError("payload_sha256 must be 64 lowercase hex digits")
        if not is_int(size) or size < 0:
            raise ValueError(f"size must be a non-negative integer, got {size!r}")
        return self._record(peer, FAILED, kind, payload_sha256, size, rows, round, purpose,
                            status)

    def _record(self, peer: str, direction: str, kind: str, payload_sha256: str, size: int,
                rows: int, round: int, purpose: str, status: str) -> Entry:
        out: list[Any] = []  # (prev, signature, seq) once written
        _, now = self._enqueue(peer, direction, kind, payload_sha256, size, rows, round,
                               purpose, out, status)
        with self._chain_lock:
            self._drain()
            if not out:  # the background thread's write of it failed: it was dropped
                raise LedgerError(f"{self.path}: cannot record: the ledger failed: "
                                  f"{self._failed}", code=grpc.StatusCode.UNAVAILABLE)
        if not self._dirty.is_set():
            self._dirty.set()  # the background thread fsyncs (group commit)
        prev, signature, written_seq = out
        return Entry(seq=int(written_seq), time=now, party=self.party, peer=peer,
                     direction=direction, kind=kind, rows=rows, bytes=size,
                     payload_sha256=payload_sha256, round=round, purpose=purpose, prev=prev,
                     signature=signature, status=status)

    def submit(
        self,
        peer: str,
        direction: str,
        kind: str,
        payload: bytes,
        *,
        rows: int = 0,
        round: int = 0,
        purpose: str = "",
    ) -> int:
        """Hot-path :meth:`record`: take the next seq and the time now and return the seq; the
        background thread hashes, signs and appends the entry (in seq order, batched) within
        ``drain_interval_s``.

        Costs ~1.5 µs on the message's path instead of ~50 µs plus the SHA-256 (which
        lets go of the GIL, so the message's thread goes on meanwhile). What it gives up:
        entries still queued are lost if the process dies, and a write that fails after
        this returned is only refused from the next call on (then every call is).
        """
        if type(payload) is not bytes:
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        # hashed by the background thread; bytes cannot change meanwhile
        seq, _ = self._enqueue(peer, direction, kind, payload, len(payload), rows, round,
                               purpose, None, "")
        if not self._dirty.is_set():
            self._dirty.set()
        return seq

    def _enqueue(
        self, peer: str, direction: str, kind: str, payload: bytes | str, size: int,
        rows: int, round: int, purpose: str, out: list[str] | None, status: str,
    ) -> tuple[int, float]:
        """Check the fields, then give the entry its seq and time (message order)."""
        if not (type(rows) is int and type(round) is int and rows >= 0 and round >= 0
                and (direction == "sent" or direction == "received"
                     or (direction == FAILED and status))
                and isinstance(peer, str) and isinstance(kind, str)
                and isinstance(purpose, str)):
            _refuse(peer, direction, kind, purpose, rows, round)
        recovered = False
        with self._queue_lock:
            if self._closed:
                raise LedgerError(f"{self.path}: ledger is closed",
                                  code=grpc.StatusCode.UNAVAILABLE)
            if self._failed is not None:
                if time.monotonic() - self._failed_at < self._probe_interval \
                        or not self._probe():
                    raise self._refusal()
                self._failed = None  # the disk is back: this entry goes in
                recovered = True
            now = float(self._clock())
            if not math.isfinite(now):
                raise ValueError(f"clock returned {now!r}")
            seq = self._next_seq
            self._next_seq = seq + 1
            self._queue.append(
                (seq, now, peer, direction, kind, purpose, rows, round, size, payload, out,
                 status))
        if recovered:
            self._tell(None)
        self._counters.count(peer, direction, kind, size, rows, round)
        return seq, now

    # -- failing closed, and coming back -----------------------------------------------

    def watch(self, watcher: Watcher) -> None:
        """Call ``watcher(reason)`` when the ledger starts refusing entries, and
        ``watcher(None)`` when it takes them again (from whichever thread saw it); at once
        with the state now."""
        self._watchers.append(watcher)
        failed = self._failed
        self._tell(None if failed is None else self._reason(failed), [watcher])

    @property
    def failure(self) -> str | None:
        """Why the ledger refuses entries now, or None."""
        failed = self._failed
        return None if failed is None else self._reason(failed)

    def _reason(self, exc: BaseException) -> str:
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return (f"the audit ledger {self.path} cannot be written ({what}): nothing is sent "
                "that it cannot record")

    def _refusal(self) -> LedgerError:
        failed = self._failed
        return LedgerError(
            f"{self.path}: cannot record: the ledger failed earlier: {failed}; retried every "
            f"{self._probe_interval:g} s", code=grpc.StatusCode.UNAVAILABLE)

    def _tell(self, reason: str | None, watchers: list[Watcher] | None = None) -> None:
        for watcher in list(self._watchers) if watchers is None else watchers:
            try:
                watcher(reason)
            except Exception:  # a watcher's failure must not break the ledger
                log.exception("%s: a ledger watcher failed", self.path)

    def _fail(self, exc: BaseException) -> None:
        """Refuse entries from now on, until a probe succeeds; tell the watchers."""
        with self._queue_lock:
            first = self._failed is None
            self._failed = exc
            self._failed_at = time.monotonic()
        if first:
            self._failed_now(exc)

    def _failed_now(self, exc: BaseException) -> None:
        log.error("%s: %s; refusing entries until the disk takes writes again",
                  self.path, exc)
        self._dirty.set()  # wake the background thread: its timer probes from now on
        self._tell(self._reason(exc))

    def _probe(self) -> bool:
        """Whether the ledger's disk takes a write now: a probe file written, synced and
        removed beside the ledger. Updates the time of the last try."""
        self._failed_at = time.monotonic()
        probe = self.folder / PROBE_FILE
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(bytes(PROBE_BYTES))
                while view:
                    view = view[self._write_fd(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
        except OSError as exc:
            log.debug("%s: probe failed: %s", self.path, exc)
            return False
        return True

    def _try_recover(self) -> None:
        """The background thread's timer: probe, and take entries again if it works."""
        with self._queue_lock:
            if self._failed is None or self._closed \
                    or time.monotonic() - self._failed_at < self._probe_interval:
                return
            if not self._probe():
                return
            self._failed = None
        log.info("%s: the disk takes writes again; the ledger takes entries", self.path)
        self._tell(None)
        self._dirty.set()  # write what was kept

    def _drain(self) -> None:
        """Chain, sign and append every queued entry, in seq order. Needs ``_chain_lock``.

        The queued dicts get their ``prev`` and ``signature``; one write per batch.
        """
        while True:
            with self._queue_lock:
                if not self._queue:
                    return
                batch = self._queue
                self._queue = []
            if self._failed is not None:
                with self._queue_lock:
                    self._requeue(batch)
                raise self._refusal()
            started = time.perf_counter()
            lines = []
            outs = []
            prev, party, last = self._prev, self.party, len(batch)
            for i, (seq, t, peer, direction, kind, purpose, rows, round_, size, payload, out,
                    status) in enumerate(batch, 1):
                # submitted: hash it now; recorded: already its hex digest
                digest = hashlib.sha256(payload).hexdigest() if type(payload) is bytes \
                    else payload
                frags = line_fragments(party, peer, direction, kind, purpose)
                # One signature per write: it covers the entries before it through prev.
                sig = self._signer.sign(ENTRY_DOMAIN + encode_line(
                    frags, size, digest, prev, round_, rows, seq, None, t, status)).hex() \
                    if i == last or i % SIGN_EVERY == 0 else ""
                line = encode_line(frags, size, digest, prev, round_, rows, seq, sig, t,
                                   status)
                if out is not None:
                    outs.append((out, prev, sig, seq))
                prev = hashlib.sha256(line).hexdigest()
                lines.append(line)
            lines.append(b"")
            data = b"\n".join(lines)
            try:
                self._write_all(data)
            except OSError as exc:
                self._write_failed(exc, batch)
                raise LedgerError(f"{self.path}: cannot append: {exc}",
                                  code=grpc.StatusCode.UNAVAILABLE) from None
            self._size += len(data)
            for out, p, sig, seq in outs:  # only now: what record() waits on is written
                out.extend((p, sig, seq))
            self._prev = prev
            self._written_seq = int(batch[-1][0])
            self._entries.inc(last)
            self._write_seconds.observe(time.perf_counter() - started)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._write_fd(self._fd, view)
            view = view[n:]

    def _write_failed(self, exc: OSError, batch: list[tuple[Any, ...]]) -> None:
        """A batch's write failed (needs ``_chain_lock``): cut what it left off the file,
        drop the entries of :meth:`record` callers (each is told; its message is not
        sent), keep those of :meth:`submit` (their messages left) numbered next, and
        refuse new entries until a probe succeeds."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as cut:  # cannot even cut: the chain's end is unknown for good
            log.error("%s: cannot cut a failed write back off (%s); closed for good",
                      self.path, cut)
            self._probe_interval = math.inf
        with self._queue_lock:
            self._requeue(batch)
            first = self._failed is None
            self._failed, self._failed_at = exc, time.monotonic()
        if first:
            self._failed_now(exc)

    def _requeue(self, batch: list[tuple[Any, ...]]) -> None:
        """``batch`` was not written (needs ``_queue_lock``): keep the entries of
        :meth:`submit` in it and in the queue, numbered on from the last written entry,
        and drop those of :meth:`record`, whose callers are told (their ``out`` stays
        empty) and send nothing."""
        kept = [e for e in (*batch, *self._queue) if e[10] is None]
        first = self._written_seq + 1
        self._queue = [(first + i, *e[1:]) for i, e in enumerate(kept)]
        self._next_seq = first + len(kept)

    # -- durability -----------------------------------------------------------------------

    def _run(self) -> None:
        """While anything is unsynced: every ``drain_interval_s`` sign and append what
        :meth:`submit` queued (one batch, one write), and fsync once ``sync_interval_s`` has
        passed since the last fsync (group commit; at once after a quiet spell); rewrite
        the head with a commit at most every ``HEAD_INTERVAL_S``, or once quiet that long."""
        last_sync = last_head = -math.inf
        # close() sets _stop before _dirty, so a _dirty.clear() below cannot hide it
        while not self._stop.is_set():
            if self._failed is not None:  # the timer probe: no entry may come to try
                if self._stop.wait(min(self._probe_interval, 60.0)):
                    return
                self._try_recover()
                continue
            try:
                lagging = self._head_seq != self._synced_seq
                if not self._dirty.wait(
                    max(0.0, last_head + HEAD_INTERVAL_S - time.monotonic()) if lagging
                    else None
                ):  # quiet, but the head lags the synced tail: catch up
                    self._sync_now(head=True)
                    last_head = time.monotonic()
                    continue
                if self._stop.wait(self._drain_interval):
                    return  # close() appends and syncs what is left
                with self._chain_lock:
                    self._drain()
                now = time.monotonic()
                if now - last_sync >= self._interval:
                    self._dirty.clear()  # what is recorded from here on sets it again
                    with self._chain_lock:
                        self._drain()
                    head = now - last_head >= HEAD_INTERVAL_S
                    self._sync_now(head=head)
                    last_sync = now
                    if head:
                        last_head = now
            except LedgerError:
                pass  # a failed write: _write_failed already failed the ledger
            except OSError as exc:  # fsync or the head: what is written stays, unsynced
                self._fail(exc)

    def _sync_now(self, *, head: bool = True) -> None:
        with self._sync_lock:
            with self._chain_lock:
                seq, prev = self._written_seq, self._prev
            if seq != self._synced_seq:
                os.fsync(self._fd)
                self._synced_seq, self._synced_prev = seq, prev
            if head and self._head_seq != self._synced_seq:
                self._write_head(self._synced_seq, self._synced_prev)

    def _write_head(self, seq: int, hash_: str) -> None:
        t = float(self._clock())
        sig = self._signer.sign(head_signed_bytes(self.party, seq, hash_, t)).hex()
        head = Head(self.party, seq, hash_, t, sig)
        # atomic_write's steps with a fixed temporary name: this writer holds the lock
        tmp = self.head_path.with_name(HEAD_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, head_line(head))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_path)
        fsync_dir(self.folder)
        self._head_seq = seq

    def sync(self) -> None:
        """Make every entry recorded or submitted so far durable now (fsync, then the head)."""
        if self._closed:
            return
        with self._chain_lock:
            self._drain()
        self._sync_now()

    def close(self) -> None:
        """Append what is queued, sync, stop the background thread, release the file.
        Idempotent."""
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True  # refuse new entries; the queue can only shrink now
        self._stop.set()
        self._dirty.set()
        self._thread.join()
        try:
            if self._failed is not None and math.isfinite(self._probe_interval):
                self._failed_at = -math.inf  # one last try for what was kept
                if self._probe():
                    self._failed = None
            if self._failed is None:
                with self._chain_lock:
                    self._drain()
                self._sync_now()
            elif self._queue:
                log.error("%s: closed while its disk refuses writes: %d entries of messages "
                          "sent are lost", self.path, len(self._queue))
        finally:
            os.close(self._fd)

    @property
    def next_seq(self) -> int:
        """The seq the next entry will get."""
        return self._next_seq

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
