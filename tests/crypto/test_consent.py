"""Tests for fedscore.crypto.consent: issuing, encoding and verifying consent tokens."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import struct

import pytest

from fedscore.crypto.consent import (
    MAGIC,
    MAX_TTL_S,
    ConsentError,
    ConsentRefusal,
    ConsentToken,
    applicant_digest,
    issue_consent,
    verify_consent,
)
from fedscore.crypto.primitives import SigningPrivateKey, VerifyKey

T0 = 1_700_000_000
TTL = 600
APPLICANT = "applicant-7f3a9c2e-Ünïcode"
OTHER_APPLICANT = "applicant-0b1d44aa"


class Clock:
    """An injectable clock the test can move."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def key() -> SigningPrivateKey:
    return SigningPrivateKey.generate()


@pytest.fixture(scope="module")
def vk(key: SigningPrivateKey) -> VerifyKey:
    return key.verify_key()


def _issue(key: SigningPrivateKey, **kw: object) -> ConsentToken:
    args: dict[str, object] = {
        "issuer": "platform",
        "bank": "bank-1",
        "applicant_id": APPLICANT,
        "ttl_s": TTL,
        "now": Clock(T0 + 0.75),
    }
    args.update(kw)
    return issue_consent(key, **args)  # type: ignore[arg-type]


def _verify(token: ConsentToken | str, vk: VerifyKey, **kw: object) -> ConsentToken:
    args: dict[str, object] = {
        "bank": "bank-1",
        "applicant_id": APPLICANT,
        "now": Clock(T0 + 60),
    }
    args.update(kw)
    return verify_consent(token, vk, **args)  # type: ignore[arg-type]


def _refusal(token: ConsentToken | str, vk: VerifyKey, **kw: object) -> ConsentError:
    with pytest.raises(ConsentError) as info:
        _verify(token, vk, **kw)
    return info.value


