"""The audit ledger: canonical signed entries, a hash chain that shows every edit, deletion,
insertion, reordering and truncation, crash recovery, concurrency and the cost per record."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedscore.crypto.primitives import SigningPrivateKey
from fedscore.errors import FedscoreError
from fedscore.ledger.entry import (
    ENTRY_DOMAIN,
    HEAD_FILE,
    LEDGER_FILE,
    ZERO_HASH,
    Entry,
    LedgerError,
    entry_line,
    parse_line,
    signed_bytes,
)
from fedscore.ledger.verify import check_chain, read_ledger, verify_chain
from fedscore.ledger.writer import HEAD_INTERVAL_S, Ledger

PARTY = "bank-1"


class Clock:
    """Deterministic time: 0.25 s per reading."""

    def __init__(self, start: float = 1_750_000_000.125) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def write_sample(folder: Path, key: SigningPrivateKey, n: int = 4) -> list[Entry]:
    """A small ledger whose entries differ in every field."""
    peers = ("platform", "coordinator")
    kinds = ("psi-blinded-ids", "embeddings", "gradients", "control", "model-update")
    with Ledger(folder, key, PARTY, clock=Clock()) as ledger:
        return [
            ledger.record(
                peers[i % 2], ("sent", "received")[i % 2], kinds[i % len(kinds)],
                f"payload {i}".encode() * (i + 1), rows=17 * i, round=i // 2,
                purpose=("training", "scoring", "federation")[i % 3],
            )
            for i in range(n)
        ]


def ledger_lines(folder: Path) -> list[bytes]:
    return (folder / LEDGER_FILE).read_bytes().splitlines(keepends=True)


def problems_of(folder: Path, key: SigningPrivateKey) -> str:
    """All problems verify_chain raises for the folder's ledger, joined (fails if none)."""
    with pytest.raises(LedgerError) as info:
        verify_chain(folder / LEDGER_FILE, key.verify_key(), PARTY)
    assert isinstance(info.value, FedscoreError)
    assert info.value.code is grpc.StatusCode.DATA_LOSS  # edited, cut or forked: lost
    return "\n".join(info.value.problems)


@pytest.fixture()
def key() -> SigningPrivateKey:
    return SigningPrivateKey.generate()


# -------------------------------------------------------------------------------------------
# format and round trip
# -------------------------------------------------------------------------------------------


def test_a_chain_round_trips_and_verifies(tmp_path: Path, key: SigningPrivateKey) -> None:
    written = write_sample(tmp_path, key, n=5)
    read = read_ledger(tmp_path / LEDGER_FILE)
    assert read == written
    assert verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY) == written
    assert verify_chain(written, key.verify_key(), PARTY) == written
    assert [e.seq for e in read] == [0, 1, 2, 3, 4]
    assert read[0].prev == ZERO_HASH
    for before, after in itertools.pairwise(read):
        assert after.prev == before.hash
    e = read[3]
    payload = b"payload 3" * 4
    assert (e.bytes, e.payload_sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert (e.party, e.peer, e.direction, e.kind) == (PARTY, "coordinator", "received", "control")
    assert (e.rows, e.round, e.purpose) == (51, 1, "training")
    # One canonical JSON line per entry; the hash chains the full line, signature included.
    lines = ledger_lines(tmp_path)
    assert lines[3] == entry_line(e) + b"\n"
    assert json.loads(lines[3])["signature"] == e.signature
    assert read[4].prev == hashlib.sha256(lines[3].rstrip(b"\n")).hexdigest()
    key.verify_key().verify(bytes.fromhex(e.signature), signed_bytes(e))
    assert signed_bytes(e).startswith(ENTRY_DOMAIN)
    assert parse_line(entry_line(e)) == e


def test_a_non_canonical_spelling_is_refused(tmp_path: Path, key: SigningPrivateKey) -> None:
    e = write_sample(tmp_path, key, n=1)[0]
    spaced = json.dumps(json.loads(entry_line(e)), sort_keys=True).encode()
    with pytest.raises(ValueError, match="canonical"):
        parse_line(spaced)
    upper = entry_line(e).replace(e.signature.encode(), e.signature.upper().encode())
    with pytest.raises(ValueError, match="signature"):
        parse_line(upper)


# -------------------------------------------------------------------------------------------
# tampering: every byte, deletion, insertion, reordering, truncation
# -------------------------------------------------------------------------------------------


def test_flipping_any_byte_of_the_ledger_is_detected(tmp_path: Path, key: SigningPrivateKey
                                                     ) -> None:
    write_sample(tmp_path, key, n=3)
    path = tmp_path / LEDGER_FILE
    original = path.read_bytes()
    vk = key.verify_key()
    assert len(original) > 1200  # every field of every line, newlines included
    undetected = []
    for pos in range(len(original)):
        # 0x20 also flips the case of a letter: hex digits must be lowercase to count
        for mask in (0x01, 0x20) if chr(original[pos]).isalpha() else (0x01,):
            data = bytearray(original)
            data[pos] ^= mask
            path.write_bytes(bytes(data))
            try:
                verify_chain(path, vk, PARTY)
            except LedgerError as exc:
                assert f"{path}:" in str(exc)
            else:
                undetected.append((pos, mask))
    assert undetected == []
    path.write_bytes(original)
    assert len(verify_chain(path, vk, PARTY)) == 3


def test_flipping_any_byte_of_the_head_is_detected(tmp_path: Path, key: SigningPrivateKey
                                                   ) -> None:
    write_sample(tmp_path, key, n=3)
    head = tmp_path / HEAD_FILE
    original = head.read_bytes()
    undetected = []
    for pos in range(len(original)):
        data = bytearray(original)
        data[pos] ^= 0x01
        head.write_bytes(bytes(data))
        if not check_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY).problems:
            undetected.append(pos)
    assert undetected == []


