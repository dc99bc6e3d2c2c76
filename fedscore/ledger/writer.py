"""The audit ledger: one signed, hash-chained entry per message crossing a node's boundary.

Every node keeps ``<folder>/ledger.jsonl``: JSON lines, one entry per message it sent to or
received from another party (training, scoring, federation control), each naming the peer,
the direction, what kind of payload it was, its size and SHA-256, the round and the purpose.
Each entry carries the SHA-256 of the previous line (``prev``) and is signed with the
node's Ed25519 key, directly or through the chain: every write of a batch of entries ends
with a signed entry, whose signature covers its ``prev`` and so, hash by hash, every
entry before it (as a transparency log signs its tree head, not each leaf). An auditor
holding only the CA-signed manifest can tell whether anything was edited, inserted,
deleted or reordered (:func:`verify_chain`), and, holding the ledgers of both ends,
whether both recorded every message (:mod:`fedscore.audit.verify`).

File format (``ledger.jsonl``), one line per entry, UTF-8/ASCII, ``\\n``-terminated::

    {"bytes":..,"direction":"sent"|"received","kind":..,"party":..,"payload_sha256":..,
     "peer":..,"prev":..,"purpose":..,"round":..,"rows":..,"seq":..,"signature":..,"time":..}

- canonical form: ``json.dumps(fields, sort_keys=True, separators=(",", ":"),
  ensure_ascii=True)``; a line that is not exactly the canonical form of what it parses to is
  rejected (so no byte can change without changing what is signed or chained);
- ``signature`` = hex Ed25519 over ``ENTRY_DOMAIN + canonical(all fields but signature)``
  (the domain prefix keeps a ledger signature from ever passing as a consent token's or a
  manifest's), or ``""`` on an entry that a later signed entry of the same write covers
  (at most ``SIGN_EVERY - 1`` in a row); entries after the last signature are refused;
- ``prev`` = hex SHA-256 of the previous entry's full line (with its signature, without the
  newline); 64 zeros for seq 0.

``<folder>/ledger.head`` is a small signed record of the last entry known to be on disk
(seq and line hash), rewritten atomically at most every ``HEAD_INTERVAL_S`` (and on
:meth:`Ledger.sync` and :meth:`Ledger.close`). It is what makes a truncated tail
detectable: a ledger that ends before the head's seq lost entries. The head lags the
synced tail by up to a second while a node is busy: rewriting it (sign, write, fsync,
rename, fsync the folder) with every group commit cost more than the commit itself.

Writing, and what it costs (measured on the 2-core development machine):

- :meth:`Ledger.record` hashes the payload, signs (Ed25519, ~30 µs) and appends the line
  with one ``write(2)``: when it returns the entry is in the OS and survives a crash of the
  process. ~50 µs per 4 KiB message, plus SHA-256 at ~0.6 ms per MB.
- :meth:`Ledger.submit` (what the gRPC taps use by default) only takes the seq and the time
  (~2 µs on the message's path); a background thread hashes and appends the queued entries
  in seq order every ``drain_interval_s`` (50 ms, with the group commit), one write and one
  signature per batch (Ed25519 signing, ~32 µs, was two thirds of the cost of an entry
  signed alone). A process killed outright loses what it had queued; the peer's ledger
  then shows those messages as one-sided.
- Either way a background thread fsyncs at most every ``sync_interval_s`` (50 ms, group
  commit) and rewrites ``ledger.head`` at most every second; no message ever waits for
  the disk.

What it costs split training, both nodes ledgered on one 2-core machine:
``benchmarks/privacy.py`` (``ledger_overhead``).
"""

from __future__ import annotations

import builtins
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeGuard

import grpc

from fedscore.atomic import fsync_dir
from fedscore.crypto.primitives import POINT_SIZE, SignatureError, SigningPrivateKey, VerifyKey
from fedscore.ledger.flow import Flow

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
HEAD_FILE = "ledger.head"
HEAD_INTERVAL_S = 1.0
"""Most often the background thread rewrites ``ledger.head`` (3 of the 4 fsyncs of a
commit); when the ledger goes quiet, the head catches up within this long."""
ENTRY_DOMAIN = b"fedscore-ledger-entry-v1\x00"
HEAD_DOMAIN = b"fedscore-ledger-head-v1\x00"
ZERO_HASH = "0" * 64
SIGN_EVERY = 256
"""At most this many entries in a row share one signature (bounds what a reader scans)."""
DIRECTIONS = ("sent", "received")

ENTRY_FIELDS: tuple[str, ...] = (
    "seq", "time", "party", "peer", "direction", "kind", "rows", "bytes",
    "payload_sha256", "round", "purpose", "prev", "signature",
)
HEAD_FIELDS: tuple[str, ...] = ("party", "seq", "hash", "time", "signature")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")


