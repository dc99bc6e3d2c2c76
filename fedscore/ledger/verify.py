"""Reading a ledger and verifying it: every signature, the hash chain, and the head.

An auditor holding only the CA-signed manifest's verify key can tell whether anything in
a node's ledger was edited, inserted, deleted or reordered (:func:`verify_chain`), and
whether its tail was cut (the signed ``ledger.head`` vouches for how far it reached);
holding the ledgers of both ends, whether both recorded every message
(:mod:`fedscore.audit.verify`). Verification raises :class:`LedgerError`, never returns
False; :func:`check_chain` collects every problem instead of stopping at the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedscore.crypto.primitives import SignatureError, VerifyKey
from fedscore.ledger.entry import (
    HEAD_FILE,
    ZERO_HASH,
    Entry,
    LedgerError,
    parse_head,
    parse_line,
    verify_entry_signature,
    verify_head_signature,
)


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
        raise LedgerError(f"{path}: cannot read ledger: {exc.strerror or exc}",
                          code=grpc.StatusCode.UNAVAILABLE) from None


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
    """What :func:`check_chain` found: the valid entries, their lines, every problem.

    ``entries`` are the entries whose signature verifies, in file order; ``lines`` their
    1-based line numbers; ``problems`` each name file, line and seq.
    """

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
                verify_entry_signature(e, verify_key)
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
        head = parse_head(data)
    except ValueError as exc:
        return [f"{head_path}: not a ledger head: {exc} (edited)"]
    if head.party != party:
        return [f"{head_path}: written by {head.party!r}, not {party!r} (edited or swapped)"]
    try:
        verify_head_signature(head, verify_key)
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