def test_an_edited_and_resigned_entry_is_a_fork(tmp_path: Path, key: SigningPrivateKey) -> None:
    """Even with the key, replacing one entry breaks the next one's prev."""
    entries = write_sample(tmp_path, key, n=4)
    lines = ledger_lines(tmp_path)
    fields = json.loads(lines[1])
    fields["bytes"] += 1
    del fields["signature"]
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    fields["signature"] = key.sign(ENTRY_DOMAIN + canonical).hex()
    lines[1] = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    (tmp_path / LEDGER_FILE).write_bytes(b"".join(lines))
    message = problems_of(tmp_path, key)
    assert f"{LEDGER_FILE}:3 seq {entries[2].seq}: prev does not match" in message
    assert "a fork" in message


def test_deleting_any_entry_is_detected(tmp_path: Path, key: SigningPrivateKey) -> None:
    write_sample(tmp_path, key, n=5)
    lines = ledger_lines(tmp_path)
    for i in range(len(lines)):
        (tmp_path / LEDGER_FILE).write_bytes(b"".join(lines[:i] + lines[i + 1 :]))
        message = problems_of(tmp_path, key)
        if i < len(lines) - 1:
            assert f"seq {i} missing (1 entry deleted: a gap)" in message
            assert f"{LEDGER_FILE}:{i + 1} seq {i + 1}:" in message
        else:
            assert "tail truncated" in message and "1 entry deleted from the end" in message


def test_inserting_a_copied_entry_anywhere_is_detected(tmp_path: Path, key: SigningPrivateKey
                                                       ) -> None:
    write_sample(tmp_path, key, n=4)
    lines = ledger_lines(tmp_path)
    for source in range(len(lines)):
        for at in range(len(lines) + 1):
            tampered = [*lines[:at], lines[source], *lines[at:]]
            (tmp_path / LEDGER_FILE).write_bytes(b"".join(tampered))
            message = problems_of(tmp_path, key)
            assert "inserted" in message or "reordered" in message, (source, at, message)
            if at > source:  # a copy after its original: plainly a repeat
                assert f"seq {source} repeats (first at line {source + 1})" in message