class LedgerError(Exception):
    """A ledger failed verification or cannot be written. Verification raises, never False.

    ``problems`` lists every problem found (the message shows the first ones), each naming
    the file, the line and the seq.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) or [message]


# --------------------------------------------------------------------------------------------
# Entries and their canonical encoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One message that crossed the writer's boundary, as signed into its ledger."""

    seq: int
    time: float
    party: str
    peer: str
    direction: str
    kind: str
    rows: int
    bytes: int
    payload_sha256: str
    round: int
    purpose: str
    prev: str
    signature: str

    @property
    def hash(self) -> str:
        """SHA-256 of this entry's line: what the next entry's ``prev`` must be."""
        return hashlib.sha256(entry_line(self)).hexdigest()


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def _dumps(obj: dict[str, Any]) -> builtins.bytes:
    """The canonical encoding: sorted keys, no whitespace, ASCII only, no NaN."""
    return _ENCODER.encode(obj).encode("ascii")


@functools.lru_cache(maxsize=4096)
def _json_str(value: str) -> str:
    return _ENCODER.encode(value)


@functools.lru_cache(maxsize=4096)
def _fragments(party: str, peer: str, direction: str, kind: str, purpose: str
               ) -> tuple[str, str, str]:
    """The constant stretches of an entry's line between its numbers and hashes: one
    node writes a handful of (peer, direction, kind, purpose) over and over."""
    return (
        f',"direction":{_json_str(direction)},"kind":{_json_str(kind)},'
        f'"party":{_json_str(party)},"payload_sha256":"',
        f'","peer":{_json_str(peer)},"prev":"',
        f'","purpose":{_json_str(purpose)},"round":',
    )


def _line(frags: tuple[str, str, str], size: int, digest: str, prev: str, round_: int,
          rows: int, seq: int, signature: str | None, time_: float) -> bytes:
    """``_dumps`` of an entry (with ``signature``, or without the key when None), spelled
    out: the writer's hot loop; a test holds it to ``_dumps`` byte for byte."""
    a, b, c = frags
    sig = "" if signature is None else f',"signature":"{signature}"'
    return (f'{{"bytes":{size}{a}{digest}{b}{prev}{c}{round_},"rows":{rows},"seq":{seq}'
            f'{sig},"time":{time_!r}}}').encode("ascii")


def _entry_line(f: dict[str, Any], signature: str | None) -> bytes:
    """:func:`_line` of an entry's fields."""
    return _line(_fragments(f["party"], f["peer"], f["direction"], f["kind"], f["purpose"]),
                 int(f["bytes"]), f["payload_sha256"], f["prev"], int(f["round"]),
                 int(f["rows"]), int(f["seq"]), signature, float(f["time"]))


def signed_bytes(entry: Entry) -> bytes:
    """What the signature covers: the domain, then the canonical JSON of every other field."""
    fields = asdict(entry)
    del fields["signature"]
    return ENTRY_DOMAIN + _dumps(fields)


def entry_line(entry: Entry) -> bytes:
    """The entry's line in ``ledger.jsonl``, without the newline."""
    return _dumps(asdict(entry))


