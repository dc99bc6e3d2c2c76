"""Sealing checks that mutation testing (benchmarks/mutation.py) found no test for: each test
here fails when one of those checks is bent (a bound moved by one, a comparison turned)."""

from __future__ import annotations

import pytest

from fedscore.crypto.primitives import (
    CryptoError,
    Direction,
    Sealer,
    SealError,
    SealingPrivateKey,
    SessionKey,
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