def test_inserting_a_forged_entry_is_detected(tmp_path: Path, key: SigningPrivateKey) -> None:
    """A well-formed entry that continues the chain, signed by anyone but the writer."""
    entries = write_sample(tmp_path, key, n=3)
    lines = ledger_lines(tmp_path)
    intruder = SigningPrivateKey.generate()
    fields = {
        "seq": 3, "time": entries[-1].time + 1, "party": PARTY, "peer": "platform",
        "direction": "sent", "kind": "embeddings", "rows": 1, "bytes": 3,
        "payload_sha256": hashlib.sha256(b"abc").hexdigest(), "round": 0,
        "purpose": "training", "prev": entries[-1].hash,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    fields["signature"] = intruder.sign(ENTRY_DOMAIN + canonical).hex()
    forged = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    (tmp_path / LEDGER_FILE).write_bytes(b"".join([*lines, forged]))
    message = problems_of(tmp_path, key)
    assert f"{LEDGER_FILE}:4 seq 3: signature does not verify" in message
    # An entry from another party's (validly signed) ledger is named as such.
    other = tmp_path / "other"
    with Ledger(other, intruder, "bank-2") as ledger:
        ledger.record("platform", "sent", "gradients", b"x")
    foreign = ledger_lines(other)[0]
    (tmp_path / LEDGER_FILE).write_bytes(b"".join([*lines[:1], foreign, *lines[1:]]))
    assert "written by 'bank-2', not 'bank-1'" in problems_of(tmp_path, key)


def test_reordering_any_two_adjacent_entries_is_detected(tmp_path: Path, key: SigningPrivateKey
                                                         ) -> None:
    write_sample(tmp_path, key, n=5)
    lines = ledger_lines(tmp_path)
    for i in range(len(lines) - 1):
        swapped = [*lines[:i], lines[i + 1], lines[i], *lines[i + 2 :]]
        (tmp_path / LEDGER_FILE).write_bytes(b"".join(swapped))
        message = problems_of(tmp_path, key)
        assert f"{LEDGER_FILE}:{i + 1} seq {i + 1}: comes before seq {i}" in message
        assert "reordered" in message
    far = [lines[3], *lines[1:3], lines[0], lines[4]]
    (tmp_path / LEDGER_FILE).write_bytes(b"".join(far))
    assert "reordered" in problems_of(tmp_path, key)


def test_truncating_the_tail_is_detected(tmp_path: Path, key: SigningPrivateKey) -> None:
    write_sample(tmp_path, key, n=4)
    path = tmp_path / LEDGER_FILE
    lines = ledger_lines(tmp_path)
    for keep in range(len(lines)):
        path.write_bytes(b"".join(lines[:keep]))
        cut = len(lines) - keep
        message = problems_of(tmp_path, key)
        assert "tail truncated" in message
        assert f"{cut} entr{'y' if cut == 1 else 'ies'} deleted from the end" in message
    for size in range(1, len(lines[-1])):  # a cut inside the last line, newline included
        path.write_bytes(b"".join(lines[:-1]) + lines[-1][:size])
        assert f"{LEDGER_FILE}:4: last line has no newline" in problems_of(tmp_path, key)
    path.write_bytes(b"".join(lines))
    (tmp_path / HEAD_FILE).unlink()
    assert f"{HEAD_FILE}: missing" in problems_of(tmp_path, key)


def test_the_wrong_key_or_party_is_refused(tmp_path: Path, key: SigningPrivateKey) -> None:
    write_sample(tmp_path, key, n=2)
    with pytest.raises(LedgerError, match="signature does not verify"):
        verify_chain(tmp_path / LEDGER_FILE, SigningPrivateKey.generate().verify_key(), PARTY)
    with pytest.raises(LedgerError, match="written by 'bank-1', not 'bank-2'"):
        verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), "bank-2")


# -------------------------------------------------------------------------------------------
# the writer: resume, crash recovery, refusals, concurrency, durability, cost
# -------------------------------------------------------------------------------------------


def test_reopening_continues_the_chain(tmp_path: Path, key: SigningPrivateKey) -> None:
    first = write_sample(tmp_path, key, n=3)
    with Ledger(tmp_path, key, PARTY) as ledger:
        assert ledger.next_seq == 3
        more = [ledger.record("platform", "sent", "gradients", b"more %d" % i) for i in range(2)]
    assert more[0].prev == first[-1].hash and more[0].seq == 3
    entries = verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)
    assert entries == [*first, *more]