def _int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(obj: object) -> str | None:
    """Why ``obj`` is not a well-formed entry, or None. Types and formats only."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    keys = set(obj)
    missing = [k for k in ENTRY_FIELDS if k not in keys]
    extra = sorted(keys - set(ENTRY_FIELDS))
    if missing or extra:
        return "fields " + "; ".join(
            p for p in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(extra)}" if extra else "",
            ) if p
        )
    for k in ("seq", "rows", "bytes", "round"):
        if not _int(obj[k]) or obj[k] < 0:
            return f"field {k!r} must be a non-negative integer, got {obj[k]!r}"
    t = obj["time"]
    if not isinstance(t, float | int) or isinstance(t, bool) or not math.isfinite(t):
        return f"field 'time' must be a finite number, got {t!r}"
    for k in ("party", "peer", "kind", "purpose"):
        if not isinstance(obj[k], str):
            return f"field {k!r} must be a string, got {obj[k]!r}"
    if obj["direction"] not in DIRECTIONS:
        return f"field 'direction' must be 'sent' or 'received', got {obj['direction']!r}"
    for k in ("payload_sha256", "prev"):
        if not isinstance(obj[k], str) or not _HEX64.fullmatch(obj[k]):
            return f"field {k!r} must be 64 lowercase hex digits"
    sig = obj["signature"]
    if not isinstance(sig, str) or (sig and not _HEX128.fullmatch(sig)):
        return "field 'signature' must be 128 lowercase hex digits, or empty"
    return None


def parse_line(line: bytes) -> Entry:
    """Parse one line (without newline); raises ValueError saying what is malformed.

    The line must be exactly the canonical encoding of what it parses to: JSON allows many
    spellings of one value, and an auditor must be able to say that not one byte changed.
    """
    try:
        obj = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    why = _check_fields(obj)
    if why:
        raise ValueError(why)
    entry = Entry(**obj)
    if entry_line(entry) != line:
        raise ValueError("not in canonical form (sorted keys, no spaces, ASCII)")
    return entry


def _verify_signature(entry: Entry, key: VerifyKey) -> None:
    key.verify(bytes.fromhex(entry.signature), signed_bytes(entry))


# --------------------------------------------------------------------------------------------
# The head record (guards the tail)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    """The last entry the writer knew to be on disk: ``seq`` (-1: none) and its line hash."""

    party: str
    seq: int
    hash: str
    time: float
    signature: str


def _head_signed(party: str, seq: int, hash_: str, time_: float) -> bytes:
    return HEAD_DOMAIN + _dumps({"party": party, "seq": seq, "hash": hash_, "time": time_})


def _parse_head(data: bytes) -> Head:
    try:
        obj = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != set(HEAD_FIELDS):
        raise ValueError(f"expected an object with exactly the fields {', '.join(HEAD_FIELDS)}")
    if not isinstance(obj["party"], str) or not _int(obj["seq"]) or obj["seq"] < -1:
        raise ValueError("field 'party' must be a string and 'seq' an integer >= -1")
    if not isinstance(obj["hash"], str) or not _HEX64.fullmatch(obj["hash"]):
        raise ValueError("field 'hash' must be 64 lowercase hex digits")
    t = obj["time"]
    if not isinstance(t, float | int) or isinstance(t, bool) or not math.isfinite(t):
        raise ValueError("field 'time' must be a finite number")
    if not isinstance(obj["signature"], str) or not _HEX128.fullmatch(obj["signature"]):
        raise ValueError("field 'signature' must be 128 lowercase hex digits")
    head = Head(**obj)
    if _dumps(asdict(head)) + b"\n" != data:
        raise ValueError("not in canonical form")
    return head


def _verify_head(head: Head, key: VerifyKey) -> None:
    key.verify(
        bytes.fromhex(head.signature), _head_signed(head.party, head.seq, head.hash, head.time)
    )


# --------------------------------------------------------------------------------------------
# Reading and verifying
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    number: int  # 1-based
    entry: Entry | None  # None: unparseable
    error: str | None  # why unparseable


def _split_lines(data: bytes) -> tuple[list[bytes], bytes | None]:
    """Complete lines, and the trailing bytes after the last newline (None when none)."""
    if not data:
        return [], None
    parts = data.split(b"\n")
    tail = parts.pop()
    return parts, (tail if tail else None)


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read ledger: {exc.strerror or exc}") from None


def read_ledger(path: Path) -> list[Entry]:
    """Every entry of ``path`` in file order; LedgerError on the first malformed line.

    Only the format is checked here; :func:`verify_chain` checks signatures and the chain.
    """
    path = Path(path)
    lines, torn = _split_lines(_read(path))
    entries = []
    for i, raw in enumerate(lines, 1):
        try:
            entries.append(parse_line(raw))
        except ValueError as exc:
            raise LedgerError(f"{path}:{i}: not a ledger entry: {exc} (edited?)") from None
    if torn is not None:
        raise LedgerError(_torn_message(path, len(lines) + 1, torn))
    return entries


def _torn_message(path: Path, line: int, torn: bytes) -> str:
    return (
        f"{path}:{line}: last line has no newline ({len(torn)} bytes): torn by a crash "
        "mid-write, or the tail was cut or edited"
    )


@dataclass(frozen=True)
class ChainCheck:
    """What :func:`check_chain` found: the valid entries, their lines, every problem."""

    entries: list[Entry]
    lines: list[int]
    problems: list[str]


def check_chain(
    source: Path | Sequence[Entry], verify_key: VerifyKey, party: str
) -> ChainCheck:
    """Verify a ledger and collect every problem instead of stopping at the first.

    Returns the entries whose signature verifies (file order, with their 1-based line
    numbers) and the problems, each naming file, line and seq and saying what most likely
    happened. ``source`` is a ledger file (the ``ledger.head`` next to it is checked too)
    or already parsed entries (line = index + 1; no head check).
    """
    problems: list[str] = []
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        name = "<entries>"
        lines = [_Line(i, e, None) for i, e in enumerate(source, 1)]
        path: Path | None = None
    else:
        path = Path(source)
        name = str(path)
        lines_raw, torn = _split_lines(_read(path))
        lines = []
        for i, raw in enumerate(lines_raw, 1):
            try:
                lines.append(_Line(i, parse_line(raw), None))
            except ValueError as exc:
                lines.append(_Line(i, None, str(exc)))
        if torn is not None:
            problems.append(_torn_message(path, len(lines_raw) + 1, torn))

    # Pass 1: each line on its own (format, writer, signature).
    valid: list[tuple[int, Entry]] = []
    status: list[tuple[_Line, bool]] = []
    for ln in lines:
        e = ln.entry
        if e is None:
            problems.append(f"{name}:{ln.number}: not a ledger entry: {ln.error} (edited)")
            status.append((ln, False))
            continue
        where = f"{name}:{ln.number} seq {e.seq}"
        if e.party != party:
            problems.append(
                f"{where}: written by {e.party!r}, not {party!r}: an entry from another "
                "ledger was inserted, or the party field was edited"
            )
            status.append((ln, False))
            continue
        try:
            if e.signature:  # an unsigned entry is proved by the chain to a later signature
                _verify_signature(e, verify_key)
        except SignatureError:
            problems.append(
                f"{where}: signature does not verify under {party}'s key: the entry was "
                "edited (or forged)"
            )
            status.append((ln, False))
            continue
        valid.append((ln.number, e))
        status.append((ln, True))

    # Pass 2: the chain, in file order; diagnose what a break most likely is.
    first_line: dict[int, int] = {}
    hash_of: dict[int, str] = {}
    for number, e in valid:
        first_line.setdefault(e.seq, number)
        hash_of.setdefault(e.seq, e.hash)
    last_line_of: dict[int, int] = {}
    for number, e in valid:
        last_line_of[e.seq] = number
    exp_seq: int | None = 0
    exp_prev: str = ZERO_HASH
    seen: set[int] = set()
    moved: set[int] = set()
    for ln, ok in status:
        e = ln.entry
        if not ok:
            # Unreliable line (already reported): resynchronise on the next valid entry.
            exp_seq = None
            continue
        assert e is not None
        where = f"{name}:{ln.number} seq {e.seq}"
        if e.seq in seen:
            problems.append(
                f"{where}: seq {e.seq} repeats (first at line {first_line[e.seq]}): an entry "
                "was inserted (a copy or a replay) or the chain forked"
            )
            continue
        if exp_seq is None:
            exp_seq = e.seq
            exp_prev = hash_of.get(e.seq - 1, e.prev) if e.seq else ZERO_HASH
        if e.seq == exp_seq:
            if e.prev != exp_prev:
                problems.append(
                    f"{where}: prev does not match the hash of "
                    f"{'nothing (seq 0)' if e.seq == 0 else 'the entry before it'}: an "
                    "entry before it was edited (one its signature covers through the chain) "
                    "or replaced by another validly signed one (a fork), or entries before "
                    "it were deleted"
                )
        elif e.seq > exp_seq:
            skipped = range(exp_seq, e.seq)
            later = [s for s in skipped if s in last_line_of and last_line_of[s] > ln.number]
            missing = [s for s in skipped if s not in first_line]
            if later:
                moved.update(later)
                problems.append(
                    f"{where}: comes before seq {_ranges(later)} (line "
                    f"{last_line_of[later[0]]}): entries were reordered"
                )
            if missing:
                problems.append(
                    f"{where}: "
                    + (f"seq jumps from {exp_seq - 1} to {e.seq}" if exp_seq else
                       f"the first entry is seq {e.seq}")
                    + f": seq {_ranges(missing)} missing ({len(missing)} "
                    f"entr{'y' if len(missing) == 1 else 'ies'} deleted: a gap)"
                )
            if e.seq - 1 in hash_of and e.prev != hash_of[e.seq - 1]:
                problems.append(
                    f"{where}: prev does not match the hash of seq {e.seq - 1}: the chain "
                    "forked"
                )
        else:
            seen.add(e.seq)
            if e.seq not in moved:
                problems.append(
                    f"{where}: out of order (after seq {exp_seq - 1}): entries were reordered"
                )
            continue
        seen.add(e.seq)
        exp_seq, exp_prev = e.seq + 1, e.hash

    # Pass 3: entries after the last signature are proved by nothing.
    signed = [i for i, (_, e) in enumerate(valid) if e.signature]
    tail = valid[signed[-1] + 1:] if signed else valid
    if tail:
        (first, e0), (_, e1) = tail[0], tail[-1]
        problems.append(
            f"{name}:{first} seq {_ranges(sorted({e0.seq, e1.seq}))}: {len(tail)} "
            f"entr{'y' if len(tail) == 1 else 'ies'} after the last signature: not signed by "
            f"{party}'s key (appended without the key, or its signed end was cut off)"
        )

    if path is not None:
        last_parsed = max((ln.entry.seq for ln in lines if ln.entry is not None), default=-1)
        problems.extend(_check_head(path, verify_key, party, valid, last_parsed))
    return ChainCheck([e for _, e in valid], [n for n, _ in valid], problems)


def _ranges(seqs: list[int]) -> str:
    if len(seqs) == 1:
        return str(seqs[0])
    if seqs == list(range(seqs[0], seqs[-1] + 1)):
        return f"{seqs[0]}..{seqs[-1]}"
    return ", ".join(map(str, seqs))


def _check_head(
    path: Path, verify_key: VerifyKey, party: str, valid: list[tuple[int, Entry]],
    last_parsed: int,
) -> list[str]:
    """The head's signature, and that the ledger still reaches the entry it vouches for."""
    head_path = path.with_name(HEAD_FILE)
    try:
        data = head_path.read_bytes()
    except FileNotFoundError:
        if not valid and path.stat().st_size == 0:
            return []
        return [f"{head_path}: missing: cannot rule out that entries were cut from the end "
                f"of {path}"]
    except OSError as exc:
        return [f"{head_path}: cannot read: {exc.strerror or exc}"]
    try:
        head = _parse_head(data)
    except ValueError as exc:
        return [f"{head_path}: not a ledger head: {exc} (edited)"]
    if head.party != party:
        return [f"{head_path}: written by {head.party!r}, not {party!r} (edited or swapped)"]
    try:
        _verify_head(head, verify_key)
    except SignatureError:
        return [f"{head_path}: signature does not verify under {party}'s key: edited"]
    if head.seq < 0:
        return []
    by_seq = {e.seq: (n, e) for n, e in valid}
    last = max(last_parsed, max(by_seq, default=-1))
    if head.seq > last:
        cut = head.seq - last
        return [
            f"{path}: tail truncated: {HEAD_FILE} (signed at {head.time:.3f}) vouches for "
            f"entries up to seq {head.seq} but the ledger ends at "
            f"{f'seq {last}' if last >= 0 else 'no entry'}: "
            f"{cut} entr{'y' if cut == 1 else 'ies'} deleted from the end"
        ]
    if head.seq in by_seq and by_seq[head.seq][1].hash != head.hash:
        n, _ = by_seq[head.seq]
        return [
            f"{path}:{n} seq {head.seq}: not the entry {HEAD_FILE} vouches for: the ledger "
            "was rewritten (a fork)"
        ]
    return []


