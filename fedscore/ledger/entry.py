"""The ledger's format: entries, the head record, and their one canonical encoding.

Every node keeps ``<folder>/ledger.jsonl``: JSON lines, one entry per message it sent to or
received from another party (training, scoring, federation control), each naming the peer,
the direction, what kind of payload it was, its size and SHA-256, the round and the purpose.
Each entry carries the SHA-256 of the previous line (``prev``) and is signed with the
node's Ed25519 key, directly or through the chain: every write of a batch of entries ends
with a signed entry, whose signature covers its ``prev`` and so, hash by hash, every
entry before it (as a transparency log signs its tree head, not each leaf).

File format (``ledger.jsonl``), one line per entry, UTF-8/ASCII, ``\\n``-terminated::

    {"bytes":..,"direction":"sent"|"received"|"failed","kind":..,"party":..,
     "payload_sha256":..,"peer":..,"prev":..,"purpose":..,"round":..,"rows":..,"seq":..,
     "signature":..,["status":..,]"time":..}

- ``direction`` ``"failed"`` (since format 1.1; a ledger without it reads as before): the
  message of an earlier ``"sent"`` entry of this ledger (same peer, kind, size, SHA-256)
  did not get through, as far as this node knows: its call ended with the gRPC status
  in ``status`` (a code name, e.g. ``UNAVAILABLE``; the field is on failed entries only).
  A node records a message as sent when it hands it to gRPC, before it can know whether it
  left, so that a message it cannot record is never sent; the failed entry then tells a
  genuine outage (sent, failed, the receiver has nothing) from a message hidden or deleted
  (the receiver has it, the sender has no entry; or the sender has it and says nothing
  failed). See ``docs/ledger.md``;

- canonical form: ``json.dumps(fields, sort_keys=True, separators=(",", ":"),
  ensure_ascii=True)``; a line that is not exactly the canonical form of what it parses to is
  rejected (so no byte can change without changing what is signed or chained);
- ``signature`` = hex Ed25519 over ``ENTRY_DOMAIN + canonical(all fields but signature)``
  (the domain prefix keeps a ledger signature from ever passing as a consent token's or a
  manifest's), or ``""`` on an entry that a later signed entry of the same write covers
  (at most ``SIGN_EVERY - 1`` in a row); entries after the last signature are refused;
- ``prev`` = hex SHA-256 of the previous entry's full line (with its signature, without the
  newline); 64 zeros for seq 0.

``<folder>/ledger.head`` is a small signed record (:class:`Head`) of the last entry known
to be on disk (seq and line hash): what makes a truncated tail detectable. The writer
(:mod:`fedscore.ledger.writer`) keeps it; :mod:`fedscore.ledger.verify` checks both files.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeGuard

import grpc

from fedscore.crypto.primitives import VerifyKey
from fedscore.errors import FedscoreError

LEDGER_FILE = "ledger.jsonl"
"""The entries, in a node's ledger folder."""
HEAD_FILE = "ledger.head"
"""The signed head record, next to :data:`LEDGER_FILE`."""
ENTRY_DOMAIN = b"fedscore-ledger-entry-v1\x00"
"""Prefix of what an entry's signature covers (domain separation)."""
HEAD_DOMAIN = b"fedscore-ledger-head-v1\x00"
"""Prefix of what the head's signature covers (domain separation)."""
ZERO_HASH = "0" * 64
"""The ``prev`` of seq 0, and the hash the head names before any entry."""
SIGN_EVERY = 256
"""At most this many entries in a row share one signature (bounds what a reader scans)."""
DIRECTIONS = ("sent", "received", "failed")
"""The values of an entry's ``direction``: a message sent, received, or an earlier sent one
whose call failed (with its ``status``)."""
FAILED = "failed"
"""The ``direction`` of an entry saying an earlier sent message's call failed."""
STATUS_FIELD = "status"
"""The field a failed entry carries (a gRPC status code name) and no other entry does."""
_STATUS = re.compile(r"[A-Z][A-Z_]{0,31}")