def test_a_torn_last_line_is_recovered(tmp_path: Path, key: SigningPrivateKey,
                                       caplog: pytest.LogCaptureFixture) -> None:
    first = write_sample(tmp_path, key, n=3)
    path = tmp_path / LEDGER_FILE
    whole = path.read_bytes()
    torn = b'{"bytes":4096,"direction":"received","kind":"embeddings'  # a crash mid-line
    path.write_bytes(whole + torn)
    assert f"{LEDGER_FILE}:4: last line has no newline" in problems_of(tmp_path, key)
    with (caplog.at_level(logging.WARNING, logger="fedscore.ledger.writer"),
          Ledger(tmp_path, key, PARTY) as ledger):
        e = ledger.record("platform", "received", "embeddings", b"after the crash")
    assert f"torn last line of {len(torn)} bytes" in caplog.text
    assert e.seq == 3 and e.prev == first[-1].hash
    assert path.read_bytes() == whole + entry_line(e) + b"\n"
    assert len(verify_chain(path, key.verify_key(), PARTY)) == 4


@pytest.mark.parametrize("damage", ["edit-last", "cut-tail", "no-head", "empty", "other-key"])
def test_reopening_a_damaged_ledger_is_refused(tmp_path: Path, key: SigningPrivateKey,
                                               damage: str) -> None:
    """Continuing a damaged chain would fork it or launder the damage."""
    write_sample(tmp_path, key, n=3)
    path = tmp_path / LEDGER_FILE
    lines = ledger_lines(tmp_path)
    signer = key
    if damage == "edit-last":
        path.write_bytes(b"".join(lines[:-1]) + lines[-1].replace(b'"rows":34', b'"rows":35'))
        expected = "does not verify"
    elif damage == "cut-tail":
        path.write_bytes(b"".join(lines[:-1]))
        expected = "cut from the end"
    elif damage == "no-head":
        (tmp_path / HEAD_FILE).unlink()
        expected = "missing"
    elif damage == "empty":
        path.write_bytes(b"")
        expected = "truncated"
    else:
        signer = SigningPrivateKey.generate()
        expected = "does not verify"
    with pytest.raises(LedgerError, match=expected):
        Ledger(tmp_path, signer, PARTY)


def test_a_second_writer_and_a_closed_ledger_are_refused(tmp_path: Path,
                                                         key: SigningPrivateKey) -> None:
    ledger = Ledger(tmp_path, key, PARTY)
    try:
        with pytest.raises(LedgerError, match="in use by another writer") as busy:
            Ledger(tmp_path, key, PARTY)
        assert busy.value.code is grpc.StatusCode.UNAVAILABLE  # free once the other closes
    finally:
        ledger.close()
    with pytest.raises(LedgerError, match="closed") as closed:
        ledger.record("platform", "sent", "gradients", b"late")
    assert closed.value.code is grpc.StatusCode.UNAVAILABLE
    with Ledger(tmp_path, key, PARTY) as reopened, pytest.raises(ValueError, match="direction"):
        reopened.record("platform", "sideways", "gradients", b"")


def test_concurrent_records_make_one_valid_chain(tmp_path: Path, key: SigningPrivateKey) -> None:
    """8 threads, half recording and half submitting, interleaved."""
    threads, per_thread = 8, 60
    barrier = threading.Barrier(threads)
    with Ledger(tmp_path, key, PARTY, sync_interval_s=0.005, drain_interval_s=0.001) as ledger:

        def work(t: int) -> None:
            barrier.wait()
            write = ledger.record if t % 2 else ledger.submit
            for i in range(per_thread):
                write("platform", "sent", "gradients", f"{t}/{i}".encode(), rows=i)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    entries = verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)
    assert [e.seq for e in entries] == list(range(threads * per_thread))
    assert sorted(e.payload_sha256 for e in entries) == sorted(
        hashlib.sha256(f"{t}/{i}".encode()).hexdigest()
        for t in range(threads) for i in range(per_thread)
    )