def verify_chain(
    entries_or_path: Path | Sequence[Entry], verify_key: VerifyKey, party: str
) -> list[Entry]:
    """Check every signature and the hash chain; return the entries or raise LedgerError.

    The error names file, line and seq of each problem and what it most likely is: an edit
    (bad JSON, missing field, signature invalid), a deletion (seq jumps, or the tail is
    shorter than ``ledger.head`` vouches for), an insertion or fork (seq repeats, prev
    mismatch) or a reordering (seq out of order), or an entry of another party.
    """
    found = check_chain(entries_or_path, verify_key, party)
    if found.problems:
        more = f" (and {len(found.problems) - 1} more)" if len(found.problems) > 1 else ""
        raise LedgerError(found.problems[0] + more, found.problems)
    return found.entries


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


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
                    f"{path}: in use by another writer; two writers would fork the chain"
                ) from None
            time.sleep(0.02)


def _refuse(peer: object, direction: object, kind: object, purpose: object, rows: object,
            round: object) -> NoReturn:
    """What is wrong with an entry's fields (the hot path checks them all at once)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'sent' or 'received', got {direction!r}")
    if not (isinstance(peer, str) and isinstance(kind, str) and isinstance(purpose, str)):
        raise TypeError("peer, kind and purpose must be strings")
    for name, v in (("rows", rows), ("round", round)):
        if not _int(v) or v < 0:
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
    to close.
    """

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
        self._signer = signer
        self._key = signer.verify_key()
        self._clock = clock
        self._interval = float(sync_interval_s)
        self._drain_interval = min(float(drain_interval_s), self._interval)
        self._queue_lock = threading.Lock()  # next seq, the queue, closed
        self._chain_lock = threading.Lock()  # prev, the file; held while signing a batch
        self._sync_lock = threading.Lock()  # one fsync + head write at a time, in order
        # (seq, time, peer, direction, kind, purpose, rows, round, size, payload bytes or
        # its hex SHA-256, a list that receives (prev, signature) or None)
        self._queue: list[tuple[Any, ...]] = []
        self._failed: BaseException | None = None
        self._closed = False
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            _lock(self._fd, self.path, lock_timeout_s)
            self._next_seq, self._prev = self._resume()
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
            _verify_signature(last, self._key)
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
        _verify_signature(entries[signed[-1]], self._key)
        for before, after in itertools.pairwise(entries[signed[-1]:]):
            if after.prev != before.hash:
                raise SignatureError(f"seq {after.seq} does not chain to seq {before.seq}")

    def _read_head(self) -> Head | None:
        try:
            data = self.head_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            head = _parse_head(data)
            if head.party != self.party:
                raise ValueError(f"written by {head.party!r}, not {self.party!r}")
            _verify_head(head, self._key)
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
        if not (isinstance(payload_sha256, str) and _HEX64.fullmatch(payload_sha256)):
            raise ValueError("payload_sha256 must be 64 lowercase hex digits")
        if not _int(size) or size < 0:
            raise ValueError(f"size must be a non-negative integer, got {size!r}")
        out: list[str] = []
        seq, now = self._enqueue(peer, direction, kind, payload_sha256, size, rows, round,
                                 purpose, out)
        with self._chain_lock:
            self._drain()
            if self._written_seq < seq:  # the background thread's write failed
                raise LedgerError(f"{self.path}: ledger failed: {self._failed}")
        if not self._dirty.is_set():
            self._dirty.set()  # the background thread fsyncs (group commit)
        prev, signature = out
        return Entry(seq=seq, time=now, party=self.party, peer=peer, direction=direction,
                     kind=kind, rows=rows, bytes=size, payload_sha256=payload_sha256,
                     round=round, purpose=purpose, prev=prev, signature=signature)

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
                               purpose, None)
        if not self._dirty.is_set():
            self._dirty.set()
        return seq

    def _enqueue(
        self, peer: str, direction: str, kind: str, payload: bytes | str, size: int,
        rows: int, round: int, purpose: str, out: list[str] | None,
    ) -> tuple[int, float]:
        """Check the fields, then give the entry its seq and time (message order)."""
        if not (type(rows) is int and type(round) is int and rows >= 0 and round >= 0
                and (direction == "sent" or direction == "received")
                and isinstance(peer, str) and isinstance(kind, str)
                and isinstance(purpose, str)):
            _refuse(peer, direction, kind, purpose, rows, round)
        with self._queue_lock:
            if self._closed:
                raise LedgerError(f"{self.path}: ledger is closed")
            if self._failed is not None:
                raise LedgerError(f"{self.path}: ledger failed earlier: {self._failed}")
            now = float(self._clock())
            if not math.isfinite(now):
                raise ValueError(f"clock returned {now!r}")
            seq = self._next_seq
            self._next_seq = seq + 1
            self._queue.append(
                (seq, now, peer, direction, kind, purpose, rows, round, size, payload, out))
        return seq, now

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
                raise LedgerError(f"{self.path}: ledger failed earlier: {self._failed}")
            lines = []
            prev, party, last = self._prev, self.party, len(batch)
            for i, (seq, t, peer, direction, kind, purpose, rows, round_, size, payload, out
                    ) in enumerate(batch, 1):
                # submitted: hash it now; recorded: already its hex digest
                digest = hashlib.sha256(payload).hexdigest() if type(payload) is bytes \
                    else payload
                frags = _fragments(party, peer, direction, kind, purpose)
                # One signature per write: it covers the entries before it through prev.
                sig = self._signer.sign(ENTRY_DOMAIN + _line(
                    frags, size, digest, prev, round_, rows, seq, None, t)).hex() \
                    if i == last or i % SIGN_EVERY == 0 else ""
                line = _line(frags, size, digest, prev, round_, rows, seq, sig, t)
                if out is not None:
                    out.extend((prev, sig))
                prev = hashlib.sha256(line).hexdigest()
                lines.append(line)
            lines.append(b"")
            try:
                self._write_all(b"\n".join(lines))
            except OSError as exc:
                # A partial line may be on disk and the chain state is unknown: fail closed.
                self._failed = exc
                raise LedgerError(f"{self.path}: cannot append: {exc}") from None
            self._prev = prev
            self._written_seq = int(batch[-1][0])

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    # -- durability -----------------------------------------------------------------------

    def _run(self) -> None:
        """While anything is unsynced: every ``drain_interval_s`` sign and append what
        :meth:`submit` queued (one batch, one write), and fsync once ``sync_interval_s`` has
        passed since the last fsync (group commit; at once after a quiet spell); rewrite
        the head with a commit at most every ``HEAD_INTERVAL_S``, or once quiet that long."""
        last_sync = last_head = -math.inf
        try:
            # close() sets _stop before _dirty, so a _dirty.clear() below cannot hide it
            while not self._stop.is_set():
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
        except (OSError, LedgerError) as exc:
            log.error("%s: %s; the ledger refuses further records", self.path, exc)
            if self._failed is None:
                self._failed = exc

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
        sig = self._signer.sign(_head_signed(self.party, seq, hash_, t)).hex()
        head = Head(self.party, seq, hash_, t, sig)
        # atomic_write's steps with a fixed temporary name: this writer holds the lock
        tmp = self.head_path.with_name(HEAD_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, _dumps(asdict(head)) + b"\n")
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
            if self._failed is None:
                with self._chain_lock:
                    self._drain()
                self._sync_now()
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