def _raw(token: ConsentToken) -> bytes:
    text = token.encode()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _enc(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------------------------
# Valid tokens
# --------------------------------------------------------------------------------------------


def test_valid_token_verifies_and_has_expected_fields(
    key: SigningPrivateKey, vk: VerifyKey
) -> None:
    token = _issue(key)
    assert token.issuer == "platform"
    assert token.bank == "bank-1"
    assert token.issued_at == T0
    assert token.expires_at == T0 + TTL
    assert len(token.token_id) == 32
    int(token.token_id, 16)
    assert len(token.applicant_digest) == 32
    assert len(token.signature) == 64
    assert _verify(token, vk) == token
    assert _verify(token, vk, issuer="platform") == token


def test_encode_decode_round_trip(key: SigningPrivateKey, vk: VerifyKey) -> None:
    token = _issue(key)
    text = token.encode()
    assert isinstance(text, str)
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert ConsentToken.decode(text) == token
    assert ConsentToken.decode(text).encode() == text
    assert _verify(text, vk) == token


def test_canonical_bytes_layout(key: SigningPrivateKey) -> None:
    token = _issue(key)
    expected = b"".join(
        (
            b"fedscore-consent-v1\x00",
            bytes.fromhex(token.token_id),
            b"\x08platform",
            b"\x06bank-1",
            token.applicant_digest,
            struct.pack(">QQ", T0, T0 + TTL),
        )
    )
    assert token.signed_bytes() == expected
    assert _raw(token) == expected + token.signature
    key.verify_key().verify(token.signature, expected)


def test_token_ids_are_random_and_digests_unlinkable(key: SigningPrivateKey) -> None:
    a, b = _issue(key), _issue(key)
    assert a.token_id != b.token_id
    # Same applicant, same bank: still different digests, so tokens cannot be linked.
    assert a.applicant_digest != b.applicant_digest


def test_applicant_digest_is_domain_separated(key: SigningPrivateKey) -> None:
    token = _issue(key)
    raw_id = APPLICANT.encode("utf-8")
    assert token.applicant_digest == applicant_digest(
        APPLICANT, token_id=token.token_id, bank="bank-1"
    )
    assert token.applicant_digest != hashlib.sha256(raw_id).digest()
    assert token.applicant_digest != applicant_digest(
        APPLICANT, token_id=token.token_id, bank="bank-2"
    )


# --------------------------------------------------------------------------------------------
# Time window
# --------------------------------------------------------------------------------------------


def test_expired_with_leeway(key: SigningPrivateKey, vk: VerifyKey) -> None:
    token = _issue(key)
    _verify(token, vk, now=Clock(T0 + TTL + 4.9))  # inside the default 5 s leeway
    err = _refusal(token, vk, now=Clock(T0 + TTL + 5))
    assert err.reason is ConsentRefusal.EXPIRED
    assert err.token_id == token.token_id
    assert "expired" in str(err)
    err = _refusal(token, vk, now=Clock(T0 + TTL + 3600))
    assert err.reason is ConsentRefusal.EXPIRED
    err = _refusal(token, vk, now=Clock(T0 + TTL), leeway_s=0)
    assert err.reason is ConsentRefusal.EXPIRED


def test_not_yet_valid_with_leeway(key: SigningPrivateKey, vk: VerifyKey) -> None:
    token = _issue(key)
    _verify(token, vk, now=Clock(T0 - 5))  # clock skew inside the leeway
    err = _refusal(token, vk, now=Clock(T0 - 5.5))
    assert err.reason is ConsentRefusal.NOT_YET_VALID
    err = _refusal(token, vk, now=Clock(T0 - 1), leeway_s=0)
    assert err.reason is ConsentRefusal.NOT_YET_VALID
    _verify(token, vk, now=Clock(T0 - 100), leeway_s=100)


def test_leeway_is_bounded(key: SigningPrivateKey, vk: VerifyKey) -> None:
    token = _issue(key)
    for bad in (-1, 301, 10**9, 1.5, True):
        with pytest.raises(ValueError, match="leeway_s"):
            _verify(token, vk, leeway_s=bad)


# --------------------------------------------------------------------------------------------
# Wrong bank, wrong applicant, forged
# --------------------------------------------------------------------------------------------


def test_wrong_bank(key: SigningPrivateKey, vk: VerifyKey) -> None:
    token = _issue(key)
    err = _refusal(token, vk, bank="bank-2")
    assert err.reason is ConsentRefusal.WRONG_BANK
    assert "bank-1" in str(err) and "bank-2" in str(err)


def test_wrong_applicant(key: SigningPrivateKey, vk: VerifyKey) -> None:
    token = _issue(key)
    for other in (OTHER_APPLICANT, APPLICANT + " ", APPLICANT.upper(), ""):
        err = _refusal(token, vk, applicant_id=other)
        assert err.reason is ConsentRefusal.WRONG_APPLICANT
        message = str(err) + repr(err) + repr(err.args)
        assert APPLICANT not in message
        assert other == "" or other not in message
        assert token.applicant_ref in message


def test_signed_by_another_key_is_forged(key: SigningPrivateKey, vk: VerifyKey) -> None:
    rogue = SigningPrivateKey.generate()
    token = _issue(rogue)
    err = _refusal(token, vk)
    assert err.reason is ConsentRefusal.FORGED
    err = _refusal(token.encode(), vk)
    assert err.reason is ConsentRefusal.FORGED
    assert _verify(token, rogue.verify_key()) == token  # the token itself is well formed


def test_unexpected_issuer_is_forged(key: SigningPrivateKey, vk: VerifyKey) -> None:
    token = _issue(key, issuer="platform-2")
    err = _refusal(token, vk, issuer="platform")
    assert err.reason is ConsentRefusal.FORGED


@pytest.mark.parametrize(
    "change",
    [
        {"bank": "bank-2"},
        {"issuer": "platform-x"},
        {"expires_at": T0 + TTL + 1},
        {"issued_at": T0 - 1},
        {"token_id": "00" * 16},
        {"applicant_digest": b"\x00" * 32},
    ],
)
def test_altered_fields_are_forged(
    key: SigningPrivateKey, vk: VerifyKey, change: dict[str, object]
) -> None:
    token = dataclasses.replace(_issue(key), **change)  # type: ignore[arg-type]
    # Even when the alteration matches the request, the signature check comes first.
    kw: dict[str, object] = {"bank": token.bank}
    err = _refusal(token, vk, **kw)
    assert err.reason is ConsentRefusal.FORGED
    err = _refusal(token.encode(), vk, **kw)
    assert err.reason is ConsentRefusal.FORGED


def test_signature_checked_before_everything_else(key: SigningPrivateKey, vk: VerifyKey) -> None:
    rogue = SigningPrivateKey.generate()
    token = _issue(rogue)
    err = _refusal(token, vk, bank="bank-3", applicant_id=OTHER_APPLICANT, now=Clock(T0 + 10 * TTL))
    assert err.reason is ConsentRefusal.FORGED


def test_bank_checked_before_applicant_and_time(key: SigningPrivateKey, vk: VerifyKey) -> None:
    token = _issue(key)
    err = _refusal(token, vk, bank="bank-2", applicant_id=OTHER_APPLICANT, now=Clock(0))
    assert err.reason is ConsentRefusal.WRONG_BANK
    err = _refusal(token, vk, applicant_id=OTHER_APPLICANT, now=Clock(0))
    assert err.reason is ConsentRefusal.WRONG_APPLICANT


def test_every_flipped_byte_is_refused(key: SigningPrivateKey, vk: VerifyKey) -> None:
    token = _issue(key)
    raw = _raw(token)
    assert len(raw) == len(token.signed_bytes()) + 64
    assert _verify(_enc(raw), vk) == token
    for i in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(raw)
            tampered[i] ^= mask
            err = _refusal(_enc(bytes(tampered)), vk)
            assert err.reason in (ConsentRefusal.FORGED, ConsentRefusal.MALFORMED), (i, mask)
    # Signature bytes are structurally free, so a flip there must be caught as FORGED.
    payload_len = len(token.signed_bytes())
    for i in range(payload_len, len(raw)):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        assert _refusal(_enc(bytes(tampered)), vk).reason is ConsentRefusal.FORGED, i


def test_every_changed_character_is_refused(key: SigningPrivateKey, vk: VerifyKey) -> None:
    text = _issue(key).encode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, c in enumerate(text):
        # Neighbouring symbols change only the low bits: this includes the final character,
        # whose lowest bits are unused padding and must still not be accepted.
        j = alphabet.index(c)
        for replacement in (alphabet[j ^ 1], alphabet[j ^ 2], alphabet[(j + 32) % 64], "="):
            tampered = text[:i] + replacement + text[i + 1 :]
            err = _refusal(tampered, vk)
            assert err.reason in (ConsentRefusal.FORGED, ConsentRefusal.MALFORMED), (i, c)


# --------------------------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        " ",
        "not a token",
        "!!!!",
        "abc",
        "A",
        "AAAA",
        "a" * 10_000,
        "ZmVkc2NvcmU",  # base64url of b"fedscore"
        _enc(b"\x00" * 200),
        _enc(MAGIC),
        _enc(MAGIC + b"\x00" * 200),
    ],
)
def test_garbage_is_malformed(vk: VerifyKey, garbage: str) -> None:
    err = _refusal(garbage, vk)
    assert err.reason is ConsentRefusal.MALFORMED
    with pytest.raises(ConsentError) as info:
        ConsentToken.decode(garbage)
    assert info.value.reason is ConsentRefusal.MALFORMED