ENTRY_FIELDS: tuple[str, ...] = (
    "seq", "time", "party", "peer", "direction", "kind", "rows", "bytes",
    "payload_sha256", "round", "purpose", "prev", "signature",
)
HEAD_FIELDS: tuple[str, ...] = ("party", "seq", "hash", "time", "signature")

HEX64 = re.compile(r"[0-9a-f]{64}")
"""A hex SHA-256 as the ledger spells it: 64 lowercase hex digits."""
_HEX128 = re.compile(r"[0-9a-f]{128}")


class LedgerError(FedscoreError):
    """A ledger failed verification or cannot be written. Verification raises, never False.

    ``problems`` lists every problem found (the message shows the first ones), each naming
    the file, the line and the seq.

    The class code is DATA_LOSS: what most often raises it is a ledger whose entries were
    edited, cut, reordered or forked, i.e. records that are corrupt or lost, and that no
    retry repairs. A writer that cannot append raises it with INTERNAL (it fails closed:
    the node's own disk, not the peer, is at fault, and every later record is refused);
    a ledger that cannot be read, or is held by another writer still closing, with
    UNAVAILABLE (the records may well be intact; a later try can succeed).
    """

    code = grpc.StatusCode.DATA_LOSS

    def __init__(self, message: str, problems: Sequence[str] = (), *,
                 code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, code=code)
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
    status: str = ""
    """A failed entry's gRPC status code name; "" (and no such key in the line) otherwise."""

    @property
    def hash(self) -> str:
        """SHA-256 of this entry's line: what the next entry's ``prev`` must be."""
        return hashlib.sha256(entry_line(self)).hexdigest()


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def canonical_json(obj: dict[str, Any]) -> builtins.bytes:
    """The canonical encoding: sorted keys, no whitespace, ASCII only, no NaN."""
    return _ENCODER.encode(obj).encode("ascii")


@functools.lru_cache(maxsize=4096)
def _json_str(value: str) -> str:
    return _ENCODER.encode(value)


@functools.lru_cache(maxsize=4096)
def line_fragments(party: str, peer: str, direction: str, kind: str, purpose: str
                   ) -> tuple[str, str, str]:
    """The constant stretches of an entry's line between its numbers and hashes: one
    node writes a handful of (peer, direction, kind, purpose) over and over."""
    return (
        f',"direction":{_json_str(direction)},"kind":{_json_str(kind)},'
        f'"party":{_json_str(party)},"payload_sha256":"',
        f'","peer":{_json_str(peer)},"prev":"',
        f'","purpose":{_json_str(purpose)},"round":',
    )


def encode_line(frags: tuple[str, str, str], size: int, digest: str, prev: str, round_: int,
                rows: int, seq: int, signature: str | None, time_: float,
                status: str = "") -> bytes:
    """:func:`canonical_json` of an entry (with ``signature``, or without the key when
    None), spelled out: the writer's hot loop; a test holds it to :func:`canonical_json`
    byte for byte. ``frags`` is :func:`line_fragments` of the entry's strings; ``status``
    only on a failed entry (a code name: nothing to escape)."""
    a, b, c = frags
    sig = "" if signature is None else f',"signature":"{signature}"'
    st = f',"status":"{status}"' if status else ""
    return (f'{{"bytes":{size}{a}{digest}{b}{prev}{c}{round_},"rows":{rows},"seq":{seq}'
            f'{sig}{st},"time":{time_!r}}}').encode("ascii")


def _entry_line(f: dict[str, Any], signature: str | None) -> bytes:
    """:func:`encode_line` of an entry's fields."""
    frags = line_fragments(f["party"], f["peer"], f["direction"], f["kind"], f["purpose"])
    return encode_line(frags, int(f["bytes"]), f["payload_sha256"], f["prev"], int(f["round"]),
                       int(f["rows"]), int(f["seq"]), signature, float(f["time"]),
                       f.get(STATUS_FIELD, ""))


def _fields(entry: Entry) -> dict[str, Any]:
    """The entry's fields as its line holds them: ``status`` only on a failed entry."""
    fields = asdict(entry)
    if not fields[STATUS_FIELD]:
        del fields[STATUS_FIELD]
    return fields