# --------------------------------------------------------------------------------------------
# gRPC: what kind of payload each fedscore message is
# --------------------------------------------------------------------------------------------

KindOf = Callable[[str, Flow], str]
"""(full method name, flow as the SERVER sees it) -> kind.

Flow.RECEIVED is the request (client -> server) and Flow.SENT the response, on both ends:
the client tap asks for its requests with Flow.RECEIVED, so both ends name a message alike.
"""
PurposeOf = Callable[[str], str]
"""full method name -> purpose."""

_KINDS: dict[str, tuple[str, str, str]] = {
    # service: (kind of requests, kind of responses, purpose)
    "fedscore.v1.PsiService": ("psi-blinded-ids", "psi-blinded-ids", "alignment"),
    "fedscore.v1.SplitLearningService": ("gradients", "embeddings", "training"),
    "fedscore.v1.RoundControlService": ("control", "control", "training"),
    "fedscore.v1.FederationService": ("federation-control", "federation-control", "federation"),
    "fedscore.v1.EmbeddingService": ("embedding-query", "embeddings", "scoring"),
    "fedscore.v1.ScoringService": ("score", "score", "scoring"),
    "grpc.health.v1.Health": ("health", "health", "health"),
}


HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
"""Readiness probes: no party's data, asked by anything that watches a node; not recorded."""