def _head_seq(folder: Path) -> int:
    seq: int = json.loads((folder / HEAD_FILE).read_bytes())["seq"]
    return seq


def test_group_commit_bounds_fsyncs_and_makes_records_durable(
    tmp_path: Path, key: SigningPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    with Ledger(tmp_path, key, PARTY, sync_interval_s=0.2) as ledger:
        assert _head_seq(tmp_path) == -1
        fsyncs.clear()
        started = time.monotonic()
        for i in range(300):
            ledger.record("platform", "sent", "gradients", b"%d" % i)
        elapsed = time.monotonic() - started
        # at most one group commit (ledger fsync + head file + folder) per interval
        assert len(fsyncs) <= 3 * (elapsed / 0.2 + 2)
        deadline = time.monotonic() + 5
        while _head_seq(tmp_path) != 299 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _head_seq(tmp_path) == 299  # the background thread synced without being asked
        ledger.record("platform", "sent", "gradients", b"one more")
        ledger.sync()
        assert _head_seq(tmp_path) == 300


def test_head_is_rewritten_at_most_once_a_second_while_busy_then_catches_up(
    tmp_path: Path, key: SigningPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits every 10 ms, the head (four times a commit's fsyncs) about once a second."""
    fsyncs: list[int] = []
    heads: list[float] = []
    real_fsync, real_replace = os.fsync, os.replace

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    def counting_replace(src: Any, dst: Any) -> None:
        if Path(dst).name == HEAD_FILE:
            heads.append(time.monotonic())
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(os, "replace", counting_replace)
    with Ledger(tmp_path, key, PARTY, sync_interval_s=0.01, drain_interval_s=0.005) as ledger:
        ledger_fd = ledger._fd
        started = time.monotonic()
        while time.monotonic() - started < 2.5 * HEAD_INTERVAL_S:
            ledger.submit("platform", "sent", "gradients", b"x" * 64)
            time.sleep(0.002)
        busy = time.monotonic() - started
        commits = fsyncs.count(ledger_fd)
        written = [h for h in heads if h >= started]
        assert commits > 20  # the group commit kept going ...
        assert len(written) <= busy / HEAD_INTERVAL_S + 2  # ... the head once a second
        last = ledger.next_seq - 1
        deadline = time.monotonic() + HEAD_INTERVAL_S + 2
        while _head_seq(tmp_path) != last and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _head_seq(tmp_path) == last  # quiet: the head caught up without sync()


def test_record_cost(tmp_path: Path, key: SigningPrivateKey) -> None:
    """Cost on the message's path: record (hash 4 KiB, sign, write) and submit (queue it);
    fsync is in the background either way."""
    payload = os.urandom(4096)
    n = 2000
    costs = {}
    for name in ("record", "submit"):
        with Ledger(tmp_path / name, key, PARTY) as ledger:
            write = getattr(ledger, name)
            for _ in range(50):
                write("platform", "sent", "embeddings", payload)
            started = time.perf_counter()
            for _ in range(n):
                write("platform", "sent", "embeddings", payload)
            costs[name] = (time.perf_counter() - started) / n
        assert len(read_ledger(tmp_path / name / LEDGER_FILE)) == n + 50
    print(", ".join(f"ledger {k}: {v * 1e6:.1f} us" for k, v in costs.items()), "per 4 KiB")
    assert costs["record"] < 500e-6  # measured ~50 us on a 2-core machine
    assert costs["submit"] < 100e-6  # measured ~4 us


# -------------------------------------------------------------------------------------------
# failing writes, odd strings, batches
# -------------------------------------------------------------------------------------------


def _full(fd: int, data: object) -> int:
    raise OSError(28, "No space left on device")


def test_a_failing_record_stops_the_message(tmp_path: Path, key: SigningPrivateKey) -> None:
    """Fail closed: if the line cannot be written, record raises (UNAVAILABLE), nothing of
    it stays in the file, and the ledger refuses entries until its probe works again."""
    with Ledger(tmp_path, key, PARTY, probe_interval_s=3600) as ledger:
        ledger.record("platform", "sent", "gradients", b"fine")
        size = (tmp_path / LEDGER_FILE).stat().st_size
        ledger._write_fd = _full
        with pytest.raises(LedgerError, match="No space left") as full:
            ledger.record("platform", "sent", "gradients", b"lost")
        assert ledger.failure is not None and "No space left" in ledger.failure
        del ledger._write_fd  # the disk has room again, but no probe is due yet
        with pytest.raises(LedgerError, match="failed earlier") as after:
            ledger.record("platform", "sent", "gradients", b"after")
        assert full.value.code is after.value.code is grpc.StatusCode.UNAVAILABLE
        assert (tmp_path / LEDGER_FILE).stat().st_size == size
    assert len(verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)) == 1


def test_a_partial_write_is_cut_back_and_the_ledger_recovers_on_the_next_record(
    tmp_path: Path, key: SigningPrivateKey
) -> None:
    """The disk takes half a batch, then is full: the half line is cut off the file, the
    refused message's entry is dropped, and once the probe works the chain goes on."""
    with Ledger(tmp_path, key, PARTY, probe_interval_s=0.01) as ledger:
        ledger.record("platform", "sent", "gradients", b"fine")
        size = (tmp_path / LEDGER_FILE).stat().st_size
        calls = []

        def half_then_full(fd: int, data: Any) -> int:
            calls.append(len(data))
            if len(calls) == 1:
                return os.write(fd, bytes(data[:40]))
            raise OSError(28, "No space left on device")

        ledger._write_fd = half_then_full
        with pytest.raises(LedgerError, match="No space left"):
            ledger.record("platform", "sent", "gradients", b"refused")
        assert (tmp_path / LEDGER_FILE).stat().st_size == size  # no torn line left
        time.sleep(0.02)
        with pytest.raises(LedgerError, match="failed earlier"):  # the probe fails too
            ledger.record("platform", "sent", "gradients", b"still full")
        seen: list[str | None] = []
        ledger.watch(seen.append)
        del ledger._write_fd
        time.sleep(0.02)
        after = ledger.record("platform", "sent", "gradients", b"after")
        assert after.seq == 1 and ledger.failure is None
        assert seen[0] is not None and seen[-1] is None
    entries = verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)
    assert [e.payload_sha256 for e in entries] == [
        hashlib.sha256(p).hexdigest() for p in (b"fine", b"after")]
    assert not (tmp_path / "ledger.probe").exists()


def test_submitted_entries_wait_out_a_full_disk_and_the_timer_probe_recovers(
    tmp_path: Path, key: SigningPrivateKey
) -> None:
    """Entries of messages already sent (submit) are kept while the disk is full and
    written first once it has room; the background thread's probe finds that out with no
    entry coming in, and tells the watchers."""
    seen: list[str | None] = []
    with Ledger(tmp_path, key, PARTY, drain_interval_s=0.001, probe_interval_s=0.05
                ) as ledger:
        ledger.watch(seen.append)
        ledger._write_fd = _full
        ledger.submit("platform", "sent", "gradients", b"left before the disk filled")
        deadline = time.monotonic() + 5
        while ledger.failure is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ledger.failure is not None
        with pytest.raises(LedgerError, match="failed earlier"):
            ledger.submit("platform", "sent", "gradients", b"refused")
        del ledger._write_fd
        while ledger.failure is not None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ledger.failure is None
        ledger.sync()
    assert seen[0] is None and seen[1] is not None and seen[-1] is None
    (entry,) = verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)
    assert entry.payload_sha256 == hashlib.sha256(b"left before the disk filled").hexdigest()