@pytest.mark.parametrize("garbage", [None, b"bytes-token", 42, ["x"]])
def test_non_string_input_is_malformed(vk: VerifyKey, garbage: object) -> None:
    with pytest.raises(ConsentError) as info:
        ConsentToken.decode(garbage)  # type: ignore[arg-type]
    assert info.value.reason is ConsentRefusal.MALFORMED
    err = _refusal(garbage, vk)  # type: ignore[arg-type]
    assert err.reason is ConsentRefusal.MALFORMED


def test_padding_whitespace_and_std_alphabet_are_malformed(
    key: SigningPrivateKey, vk: VerifyKey
) -> None:
    token = _issue(key)
    raw = _raw(token)
    text = token.encode()
    variants = [
        base64.urlsafe_b64encode(raw).decode("ascii") + "=",  # padded (and over-padded)
        text + "\n",
        " " + text,
        text[:50] + "." + text[50:],
        text[:50] + "\n" + text[50:],
    ]
    std = base64.b64encode(raw).decode("ascii").rstrip("=")
    if std != text:  # contains '+' or '/' instead of '-' or '_'
        variants.append(std)
    for variant in variants:
        err = _refusal(variant, vk)
        assert err.reason is ConsentRefusal.MALFORMED, variant
        assert "not unpadded base64url" in str(err), variant


def test_wrong_version_is_malformed(key: SigningPrivateKey, vk: VerifyKey) -> None:
    raw = _raw(_issue(key))
    v2 = b"fedscore-consent-v2\x00" + raw[len(MAGIC) :]
    err = _refusal(_enc(v2), vk)
    assert err.reason is ConsentRefusal.MALFORMED
    assert "unsupported consent token version '2'" in str(err)


def test_wrong_length_is_malformed(key: SigningPrivateKey, vk: VerifyKey) -> None:
    raw = _raw(_issue(key))
    for cut in (1, 2, 63, 64, 65, len(raw) - len(MAGIC) - 1):
        err = _refusal(_enc(raw[:-cut]), vk)
        assert err.reason is ConsentRefusal.MALFORMED, cut
    for extra in (b"\x00", b"\x00" * 64):
        err = _refusal(_enc(raw + extra), vk)
        assert err.reason is ConsentRefusal.MALFORMED
        assert "expected" in str(err)