def _service(method: str) -> str:
    return method.lstrip("/").split("/", 1)[0]


def default_kind(method: str, flow: Flow) -> str:
    """fedscore's services: PSI points, gradients (bank sends) and embeddings (platform
    sends), embedding queries, control messages, scores; "other" for anything else."""
    kinds = _KINDS.get(_service(method))
    if kinds is None:
        return "other"
    return kinds[0] if flow is Flow.RECEIVED else kinds[1]


def default_purpose(method: str) -> str:
    """alignment (PSI, for training or scoring), training, federation, scoring, health."""
    kinds = _KINDS.get(_service(method))
    return kinds[2] if kinds is not None else "other"


def default_round(message: object) -> int:
    """The message's ``round`` field, or its sealed envelope's; 0 when it has none."""
    r = getattr(message, "round", None)
    if _int(r):
        return r
    r = getattr(getattr(message, "sealed", None), "round", None)
    return r if _int(r) else 0


PSI_RESULT_KIND = "psi-result"
"""Kind of PSI's final ``Done`` message: its rows are the intersection size it announces."""


def _psi_step(message: object) -> str | None:
    if type(message).__name__ not in ("IntersectRequest", "IntersectResponse"):
        return None
    step: str | None = message.WhichOneof("step")  # type: ignore[attr-defined]
    return step