def test_a_failed_call_is_recorded_with_its_status(tmp_path: Path, key: SigningPrivateKey
                                                   ) -> None:
    """A failed entry names the sent message and the call's status; it verifies, and
    reads back as it was written; a status that is not a code name is refused."""
    digest = hashlib.sha256(b"q").hexdigest()
    with Ledger(tmp_path, key, PARTY) as ledger:
        sent = ledger.record_digest("platform", "sent", "embedding-query", digest, 1)
        failed = ledger.record_failed("platform", "embedding-query", digest, 1, "UNAVAILABLE")
        with pytest.raises(ValueError, match="status"):
            ledger.record_failed("platform", "embedding-query", digest, 1, "down, really")
    read = verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)
    assert read == [sent, failed]
    assert (failed.direction, failed.status, sent.status) == ("failed", "UNAVAILABLE", "")
    assert b'"status"' not in ledger_lines(tmp_path)[0]
    assert b'"status":"UNAVAILABLE"' in ledger_lines(tmp_path)[1]


def test_any_strings_are_encoded_canonically(tmp_path: Path, key: SigningPrivateKey) -> None:
    """Quotes, a lookalike of the last key, control characters and non-ASCII all survive."""
    odd = 'bank-1,"time":1}\n"ü\t\\'
    with Ledger(tmp_path, key, PARTY) as ledger:
        e = ledger.record(odd, "received", odd, b"x", purpose=odd)
    assert ledger_lines(tmp_path) == [entry_line(e) + b"\n"]
    (read,) = verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)
    assert read == e and read.peer == odd