def test_non_canonical_base64_is_malformed(key: SigningPrivateKey, vk: VerifyKey) -> None:
    text = _issue(key).encode()
    assert len(text) % 4 in (2, 3), "test needs a token whose last char has unused bits"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    j = alphabet.index(text[-1])
    same_bytes = text[:-1] + alphabet[j ^ 1]  # flips only an unused trailing bit
    decoded = base64.urlsafe_b64decode(same_bytes + "=" * (-len(same_bytes) % 4))
    assert _enc(decoded) == text  # a lenient decoder would accept it as the same token
    err = _refusal(same_bytes, vk)
    assert err.reason is ConsentRefusal.MALFORMED
    assert "canonical" in str(err)


def test_constructor_validates_fields(key: SigningPrivateKey) -> None:
    token = _issue(key)
    bad: list[dict[str, object]] = [
        {"token_id": "xyz"},
        {"token_id": "AB" * 16},
        {"bank": ""},
        {"bank": "Bank 1"},
        {"bank": "b" * 64},
        {"issuer": 7},
        {"applicant_digest": b"\x00" * 31},
        {"applicant_digest": "00" * 32},
        {"issued_at": -1},
        {"issued_at": float(T0)},
        {"expires_at": T0},
        {"expires_at": T0 + MAX_TTL_S + 1},
        {"signature": b"\x00" * 63},
    ]
    for change in bad:
        with pytest.raises(ConsentError) as info:
            dataclasses.replace(token, **change)  # type: ignore[arg-type]
        assert info.value.reason is ConsentRefusal.MALFORMED, change


# --------------------------------------------------------------------------------------------
# Privacy: the token never carries the applicant id
# --------------------------------------------------------------------------------------------


def _b64_cores(data: bytes) -> set[str]:
    """Substrings that any base64 encoding of ``data`` must contain, at all 3 alignments."""
    cores: set[str] = set()
    for k in range(3):
        bits_before, bits_end = 8 * k, 8 * (k + len(data))
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\x00" * k + data + b"\x00\x00").decode("ascii")
            cores.add(text[-(-bits_before // 6) : bits_end // 6])
    return cores


def test_b64_cores_find_embedded_ids() -> None:
    # The privacy check below is only meaningful if it would catch a leaked id.
    raw_id = APPLICANT.encode("utf-8")
    for k in range(3):
        for tail in (b"", b"x", b"xy"):
            text = base64.urlsafe_b64encode(b"Q" * k + raw_id + tail).decode().rstrip("=")
            assert any(core in text for core in _b64_cores(raw_id)), (k, tail)


def test_encoded_token_does_not_contain_applicant_id(key: SigningPrivateKey) -> None:
    for applicant in (APPLICANT, "12345678901", "alice@example.com"):
        token = _issue(key, applicant_id=applicant)
        text = token.encode()
        raw = _raw(token)
        raw_id = applicant.encode("utf-8")
        for needle in (applicant, applicant.lower(), raw_id.hex(), raw_id.hex().upper()):
            assert needle not in text
            assert needle.encode("utf-8") not in raw
        for core in _b64_cores(raw_id):
            assert core not in text
        assert raw_id not in raw
        assert raw_id.hex().encode() not in raw
        assert hashlib.sha256(raw_id).digest() not in raw
        assert applicant not in repr(token)
        assert applicant not in str(dataclasses.asdict(token))


# --------------------------------------------------------------------------------------------
# Issuing
# --------------------------------------------------------------------------------------------


def test_ttl_validation(key: SigningPrivateKey, vk: VerifyKey) -> None:
    for bad in (0, -1, MAX_TTL_S + 1, 10**12, 1.5, 60.0, "60", None, True):
        with pytest.raises(ValueError, match="ttl_s"):
            _issue(key, ttl_s=bad)
    longest = _issue(key, ttl_s=MAX_TTL_S)
    assert longest.expires_at - longest.issued_at == MAX_TTL_S
    _verify(longest, vk, now=Clock(T0 + MAX_TTL_S - 1))
    shortest = _issue(key, ttl_s=1)
    assert shortest.expires_at == T0 + 1


def test_issue_validates_party_names_and_applicant(key: SigningPrivateKey) -> None:
    for kw in ({"bank": "Bank-1"}, {"bank": ""}, {"issuer": "plat form"}, {"applicant_id": ""}):
        with pytest.raises(ValueError):
            _issue(key, **kw)
    with pytest.raises(TypeError):
        _issue(key, applicant_id=12345)


def test_issue_uses_injected_clock(key: SigningPrivateKey) -> None:
    token = _issue(key, now=Clock(T0 + 123.999))
    assert token.issued_at == T0 + 123
    with pytest.raises(ValueError, match="clock"):
        _issue(key, now=Clock(float("nan")))
