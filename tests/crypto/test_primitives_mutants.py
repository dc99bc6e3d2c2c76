"""Sealing checks that mutation testing (benchmarks/mutation.py) found no test for: each test
here fails when one of those checks is bent (a bound moved by one, a comparison turned)."""

from __future__ import annotations

import pytest

from fedscore.crypto.primitives import (
    CryptoError,
    Direction,
    Opener,
    SealedBox,
    Sealer,
    SealError,
    SealingPrivateKey,
    SessionKey,
    SignatureError,
    SigningPrivateKey,
    WindowOpener,
    derive_session_key,
    new_session_id,
)

B2P = Direction.BANK_TO_PLATFORM
U64 = 2**64 - 1


def _scoring_pair(window: int) -> tuple[Sealer, WindowOpener]:
    bank, platform = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    sid = new_session_id()
    k_bank = derive_session_key(bank, platform.public_key(), sid).for_scoring()
    k_plat = derive_session_key(platform, bank.public_key(), sid).for_scoring()
    return Sealer(k_bank, sid, B2P), WindowOpener(k_plat, sid, B2P, window=window)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_session_key_is_exactly_32_bytes(size: int) -> None:
    # 16 and 24 bytes would make a valid (weaker) AES key, 33 would reach AESGCM's own
    # ValueError: the session key refuses every size but 32 itself, as a CryptoError.
    with pytest.raises(CryptoError, match=f"session key must be 32 bytes, got {size}"):
        SessionKey(b"k" * size)
    assert SessionKey(b"k" * 32).for_round(1) is not None


def test_the_last_seq_of_the_space_still_opens_in_the_window() -> None:
    sealer, opener = _scoring_pair(window=8)
    sealer._seq = U64  # the counter's last value: a legitimate, if unlikely, box
    box = sealer.seal(b"last", round=0, batch=U64)
    assert box.seq == U64
    assert opener.open(box, round=0, batch=U64) == b"last"
    with pytest.raises(SealError, match=f"seq {U64} replayed"):
        opener.open(box, round=0)


def test_pruning_the_seen_set_keeps_every_seq_still_inside_the_window() -> None:
    # The opener forgets seqs that fell out of the window once it holds more than twice
    # the window; a seq still inside the window must stay refused as a replay after that.
    window = 4
    sealer, opener = _scoring_pair(window=window)
    boxes = [sealer.seal(b"q", round=0, batch=i) for i in range(3 * window)]
    for box in boxes:
        opener.open(box, round=0)
    for box in boxes[-window:]:
        with pytest.raises(SealError, match="replayed"):
            opener.open(box, round=0)
    for box in boxes[: len(boxes) - window]:
        with pytest.raises(SealError, match=r"older than the replay window|replayed"):
            opener.open(box, round=0)


@pytest.mark.parametrize("size", [16, 17, 32, 63, 64])
def test_every_session_id_length_in_the_range_seals(size: int) -> None:
    # Not only the 16 bytes of new_session_id(): a comparison by identity with the bound
    # (true for 16 alone, a cached small int) would refuse the rest.
    bank, platform = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    sid = bytes(range(size))
    sealer = Sealer(derive_session_key(bank, platform.public_key(), sid), sid, B2P)
    opener = Opener(derive_session_key(platform, bank.public_key(), sid), sid, B2P)
    assert opener.open(sealer.seal(b"x", round=1, batch=2), round=1) == b"x"


@pytest.mark.parametrize("size", [0, 15, 65])
def test_a_session_id_outside_the_range_is_refused(size: int) -> None:
    key = SessionKey(b"k" * 32)
    with pytest.raises(CryptoError, match=f"session_id must be 16..64 bytes.*got {size}"):
        Sealer(key, b"s" * size, B2P)


def test_an_opener_takes_seqs_past_the_cached_small_ints_in_order() -> None:
    # CPython keeps one object per int up to 256: a seq compared by identity would pass
    # the first 257 boxes and refuse every later one, however genuine.
    bank, platform = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    sid = new_session_id()
    sealer = Sealer(derive_session_key(bank, platform.public_key(), sid), sid, B2P)
    opener = Opener(derive_session_key(platform, bank.public_key(), sid), sid, B2P)
    for i in range(300):
        box = sealer.seal(b"step", round=3, batch=i)
        assert opener.open(box, round=3, batch=i) == b"step"
    assert opener.expected_seq == 300