def message_kind(kind: str, message: object) -> str:
    """Refine ``kind`` by the message itself: a PSI ``Done`` is "psi-result", not points.

    ``kind_of`` sees only the method and direction; the ``Done`` that closes a PSI stream
    carries no ids but the intersection size, which an auditor wants to see apart from the
    points (``fedscore audit report`` reads it from these entries' rows).
    """
    if kind == "psi-blinded-ids" and _psi_step(message) == "done":
        return PSI_RESULT_KIND
    return kind


def default_rows(message: object) -> int:
    """Ids in a PSI points message (32 bytes each), the intersection size a PSI ``Done``
    announces; 0 for anything else (sealed payloads do not show their row count, and
    opening them here would defeat end-to-end sealing)."""
    step = _psi_step(message)
    if step in ("blinded", "double_blinded"):
        return len(getattr(message, step).points) // POINT_SIZE
    if step == "done":
        return int(message.done.intersection_size)  # type: ignore[attr-defined]
    return 0


Record = Callable[[str, bytes, object], None]
"""Records one message (peer, its serialized bytes, the message) of one method and flow."""


class _Describer:
    """Turns the messages of one method into ledger entries; shared by the server and
    client taps. Kind and purpose come from the method alone, so they are settled once per
    method (or RPC); per message only the round, the rows and PSI's ``Done`` are read."""

    def __init__(
        self,
        ledger: Ledger,
        kind_of: KindOf,
        purpose_of: PurposeOf,
        round_of: Callable[[object], int],
        rows_of: Callable[[object], int],
        wait: bool,
    ) -> None:
        self.kind_of = kind_of
        self.purpose_of = purpose_of
        self.round_of = round_of
        self.rows_of = rows_of
        self._write = ledger.record if wait else ledger.submit

    def recorder(self, method: str, server_flow: Flow, sent: bool) -> Record:
        """What records ``method``'s messages flowing ``server_flow`` (as the server sees
        them), ``sent`` or received by this end."""
        kind, purpose = self.kind_of(method, server_flow), self.purpose_of(method)
        direction = "sent" if sent else "received"
        write, round_of, rows_of = self._write, self.round_of, self.rows_of

        def record(peer: str, data: bytes, message: object) -> None:
            write(peer, direction, message_kind(kind, message), data,
                  rows=rows_of(message), round=round_of(message), purpose=purpose)

        return record


# --------------------------------------------------------------------------------------------
# gRPC server side
# --------------------------------------------------------------------------------------------