def test_submitted_entries_are_hashed_signed_and_appended_in_order(
    tmp_path: Path, key: SigningPrivateKey
) -> None:
    clock = Clock()
    with Ledger(tmp_path, key, PARTY, clock=clock, drain_interval_s=0.001) as ledger:
        assert ledger.submit("platform", "received", "embeddings", b"e" * 5000, round=2) == 0
        first = ledger.record("platform", "sent", "gradients", b"g")  # signs seq 0 first
        assert first.seq == 1
        assert ledger.submit("platform", "received", "embeddings", b"later") == 2
        deadline = time.monotonic() + 5  # the background thread appends it by itself
        while len(ledger_lines(tmp_path)) < 3 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert len(ledger_lines(tmp_path)) == 3
        ledger.submit("platform", "received", "embeddings", b"last")
        ledger.sync()
        assert _head_seq(tmp_path) == 3
    entries = verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)
    assert [e.seq for e in entries] == [0, 1, 2, 3]
    assert entries[0].payload_sha256 == hashlib.sha256(b"e" * 5000).hexdigest()
    assert (entries[0].bytes, entries[0].round, entries[0].direction) == (5000, 2, "received")
    assert entries[1] == first and first.prev == entries[0].hash
    assert [e.time for e in entries] == sorted(e.time for e in entries)  # time of submit


def test_a_failed_background_write_refuses_what_follows(
    tmp_path: Path, key: SigningPrivateKey
) -> None:
    with Ledger(tmp_path, key, PARTY, drain_interval_s=0.001, probe_interval_s=3600
                ) as ledger:
        ledger.submit("platform", "sent", "gradients", b"fine")
        ledger.sync()

        def broken(fd: int, data: object) -> int:
            raise OSError(5, "Input/output error")

        ledger._write_fd = broken
        ledger.submit("platform", "sent", "gradients", b"kept")  # queued: it cannot know yet
        with pytest.raises(LedgerError, match="Input/output error"):
            ledger.sync()
        del ledger._write_fd
        with pytest.raises(LedgerError, match="failed earlier"):
            ledger.submit("platform", "sent", "gradients", b"refused")
        with pytest.raises(LedgerError, match="failed earlier"):
            ledger.record("platform", "sent", "gradients", b"refused")
    # close() tries once more: the message that left is on record, the refused ones not
    assert len(verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)) == 2


def test_close_never_hangs(tmp_path: Path, key: SigningPrivateKey) -> None:
    """close() racing the background thread's group commit must still stop it."""
    done = threading.Event()

    def churn() -> None:
        for i in range(20):  # close while the thread signs a batch, syncs, or waits
            with Ledger(tmp_path, key, PARTY, sync_interval_s=0.001,
                        drain_interval_s=0.0005) as ledger:
                for j in range(i * 20):
                    ledger.submit("platform", "sent", "gradients", b"%d" % j)
                time.sleep(0.001 * (i % 4))
                ledger.record("platform", "received", "embeddings", b"%d" % i)
        done.set()

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    worker.join(60)
    assert done.is_set(), "Ledger.close() hung"
    entries = verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)
    assert len(entries) == sum(i * 20 + 1 for i in range(20))