def test_boxes_from_the_wire_open_with_large_rounds_and_batches() -> None:
    # What arrives from the wire is a new object for every field: an equal session id, round
    # or batch compared by identity instead of value would refuse every genuine box (past
    # CPython's cached small ints), so these go through serde as a peer's boxes do.
    from fedscore.wire import serde

    bank, platform = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    sid = new_session_id()
    key_b = derive_session_key(bank, platform.public_key(), sid)
    key_p = derive_session_key(platform, bank.public_key(), bytes(bytearray(sid)))
    round_, batch = 70_000, 2**40

    def wire(box: SealedBox) -> SealedBox:
        return serde.sealed_from_pb(serde.sealed_to_pb(box))

    sealer = Sealer(key_b, sid, B2P)
    opener = Opener(key_p, bytes(bytearray(sid)), B2P)
    box = wire(sealer.seal(b"fwd", round=round_, batch=batch))
    assert opener.open(box, round=int(str(round_)), batch=int(str(batch))) == b"fwd"

    scoring = Sealer(key_b.for_scoring(), sid, B2P)
    window = WindowOpener(key_p.for_scoring(), bytes(bytearray(sid)), B2P)
    box = wire(scoring.seal(b"q", round=round_, batch=batch))
    assert window.open(box, round=int(str(round_)), batch=int(str(batch))) == b"q"


def _openers(sid: bytes, direction: Direction) -> tuple[Sealer, Opener, WindowOpener]:
    bank, platform = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    key_b = derive_session_key(bank, platform.public_key(), sid)
    key_p = derive_session_key(platform, bank.public_key(), sid)
    return (Sealer(key_b, sid, direction), Opener(key_p, sid, direction),
            WindowOpener(key_p, sid, direction))


@pytest.mark.parametrize("other", [b"\x00" * 16, b"\xff" * 16])
def test_a_box_of_another_session_is_refused_by_its_header(other: bytes) -> None:
    # The tag would refuse it too; the header check must refuse it first, whichever of
    # the two session ids is the larger (a check turned into < or > passes one of them).
    sealer, _, _ = _openers(other, B2P)
    box = sealer.seal(b"x", round=0, batch=0)
    _, opener, window = _openers(b"\x80" * 16, B2P)
    with pytest.raises(SealError, match="is for session"):
        opener.open(box)
    with pytest.raises(SealError, match="is for session"):
        window.open(box, round=0)


@pytest.mark.parametrize(("sent", "expected"), [(Direction.BANK_TO_PLATFORM,
                                                  Direction.PLATFORM_TO_BANK),
                                                 (Direction.PLATFORM_TO_BANK,
                                                  Direction.BANK_TO_PLATFORM)])
def test_a_box_of_the_other_direction_is_refused_by_its_header(
    sent: Direction, expected: Direction
) -> None:
    sid = new_session_id()
    sealer, _, _ = _openers(sid, sent)
    box = sealer.seal(b"x", round=0, batch=0)
    _, opener, window = _openers(sid, expected)
    with pytest.raises(SealError, match=f"direction is {sent.name}, expected {expected.name}"):
        opener.open(box)
    with pytest.raises(SealError, match=f"direction is {sent.name}, expected {expected.name}"):
        window.open(box, round=0)


@pytest.mark.parametrize("wanted", [4, 6])
def test_a_box_for_another_round_or_batch_is_refused_either_way(wanted: int) -> None:
    sid = new_session_id()
    sealer, opener, window = _openers(sid, B2P)
    box = sealer.seal(b"x", round=5, batch=5)
    for op in (lambda: opener.open(box, round=wanted), lambda: window.open(box, round=wanted)):
        with pytest.raises(SealError, match=f"is for round 5, expected round {wanted}"):
            op()
    for op in (lambda: opener.open(box, round=5, batch=wanted),
               lambda: window.open(box, round=5, batch=wanted)):
        with pytest.raises(SealError, match=f"is for batch 5, expected batch {wanted}"):
            op()
    assert opener.open(box, round=5, batch=5) == b"x"
    assert window.open(box, round=5, batch=5) == b"x"


def test_a_box_ahead_of_its_turn_is_refused_as_reordered() -> None:
    sealer, opener, _ = _openers(new_session_id(), B2P)
    first, second = (sealer.seal(b"x", round=0, batch=i) for i in range(2))
    with pytest.raises(SealError, match="seq 1 reordered"):
        opener.open(second)
    assert opener.open(first) == b"x"
    assert opener.open(second) == b"x"
    with pytest.raises(SealError, match="seq 0 replayed"):
        opener.open(first)


@pytest.mark.parametrize("size", [0, 63, 65, 128])
def test_a_signature_of_any_length_but_64_is_refused_as_such(size: int) -> None:
    # Ed25519 would refuse it too; the length check must refuse it first, on both sides.
    key = SigningPrivateKey.generate()
    with pytest.raises(SignatureError, match=f"must be 64 bytes, got {size}"):
        key.verify_key().verify(b"s" * size, b"data")
    key.verify_key().verify(key.sign(b"data"), b"data")
