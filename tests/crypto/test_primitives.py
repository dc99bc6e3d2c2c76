"""Tests for fedscore.crypto.primitives: PSI blinding, node keys, sealing."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest

from fedscore.crypto.primitives import (
    POINT_SIZE,
    CertificateKey,
    CryptoError,
    Direction,
    Opener,
    PsiKey,
    SealedBox,
    Sealer,
    SealError,
    SealingPrivateKey,
    SealingPublicKey,
    SignatureError,
    SigningPrivateKey,
    VerifyKey,
    WindowOpener,
    derive_session_key,
    hash_ids_to_points,
    new_session_id,
)

# ------------------------------------------------------------------------------------------
# PSI
# ------------------------------------------------------------------------------------------

IDS = ["u-1", "u-2", "ünïcode-3", ""]


def test_hash_ids_is_deterministic_and_domain_separated() -> None:
    a = hash_ids_to_points(IDS, b"session-a")
    assert len(a) == len(IDS) * POINT_SIZE
    assert a == hash_ids_to_points(iter(IDS), b"session-a")
    b = hash_ids_to_points(IDS, b"session-b")
    for i in range(len(IDS)):
        assert a[i * 32 : (i + 1) * 32] != b[i * 32 : (i + 1) * 32]
    # Length-prefixed domain: shifting a byte between domain and id changes the hash.
    assert hash_ids_to_points(["bc"], b"a") != hash_ids_to_points(["c"], b"ab")
    assert hash_ids_to_points([], b"x") == b""


def test_hash_ids_rejects_non_str_ids() -> None:
    with pytest.raises(CryptoError, match="#1 must be str"):
        hash_ids_to_points(["ok", 5], b"d")  # type: ignore[list-item]


def test_blinding_commutes_and_is_deterministic() -> None:
    pts = hash_ids_to_points(IDS, b"d")
    a, b = PsiKey.generate(), PsiKey.generate()
    ab = b.blind(a.blind(pts))
    ba = a.blind(b.blind(pts))
    assert ab == ba
    assert len(ab) == len(pts)
    assert a.blind(pts) == a.blind(pts)
    # Order is preserved: blinding a permutation permutes the output the same way.
    first, second = pts[:32], pts[32:64]
    assert a.blind(second + first) == a.blind(pts)[32:64] + a.blind(pts)[:32]


def test_different_keys_give_different_points() -> None:
    pts = hash_ids_to_points(IDS, b"d")
    a, b = PsiKey.generate(), PsiKey.generate()
    ya, yb = a.blind(pts), b.blind(pts)
    for i in range(len(IDS)):
        assert ya[i * 32 : (i + 1) * 32] != yb[i * 32 : (i + 1) * 32]
        assert ya[i * 32 : (i + 1) * 32] != pts[i * 32 : (i + 1) * 32]


def test_intersection_found_only_on_common_ids() -> None:
    bank_ids, platform_ids = ["a", "b", "c"], ["b", "c", "d", "e"]
    kb, kp = PsiKey.generate(), PsiKey.generate()
    bank_double = kp.blind(kb.blind(hash_ids_to_points(bank_ids, b"s")))
    plat_double = kb.blind(kp.blind(hash_ids_to_points(platform_ids, b"s")))
    bank_set = {bank_double[i : i + 32] for i in range(0, len(bank_double), 32)}
    common = [
        platform_ids[j // 32]
        for j in range(0, len(plat_double), 32)
        if plat_double[j : j + 32] in bank_set
    ]
    assert common == ["b", "c"]


def test_blind_rejects_ragged_buffer() -> None:
    with pytest.raises(CryptoError, match="multiple of 32"):
        PsiKey.generate().blind(b"\x01" * 33)


def test_blind_rejects_low_order_point() -> None:
    good = hash_ids_to_points(["x"], b"d")
    with pytest.raises(CryptoError, match="#1 is a low-order point"):
        PsiKey.generate().blind(good + bytes(32))
    one = (1).to_bytes(32, "little")  # u = 1 has order 4
    with pytest.raises(CryptoError, match="low-order"):
        PsiKey.generate().blind(one)


def test_psi_key_is_never_serialised() -> None:
    key = PsiKey.generate()
    assert "secret" in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)


# ------------------------------------------------------------------------------------------
# Long-term keys
# ------------------------------------------------------------------------------------------


def test_sealing_key_pem_round_trip() -> None:
    key = SealingPrivateKey.generate()
    again = SealingPrivateKey.from_pem(key.to_pem(), source="sealing.key")
    assert again.public_key() == key.public_key()
    pub = SealingPublicKey.from_pem(key.public_key().to_pem())
    assert pub == key.public_key()
    assert SealingPublicKey.from_bytes(pub.public_bytes()) == pub
    assert len(key.public_bytes()) == 32
    assert "secret" in repr(key)


def test_signing_key_pem_round_trip_and_verify() -> None:
    key = SigningPrivateKey.generate()
    again = SigningPrivateKey.from_pem(key.to_pem())
    sig = again.sign(b"ledger entry")
    key.verify_key().verify(sig, b"ledger entry")
    vk = VerifyKey.from_bytes(key.public_bytes())
    vk.verify(sig, b"ledger entry")
    assert VerifyKey.from_pem(vk.to_pem()) == vk


def test_verify_raises_on_tamper() -> None:
    key = SigningPrivateKey.generate()
    sig = key.sign(b"data")
    vk = key.verify_key()
    with pytest.raises(SignatureError, match="does not verify"):
        vk.verify(sig, b"dat4")
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(SignatureError):
        vk.verify(bad, b"data")
    with pytest.raises(SignatureError, match="64 bytes"):
        vk.verify(sig[:10], b"data")
    with pytest.raises(SignatureError):
        SigningPrivateKey.generate().verify_key().verify(sig, b"data")
    assert issubclass(SignatureError, CryptoError)


def test_bad_pem_rejected_naming_the_source() -> None:
    with pytest.raises(CryptoError, match=r"kit/sealing\.key: not a readable"):
        SealingPrivateKey.from_pem(
            b"-----BEGIN PRIVATE KEY-----\ngarbage\n", source="kit/sealing.key"
        )
    with pytest.raises(CryptoError, match=r"bank/signing\.key: not a readable"):
        SigningPrivateKey.from_pem(b"not pem at all", source="bank/signing.key")
    with pytest.raises(CryptoError, match=r"pub\.pem: not a readable PEM public key"):
        VerifyKey.from_pem(b"nope", source="pub.pem")


def test_wrong_key_type_rejected() -> None:
    ed = SigningPrivateKey.generate().to_pem()
    x = SealingPrivateKey.generate().to_pem()
    with pytest.raises(
        CryptoError, match=r"sealing\.key: expected an X25519 private key, found an Ed25519"
    ):
        SealingPrivateKey.from_pem(ed, source="sealing.key")
    with pytest.raises(CryptoError, match="expected an Ed25519 private key, found an X25519"):
        SigningPrivateKey.from_pem(x, source="signing.key")
    with pytest.raises(CryptoError, match="expected a P-256 private key, found an X25519"):
        CertificateKey.from_pem(x, source="tls.key")
    with pytest.raises(CryptoError, match="expected an X25519 public key, found an Ed25519"):
        SealingPublicKey.from_pem(SigningPrivateKey.generate().verify_key().to_pem())


def test_raw_key_length_checked() -> None:
    with pytest.raises(CryptoError, match="manifest: X25519 public key must be 32 bytes, got 31"):
        SealingPublicKey.from_bytes(b"\x01" * 31, source="manifest")
    with pytest.raises(CryptoError, match="must be 32 bytes, got 33"):
        VerifyKey.from_bytes(b"\x01" * 33)


def test_key_from_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "signing.key"
    with pytest.raises(CryptoError, match=str(missing)):
        SigningPrivateKey.from_file(missing)
    good = SigningPrivateKey.generate()
    missing.write_bytes(good.to_pem())
    assert SigningPrivateKey.from_file(missing).verify_key() == good.verify_key()


# ------------------------------------------------------------------------------------------
# Sealing
# ------------------------------------------------------------------------------------------

B2P = Direction.BANK_TO_PLATFORM
P2B = Direction.PLATFORM_TO_BANK


@pytest.fixture
def pair() -> tuple[Sealer, Opener, bytes]:
    bank, platform = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    sid = new_session_id()
    k_bank = derive_session_key(bank, platform.public_key(), sid)
    k_plat = derive_session_key(platform, bank.public_key(), sid)
    return Sealer(k_bank, sid, B2P), Opener(k_plat, sid, B2P), sid


def test_direction_matches_proto() -> None:
    from fedscore.api.v1 import common_pb2

    assert int(B2P) == common_pb2.DIRECTION_BANK_TO_PLATFORM
    assert int(P2B) == common_pb2.DIRECTION_PLATFORM_TO_BANK


def test_seal_open_round_trip(pair: tuple[Sealer, Opener, bytes]) -> None:
    sealer, opener, sid = pair
    msgs = [b"embeddings-0", b"", b"x" * 100_000]
    boxes = [sealer.seal(m, round=3, batch=i) for i, m in enumerate(msgs)]
    assert [b.seq for b in boxes] == [0, 1, 2]
    assert all(b.session_id == sid and b.direction is B2P for b in boxes)
    assert b"embeddings" not in boxes[0].ciphertext
    assert len(boxes[0].ciphertext) == len(msgs[0]) + 16
    assert [opener.open(b, round=3) for b in boxes] == msgs
    assert opener.expected_seq == 3


def test_both_directions_share_key_but_not_nonces() -> None:
    a, b = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    sid = new_session_id()
    ka, kb = derive_session_key(a, b.public_key(), sid), derive_session_key(b, a.public_key(), sid)
    up, down = Sealer(ka, sid, B2P), Sealer(kb, sid, P2B)
    same = b"same plaintext"
    # Same key, same seq, same plaintext, different direction -> different nonce/ciphertext.
    assert (
        up.seal(same, round=0, batch=0).ciphertext != down.seal(same, round=0, batch=0).ciphertext
    )
    # A platform->bank box cannot be opened as bank->platform even with a forged direction.
    box = down.seal(b"grad", round=0, batch=1)
    forged = dataclasses.replace(box, direction=B2P)
    with pytest.raises(SealError):
        Opener(ka, sid, B2P).open(dataclasses.replace(forged, seq=0))


def test_tampered_ciphertext_rejected(pair: tuple[Sealer, Opener, bytes]) -> None:
    sealer, opener, _ = pair
    box = sealer.seal(b"payload", round=1, batch=1)
    ct = bytearray(box.ciphertext)
    ct[0] ^= 0x01
    with pytest.raises(SealError, match="failed authentication"):
        opener.open(dataclasses.replace(box, ciphertext=bytes(ct)))
    with pytest.raises(SealError, match="failed authentication"):
        opener.open(dataclasses.replace(box, ciphertext=box.ciphertext[:-1]))
    # A failed open does not advance the sequence: the genuine box still opens.
    assert opener.open(box) == b"payload"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("session_id", b"\x00" * 16, "for session"),
        ("round", 2, "failed authentication"),
        ("batch", 8, "failed authentication"),
        ("direction", P2B, "direction is PLATFORM_TO_BANK, expected BANK_TO_PLATFORM"),
        ("seq", 1, "reordered"),
    ],
)
def test_tampered_aad_field_rejected(
    pair: tuple[Sealer, Opener, bytes], field: str, value: Any, message: str
) -> None:
    sealer, opener, _ = pair
    box = sealer.seal(b"payload", round=1, batch=7)
    with pytest.raises(SealError, match=message):
        opener.open(dataclasses.replace(box, **{field: value}))
    assert opener.open(box) == b"payload"


def test_replayed_box_rejected(pair: tuple[Sealer, Opener, bytes]) -> None:
    sealer, opener, _ = pair
    box = sealer.seal(b"a", round=1, batch=0)
    opener.open(box)
    with pytest.raises(SealError, match="seq 0 replayed; expected seq 1"):
        opener.open(box)


def test_reordered_boxes_rejected(pair: tuple[Sealer, Opener, bytes]) -> None:
    sealer, opener, _ = pair
    first, second = sealer.seal(b"1", round=1, batch=0), sealer.seal(b"2", round=1, batch=1)
    with pytest.raises(SealError, match="seq 1 reordered"):
        opener.open(second)
    assert opener.open(first) == b"1"
    assert opener.open(second) == b"2"


def test_expected_round_and_batch_enforced(pair: tuple[Sealer, Opener, bytes]) -> None:
    sealer, opener, _ = pair
    box = sealer.seal(b"a", round=4, batch=9)
    with pytest.raises(SealError, match="round 4, expected round 5"):
        opener.open(box, round=5)
    with pytest.raises(SealError, match="batch 9, expected batch 1"):
        opener.open(box, batch=1)
    assert opener.open(box, round=4, batch=9) == b"a"


def test_wrong_direction_opener_rejected(pair: tuple[Sealer, Opener, bytes]) -> None:
    sealer, _, sid = pair
    box = sealer.seal(b"a", round=0, batch=0)
    other_key = derive_session_key(
        SealingPrivateKey.generate(), SealingPrivateKey.generate().public_key(), sid
    )
    with pytest.raises(SealError, match="direction"):
        Opener(other_key, sid, P2B).open(box)


def test_wrong_session_rejected() -> None:
    a, b = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    s1, s2 = new_session_id(), new_session_id()
    box = Sealer(derive_session_key(a, b.public_key(), s1), s1, B2P).seal(b"x", round=0, batch=0)
    k2 = derive_session_key(b, a.public_key(), s2)
    with pytest.raises(SealError, match="this opener is for session"):
        Opener(k2, s2, B2P).open(box)
    # Even with the session id rewritten, the other session's key does not open it.
    with pytest.raises(SealError, match="failed authentication"):
        Opener(k2, s2, B2P).open(dataclasses.replace(box, session_id=s2))


def test_session_keys_agree_and_differ_per_session() -> None:
    a, b = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    s1, s2 = new_session_id(), new_session_id()
    box = Sealer(derive_session_key(a, b.public_key(), s1), s1, P2B).seal(b"m", round=0, batch=0)
    assert Opener(derive_session_key(b, a.public_key(), s1), s1, P2B).open(box) == b"m"
    k_other = derive_session_key(b, a.public_key(), s2)
    with pytest.raises(SealError):
        Opener(k_other, s1, P2B).open(box)
    with pytest.raises(TypeError):
        pickle.dumps(k_other)


def test_round_keys_agree_and_separate_rounds() -> None:
    a, b = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    sid = new_session_id()
    ka, kb = derive_session_key(a, b.public_key(), sid), derive_session_key(b, a.public_key(), sid)
    # Both ends derive the same round key; seq restarts at 0 in each round.
    box1 = Sealer(ka.for_round(1), sid, B2P).seal(b"same", round=1, batch=0)
    box2 = Sealer(ka.for_round(2), sid, B2P).seal(b"same", round=1, batch=0)
    assert box1.seq == box2.seq == 0
    assert box1.ciphertext != box2.ciphertext  # same nonce, different key
    assert Opener(kb.for_round(1), sid, B2P).open(box1) == b"same"
    with pytest.raises(SealError, match="failed authentication"):
        Opener(kb.for_round(1), sid, B2P).open(box2)
    with pytest.raises(SealError, match="failed authentication"):
        Opener(kb, sid, B2P).open(box1)
    with pytest.raises(CryptoError, match="uint32"):
        ka.for_round(-1)


def test_low_order_peer_key_rejected() -> None:
    low = SealingPublicKey.from_bytes(bytes(32))
    with pytest.raises(CryptoError, match="all zeros"):
        derive_session_key(SealingPrivateKey.generate(), low, new_session_id())


def test_session_id_and_fields_validated() -> None:
    k = derive_session_key(
        SealingPrivateKey.generate(), SealingPrivateKey.generate().public_key(), new_session_id()
    )
    with pytest.raises(CryptoError, match=r"session_id must be 16\.\.64 bytes"):
        Sealer(k, b"short", B2P)
    with pytest.raises(CryptoError, match="direction must be 1 or 2"):
        Sealer(k, new_session_id(), 0)  # type: ignore[arg-type]
    s = Sealer(k, new_session_id(), B2P)
    with pytest.raises(SealError, match="round must fit uint32"):
        s.seal(b"", round=-1, batch=0)
    with pytest.raises(SealError, match="batch must fit uint64"):
        s.seal(b"", round=0, batch=1 << 64)
    assert isinstance(s.seal(b"", round=0, batch=0), SealedBox)


# ------------------------------------------------------------------------------------------
# out-of-order sealing for concurrent scoring calls
# ------------------------------------------------------------------------------------------


def _scoring_pair(window: int = 8) -> tuple[Sealer, WindowOpener]:
    bank, platform = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    sid = new_session_id()
    k_bank = derive_session_key(bank, platform.public_key(), sid).for_scoring()
    k_plat = derive_session_key(platform, bank.public_key(), sid).for_scoring()
    return Sealer(k_bank, sid, B2P), WindowOpener(k_plat, sid, B2P, window=window)


def test_window_opener_takes_any_order_but_each_seq_once() -> None:
    sealer, opener = _scoring_pair()
    boxes = [sealer.seal(f"q{i}".encode(), round=0, batch=i) for i in range(6)]
    for i in (3, 0, 5, 1, 4, 2):
        assert opener.open(boxes[i], round=0, batch=i) == f"q{i}".encode()
    with pytest.raises(SealError, match="seq 4 replayed"):
        opener.open(boxes[4], round=0)
    with pytest.raises(SealError, match="expected batch 9"):
        opener.open(sealer.seal(b"r", round=0, batch=6), round=0, batch=9)


def test_window_opener_refuses_what_fell_out_of_the_window() -> None:
    sealer, opener = _scoring_pair(window=8)
    boxes = [sealer.seal(b"x", round=0, batch=i) for i in range(20)]
    opener.open(boxes[19], round=0)
    with pytest.raises(SealError, match="older than the replay window"):
        opener.open(boxes[11], round=0)
    assert opener.open(boxes[12], round=0) == b"x"


def test_a_forged_box_does_not_use_up_its_seq() -> None:
    sealer, opener = _scoring_pair()
    box = sealer.seal(b"embedding", round=0, batch=0)
    forged = dataclasses.replace(box, ciphertext=bytes([box.ciphertext[0] ^ 1])
                                 + box.ciphertext[1:])
    with pytest.raises(SealError, match="failed authentication"):
        opener.open(forged, round=0)
    assert opener.open(box, round=0) == b"embedding"


def test_scoring_key_differs_from_every_round_key() -> None:
    bank, platform = SealingPrivateKey.generate(), SealingPrivateKey.generate()
    sid = new_session_id()
    key = derive_session_key(bank, platform.public_key(), sid)
    box = Sealer(key.for_scoring(), sid, B2P).seal(b"m", round=0, batch=0)
    for k in (key, key.for_round(0), key.for_round(1)):
        with pytest.raises(SealError, match="failed authentication"):
            WindowOpener(k, sid, B2P).open(box, round=0)


def test_concurrent_sealing_never_reuses_a_seq() -> None:
    from concurrent.futures import ThreadPoolExecutor

    sealer, opener = _scoring_pair(window=10_000)
    with ThreadPoolExecutor(8) as pool:
        boxes = list(pool.map(lambda i: sealer.seal(b"p", round=0, batch=i), range(4000)))
    assert sorted(b.seq for b in boxes) == list(range(4000))
    for b in reversed(boxes):
        opener.open(b, round=0)