def _batched(folder: Path, key: SigningPrivateKey, batches: list[int]) -> None:
    """Entries submitted in the given batch sizes, each batch one write (sync drains it)."""
    with Ledger(folder, key, PARTY, drain_interval_s=60, sync_interval_s=60) as ledger:
        for n in batches:
            for i in range(n):
                ledger.submit("platform", "sent", "gradients", b"g%d" % i)
            ledger.sync()


def test_one_signature_per_write_covers_the_batch(tmp_path: Path, key: SigningPrivateKey
                                                  ) -> None:
    _batched(tmp_path, key, [3, 1, 4])
    signed = [bool(json.loads(line)["signature"]) for line in ledger_lines(tmp_path)]
    assert signed == [False, False, True, True, False, False, False, True]
    assert len(verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)) == 8


def test_flipping_any_byte_of_a_batched_ledger_is_detected(tmp_path: Path,
                                                           key: SigningPrivateKey) -> None:
    _batched(tmp_path, key, [3, 2])
    good = (tmp_path / LEDGER_FILE).read_bytes()
    for at in range(0, len(good), 7):  # every 7th byte: each field of each line, signed or not
        bad = bytearray(good)
        bad[at] ^= 0x01
        (tmp_path / LEDGER_FILE).write_bytes(bytes(bad))
        with pytest.raises(LedgerError):
            verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)


def test_entries_appended_after_the_last_signature_are_refused(tmp_path: Path,
                                                               key: SigningPrivateKey) -> None:
    """Someone without the key chains a well-formed entry to the end: nothing signs it."""
    _batched(tmp_path, key, [2])
    last = json.loads(ledger_lines(tmp_path)[-1])
    forged = dict(last, seq=last["seq"] + 1, signature="", bytes=1,
                  prev=hashlib.sha256(ledger_lines(tmp_path)[-1].rstrip(b"\n")).hexdigest())
    with (tmp_path / LEDGER_FILE).open("ab") as fh:
        fh.write(json.dumps(forged, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    message = problems_of(tmp_path, key)
    assert f"{LEDGER_FILE}:3 seq 2: 1 entry after the last signature" in message


def test_a_crash_mid_batch_resumes_from_the_last_signature(tmp_path: Path,
                                                           key: SigningPrivateKey) -> None:
    """The write of a batch was cut: its first lines are whole but unsigned, the rest torn,
    and the head is one group commit behind. Reopening continues the chain, and the next
    signature covers the orphaned lines."""
    _batched(tmp_path, key, [2])
    head = (tmp_path / HEAD_FILE).read_bytes()
    _batched(tmp_path, key, [4])
    data = (tmp_path / LEDGER_FILE).read_bytes()
    lines = data.split(b"\n")
    cut = sum(len(x) + 1 for x in lines[:4]) + 40  # 2 + 2 whole lines, then a torn one
    (tmp_path / LEDGER_FILE).write_bytes(data[:cut])
    (tmp_path / HEAD_FILE).write_bytes(head)
    with Ledger(tmp_path, key, PARTY) as ledger:
        assert ledger.next_seq == 4
        ledger.record("platform", "sent", "gradients", b"after the crash")
    entries = verify_chain(tmp_path / LEDGER_FILE, key.verify_key(), PARTY)
    assert [e.seq for e in entries] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("text", ["platform", "é\u2028\"\\\n</script>", "\ud800", "", "x" * 300])
@pytest.mark.parametrize("t", [1_750_000_000.125, 0.1 + 0.2, 1e22, 5e-324, 3.0])
def test_the_fast_entry_encoding_is_the_canonical_one(text: str, t: float) -> None:
    from fedscore.ledger.entry import _entry_line, canonical_json

    fields = {"seq": 7, "time": t, "party": text, "peer": text + "p", "direction": "sent",
              "kind": text, "rows": 0, "bytes": 2**40, "payload_sha256": "a" * 64,
              "round": 3, "purpose": text, "prev": "b" * 64}
    assert _entry_line(fields, None) == canonical_json(fields)
    for sig in ("", "c" * 128):
        assert _entry_line(fields, sig) == canonical_json({**fields, "signature": sig})