def _client_party(context: grpc.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name") or []
    if len(names) == 1:
        return str(names[0].decode("utf-8", "replace"))
    return f"unauthenticated({context.peer()})"


class _ServerCall:
    """One RPC on the server: messages seen before the peer is known wait for it.

    A unary request is deserialized before the handler runs, and only the handler sees
    the context (hence the client's certificate); it is recorded as the handler starts.
    """

    __slots__ = ("_lock", "_peer", "_pending", "received", "sent")

    def __init__(self, describer: _Describer, method: str) -> None:
        self.received = describer.recorder(method, Flow.RECEIVED, False)
        self.sent = describer.recorder(method, Flow.SENT, True)
        self._peer: str | None = None
        self._pending: list[tuple[Record, bytes, object]] = []
        self._lock = threading.Lock()

    def message(self, record: Record, data: bytes, message: object) -> None:
        peer = self._peer  # once set, never changes: no lock on the hot path
        if peer is None:
            with self._lock:
                if self._peer is None:
                    self._pending.append((record, data, message))
                    return
                peer = self._peer
        record(peer, data, message)

    def bind(self, context: grpc.ServicerContext) -> None:
        peer = _client_party(context)
        with self._lock:
            self._peer = peer
            pending, self._pending = self._pending, []
        for record, data, message in pending:
            record(peer, data, message)


class LedgerTap(grpc.ServerInterceptor):
    """Records every message a gRPC server receives or sends, as its serialized bytes.

    Like :class:`fedscore.ledger.flow.MessageTap` it wraps the handlers' (de)serializers,
    so the SHA-256 is of exactly the application-layer bytes; it also wraps the handler to
    learn the peer (the client certificate's CN). Entries go through :meth:`Ledger.submit`;
    with ``wait=True`` through :meth:`Ledger.record` instead, so that each entry is signed
    and in the OS before its message is delivered or sent, and a message that cannot be
    recorded fails its call (~50 µs more per message). A request that cannot be
    deserialized never reaches the handler and is not recorded. Methods in ``ignore`` (full
    names) are not recorded.
    """

    def __init__(
        self,
        ledger: Ledger,
        kind_of: KindOf = default_kind,
        purpose_of: PurposeOf = default_purpose,
        *,
        round_of: Callable[[object], int] = default_round,
        rows_of: Callable[[object], int] = default_rows,
        ignore: Collection[str] = (),
        wait: bool = False,
    ) -> None:
        self._d = _Describer(ledger, kind_of, purpose_of, round_of, rows_of, wait)
        self._ignore = frozenset(ignore)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        if handler is None or method in self._ignore:
            return handler
        call = _ServerCall(self._d, method)
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer

        def _deserialize(data: bytes) -> Any:
            message = deserialize(data) if deserialize else data
            call.message(call.received, data, message)
            return message

        def _serialize(message: Any) -> bytes:
            data: bytes = serialize(message) if serialize else message
            call.message(call.sent, data, message)
            return data

        def _wrap(behavior: Callable[[Any, Any], Any] | None) -> Callable[[Any, Any], Any] | None:
            if behavior is None:
                return None

            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                call.bind(context)
                return behavior(request, context)

            return wrapped

        return handler._replace(
            request_deserializer=_deserialize,
            response_serializer=_serialize,
            unary_unary=_wrap(handler.unary_unary),
            unary_stream=_wrap(handler.unary_stream),
            stream_unary=_wrap(handler.stream_unary),
            stream_stream=_wrap(handler.stream_stream),
        )


# --------------------------------------------------------------------------------------------
# gRPC client side
# --------------------------------------------------------------------------------------------


Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None


class SerializerTap:
    """Records what a client sends to and receives from ``peer`` (the server's party) by
    wrapping each method's (de)serializers, as :class:`LedgerTap` does on the server: the
    entry is of exactly the bytes gRPC sends or received, taken as they are made or read,
    so it matches the server's. A request is recorded when it is serialized (before gRPC
    sends it), a response when it is deserialized (a response the caller never reads is
    not recorded; a refused call records only its request). Methods in ``ignore`` (full
    names) are not recorded; ``wait`` as for :class:`LedgerTap`.

    Interceptors would do the same at several times the cost: on a split-learning round
    trip they and a second ``SerializeToString`` per message added ~55 µs (of ~400).
    """

    def __init__(
        self,
        ledger: Ledger,
        peer: str,
        kind_of: KindOf = default_kind,
        purpose_of: PurposeOf = default_purpose,
        *,
        round_of: Callable[[object], int] = default_round,
        rows_of: Callable[[object], int] = default_rows,
        ignore: Collection[str] = (),
        wait: bool = False,
    ) -> None:
        self._d = _Describer(ledger, kind_of, purpose_of, round_of, rows_of, wait)
        self.peer = peer
        self._ignore = frozenset(ignore)

    def wrap(self, method: str | bytes, request_serializer: Serializer,
             response_deserializer: Deserializer) -> tuple[Serializer, Deserializer]:
        """``method``'s serializers, recording each message they handle."""
        name = method.decode() if isinstance(method, bytes) else str(method)
        if name in self._ignore:
            return request_serializer, response_deserializer
        sent = self._d.recorder(name, Flow.RECEIVED, True)
        received = self._d.recorder(name, Flow.SENT, False)
        peer = self.peer

        def serialize(message: Any) -> bytes:
            data: bytes = request_serializer(message) if request_serializer else message
            sent(peer, data, message)
            return data

        def deserialize(data: bytes) -> Any:
            message = response_deserializer(data) if response_deserializer else data
            received(peer, data, message)
            return message

        return serialize, deserialize


class TappedFactories:
    """The four multi-callable factories of a channel wrapper, with each method's
    serializers wrapped by ``self.tap``: shared by the sync and the aio ledger channels."""

    _channel: Any
    tap: SerializerTap

    def unary_unary(self, method: str, request_serializer: Serializer = None,
                    response_deserializer: Deserializer = None, **kwargs: Any) -> Any:
        return self._channel.unary_unary(
            method, *self.tap.wrap(method, request_serializer, response_deserializer),
            **kwargs)

    def unary_stream(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, **kwargs: Any) -> Any:
        return self._channel.unary_stream(
            method, *self.tap.wrap(method, request_serializer, response_deserializer),
            **kwargs)

    def stream_unary(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Deserializer = None, **kwargs: Any) -> Any:
        return self._channel.stream_unary(
            method, *self.tap.wrap(method, request_serializer, response_deserializer),
            **kwargs)

    def stream_stream(self, method: str, request_serializer: Serializer = None,
                      response_deserializer: Deserializer = None, **kwargs: Any) -> Any:
        return self._channel.stream_stream(
            method, *self.tap.wrap(method, request_serializer, response_deserializer),
            **kwargs)


class LedgerChannel(TappedFactories, grpc.Channel):
    """``channel`` with every message recorded by ``tap``: what
    :func:`fedscore.wire.transport.secure_channel` returns when given a ledger."""

    def __init__(self, channel: grpc.Channel, tap: SerializerTap) -> None:
        self._channel = channel
        self.tap = tap

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LedgerChannel:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