def signed_bytes(entry: Entry) -> bytes:
    """What the signature covers: the domain, then the canonical JSON of every other field."""
    fields = _fields(entry)
    del fields["signature"]
    return ENTRY_DOMAIN + canonical_json(fields)


def entry_line(entry: Entry) -> bytes:
    """The entry's line in ``ledger.jsonl``, without the newline."""
    return canonical_json(_fields(entry))


def is_int(v: object) -> TypeGuard[int]:
    """An int and not a bool (JSON's ``true`` parses to a bool, which is an int)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(obj: object) -> str | None:
    """Why ``obj`` is not a well-formed entry, or None. Types and formats only."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    keys = set(obj)
    missing = [k for k in ENTRY_FIELDS if k not in keys]
    extra = sorted(keys - {*ENTRY_FIELDS, STATUS_FIELD})
    if missing or extra:
        return "fields " + "; ".join(
            p for p in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(extra)}" if extra else "",
            ) if p
        )
    for k in ("seq", "rows", "bytes", "round"):
        if not is_int(obj[k]) or obj[k] < 0:
            return f"field {k!r} must be a non-negative integer, got {obj[k]!r}"
    t = obj["time"]
    if not isinstance(t, float | int) or isinstance(t, bool) or not math.isfinite(t):
        return f"field 'time' must be a finite number, got {t!r}"
    for k in ("party", "peer", "kind", "purpose"):
        if not isinstance(obj[k], str):
            return f"field {k!r} must be a string, got {obj[k]!r}"
    if obj["direction"] not in DIRECTIONS:
        return ("field 'direction' must be 'sent', 'received' or 'failed', got "
                f"{obj['direction']!r}")
    status = obj.get(STATUS_FIELD)
    if obj["direction"] == FAILED:
        if not isinstance(status, str) or not _STATUS.fullmatch(status):
            return "a failed entry's field 'status' must be a gRPC status code name"
    elif status is not None:
        return f"field 'status' is only on failed entries, not on {obj['direction']!r} ones"
    for k in ("payload_sha256", "prev"):
        if not isinstance(obj[k], str) or not HEX64.fullmatch(obj[k]):
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


def verify_entry_signature(entry: Entry, key: VerifyKey) -> None:
    """Check a signed entry's signature; raises SignatureError (an unsigned entry fails)."""
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


def head_signed_bytes(party: str, seq: int, hash_: str, time_: float) -> bytes:
    """What the head's signature covers: the domain, then the canonical JSON of the rest."""
    return HEAD_DOMAIN + canonical_json({"party": party, "seq": seq, "hash": hash_,
                                         "time": time_})


def head_line(head: Head) -> bytes:
    """The whole content of ``ledger.head``: the head's canonical JSON and a newline."""
    return canonical_json(asdict(head)) + b"\n"


def parse_head(data: bytes) -> Head:
    """Parse the content of ``ledger.head``; raises ValueError saying what is malformed
    (as :func:`parse_line`, only its one canonical spelling is accepted)."""
    try:
        obj = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != set(HEAD_FIELDS):
        raise ValueError(f"expected an object with exactly the fields {', '.join(HEAD_FIELDS)}")
    if not isinstance(obj["party"], str) or not is_int(obj["seq"]) or obj["seq"] < -1:
        raise ValueError("field 'party' must be a string and 'seq' an integer >= -1")
    if not isinstance(obj["hash"], str) or not HEX64.fullmatch(obj["hash"]):
        raise ValueError("field 'hash' must be 64 lowercase hex digits")
    t = obj["time"]
    if not isinstance(t, float | int) or isinstance(t, bool) or not math.isfinite(t):
        raise ValueError("field 'time' must be a finite number")
    if not isinstance(obj["signature"], str) or not _HEX128.fullmatch(obj["signature"]):
        raise ValueError("field 'signature' must be 128 lowercase hex digits")
    head = Head(**obj)
    if head_line(head) != data:
        raise ValueError("not in canonical form")
    return head


def verify_head_signature(head: Head, key: VerifyKey) -> None:
    """Check the head's signature; raises SignatureError."""
    key.verify(bytes.fromhex(head.signature),
               head_signed_bytes(head.party, head.seq, head.hash, head.time))
