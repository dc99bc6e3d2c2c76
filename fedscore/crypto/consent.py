"""Consent tokens for online scoring (DESIGN.md, "Encrypted feature exchange", point 5).

When a person applies for a loan through the platform, the platform signs a consent token
with its Ed25519 signing key. The token lets ONE bank obtain ONE applicant's platform
embedding until an expiry. The bank presents it with the scoring request; the platform
calls :func:`verify_consent`, which raises :class:`ConsentError` (with a precise
:class:`ConsentRefusal` reason) for anything else; the server maps that to
PERMISSION_DENIED.

Privacy: a token never carries the applicant's raw id. It carries a SHA-256 digest of the
id, domain-separated and salted with the token's own random id and bound to the bank, so
two tokens for one person are unlinkable and no precomputed table of id hashes applies.
Error messages name the token id and at most an 8-hex-digit prefix of that digest.

Token format, version 1 (all integers big-endian, strings UTF-8)::

    payload   = b"fedscore-consent-v1\\x00"     20 bytes, magic + version
                token_id                      16 bytes, random (hex in ConsentToken)
                u8 len(issuer) || issuer      platform party name, 1..63 bytes
                u8 len(bank)   || bank        bank party name, 1..63 bytes
                applicant_digest              32 bytes, see below
                u64 issued_at                 unix seconds
                u64 expires_at                unix seconds, issued_at < expires_at
                                              <= issued_at + MAX_TTL_S
    signature = Ed25519(platform signing key, payload)     64 bytes
    encoded   = base64url(payload || signature), no '=' padding, canonical

    applicant_digest = SHA-256(b"fedscore-consent-applicant-v1\\x00"
                               || token_id
                               || u8 len(bank) || bank
                               || u64 len(id)  || id)

Every field has a fixed length or a length prefix, so no two different tokens share a
payload; the decoder insists on the exact length and on the canonical base64url form, so
every encoded string maps to at most one token and no bit can change unnoticed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import grpc

from fedscore.crypto.primitives import SignatureError, SigningPrivateKey, VerifyKey
from fedscore.errors import FedscoreError

__all__ = [
    "DEFAULT_LEEWAY_S",
    "MAX_ENCODED_CHARS",
    "MAX_LEEWAY_S",
    "MAX_TTL_S",
    "ConsentError",
    "ConsentRefusal",
    "ConsentToken",
    "applicant_digest",
    "issue_consent",
    "verify_consent",
]

MAGIC = b"fedscore-consent-v1\x00"
"""Prefix of every v1 payload: names the format and version, so a signature over a token can
never be mistaken for a signature over a ledger entry or a manifest."""

_MAGIC_FAMILY = b"fedscore-consent-v"
_APPLICANT_DOMAIN = b"fedscore-consent-applicant-v1\x00"

TOKEN_ID_BYTES = 16
DIGEST_BYTES = 32
SIGNATURE_BYTES = 64
MAX_PARTY_BYTES = 63

MAX_TTL_S = 30 * 24 * 3600
"""Longest validity a token may have (30 days): a consent is for one application."""

DEFAULT_LEEWAY_S = 5
MAX_LEEWAY_S = 300
"""Clock-skew allowance is capped at 5 minutes, the skew the startup kits tolerate."""

_U64 = 0xFFFFFFFFFFFFFFFF
_MIN_PAYLOAD = len(MAGIC) + TOKEN_ID_BYTES + 1 + 1 + 1 + 1 + DIGEST_BYTES + 8 + 8
_MAX_PAYLOAD = _MIN_PAYLOAD - 2 + 2 * MAX_PARTY_BYTES
_MAX_ENCODED = (4 * (_MAX_PAYLOAD + SIGNATURE_BYTES) + 2) // 3
MAX_ENCODED_CHARS = _MAX_ENCODED
"""The longest encoded token there can be (two 63-byte party names): callers refuse a
longer string before sending or parsing it."""
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN_ID_RE = re.compile(r"[0-9a-f]{32}")
# Same rule as fedscore.federation.provision party names (lowercase, digits, '-', at most 63 chars).
_PARTY_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class ConsentRefusal(StrEnum):
    """Why a consent token was refused; the server logs it and answers PERMISSION_DENIED."""

    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    WRONG_BANK = "wrong-bank"
    WRONG_APPLICANT = "wrong-applicant"
    FORGED = "forged"
    MALFORMED = "malformed"


class ConsentError(FedscoreError):
    """A consent token was refused. ``reason`` says why; the message never holds a raw id."""

    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(
        self, reason: ConsentRefusal, message: str, *, token_id: str | None = None
    ) -> None:
        super().__init__(f"consent token refused ({reason.value}): {message}")
        self.reason = reason
        self.token_id = token_id


def _malformed(message: str) -> ConsentError:
    return ConsentError(ConsentRefusal.MALFORMED, message)


def _is_party(value: object) -> bool:
    return isinstance(value, str) and _PARTY_RE.fullmatch(value) is not None


def _party_problem(value: object, what: str) -> str:
    if not isinstance(value, str):
        return f"{what} must be a party name (str), got {type(value).__name__}"
    return (
        f"{what} {value!r} is not a party name (lowercase letters, digits and '-', "
        f"1..{MAX_PARTY_BYTES} chars)"
    )


def _check_party(value: object, what: str) -> str:
    """A party name read from a token; anything else is MALFORMED."""
    if isinstance(value, str) and _is_party(value):
        return value
    raise _malformed(_party_problem(value, what))


def _check_party_arg(value: object, what: str) -> str:
    """A party name passed by the issuer; anything else is a bug, so ValueError."""
    if isinstance(value, str) and _is_party(value):
        return value
    raise ValueError(_party_problem(value, what))


def applicant_digest(applicant_id: str, *, token_id: str, bank: str) -> bytes:
    """The 32-byte digest a token carries instead of the applicant's id.

    Salting with the token id makes tokens for one person unlinkable and defeats
    precomputed tables; binding the bank means a digest is meaningless for any other bank.
    """
    if not isinstance(applicant_id, str):
        raise TypeError(f"applicant_id must be str, got {type(applicant_id).__name__}")
    raw_id = applicant_id.encode("utf-8")
    raw_bank = bank.encode("utf-8")
    if len(raw_bank) > 0xFF:
        raise ValueError(f"bank name is {len(raw_bank)} bytes; at most 255 can be encoded")
    return hashlib.sha256(
        b"".join(
            (
                _APPLICANT_DOMAIN,
                bytes.fromhex(token_id),
                struct.pack(">B", len(raw_bank)),
                raw_bank,
                struct.pack(">Q", len(raw_id)),
                raw_id,
            )
        )
    ).digest()


@dataclass(frozen=True)
class ConsentToken:
    """One applicant's consent for one bank, signed by the platform; carries no raw id.

    Constructing one validates field shapes (MALFORMED otherwise); only
    :func:`verify_consent` establishes that it is genuine and applies.
    """

    token_id: str
    bank: str
    applicant_digest: bytes
    issued_at: int
    expires_at: int
    issuer: str
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.token_id, str) or not _TOKEN_ID_RE.fullmatch(self.token_id):
            raise _malformed(f"token_id must be {2 * TOKEN_ID_BYTES} lowercase hex digits")
        _check_party(self.issuer, "issuer")
        _check_party(self.bank, "bank")
        if not isinstance(self.applicant_digest, bytes) or len(self.applicant_digest) != 32:
            raise _malformed(f"applicant_digest must be {DIGEST_BYTES} bytes")
        for name in ("issued_at", "expires_at"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= _U64:
                raise _malformed(f"{name} must be an int in 0..2^64-1, got {value!r}")
        lifetime = self.expires_at - self.issued_at
        if not 0 < lifetime <= MAX_TTL_S:
            raise _malformed(
                f"token {self.token_id} lifetime is {lifetime}s; must be 1..{MAX_TTL_S}s"
            )
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise _malformed(f"signature must be {SIGNATURE_BYTES} bytes")

    @property
    def applicant_ref(self) -> str:
        """A short, non-reversible reference to the applicant for logs and messages."""
        return self.applicant_digest.hex()[:8]

    def signed_bytes(self) -> bytes:
        """The canonical v1 payload that the signature covers (see the module docstring)."""
        return _payload(
            self.token_id,
            self.issuer,
            self.bank,
            self.applicant_digest,
            self.issued_at,
            self.expires_at,
        )

    def encode(self) -> str:
        """Compact URL-safe text: unpadded base64url of payload || signature."""
        raw = self.signed_bytes() + self.signature
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> ConsentToken:
        """Parse :meth:`encode` output; raise ConsentError(MALFORMED) on anything else.

        This checks structure only; the signature is checked by :func:`verify_consent`.
        """
        if not isinstance(text, str):
            raise _malformed(f"encoded token must be str, got {type(text).__name__}")
        if not text:
            raise _malformed("encoded token is empty")
        if len(text) > _MAX_ENCODED:
            raise _malformed(f"encoded token is {len(text)} chars; at most {_MAX_ENCODED}")
        if not _B64URL_RE.fullmatch(text):
            raise _malformed(
                "encoded token is not unpadded base64url (only A-Z a-z 0-9 - _ allowed)"
            )
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise _malformed("encoded token is not valid base64url") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
            # Unused trailing bits set: another spelling of the same bytes. Refuse it so
            # that every accepted string is the one canonical encoding.
            raise _malformed("encoded token is not in canonical base64url form")
        return _parse(raw)


def _payload(
    token_id: str, issuer: str, bank: str, digest: bytes, issued_at: int, expires_at: int
) -> bytes:
    raw_issuer = issuer.encode("utf-8")
    raw_bank = bank.encode("utf-8")
    return b"".join(
        (
            MAGIC,
            bytes.fromhex(token_id),
            struct.pack(">B", len(raw_issuer)),
            raw_issuer,
            struct.pack(">B", len(raw_bank)),
            raw_bank,
            digest,
            struct.pack(">QQ", issued_at, expires_at),
        )
    )


def _parse(raw: bytes) -> ConsentToken:
    """Split payload || signature into a ConsentToken, refusing any leftover or short byte."""
    if not raw.startswith(MAGIC):
        if raw.startswith(_MAGIC_FAMILY):
            end = raw.find(b"\x00", len(_MAGIC_FAMILY))
            version = raw[len(_MAGIC_FAMILY) : end if end >= 0 else len(_MAGIC_FAMILY) + 8]
            raise _malformed(
                f"unsupported consent token version {version.decode('ascii', 'replace')!r}; "
                "this platform reads v1"
            )
        raise _malformed("not a fedscore consent token (bad magic prefix)")
    if len(raw) < _MIN_PAYLOAD + SIGNATURE_BYTES:
        raise _malformed(
            f"token is {len(raw)} bytes; at least {_MIN_PAYLOAD + SIGNATURE_BYTES} needed"
        )
    pos = len(MAGIC)
    token_id = raw[pos : pos + TOKEN_ID_BYTES].hex()
    pos += TOKEN_ID_BYTES
    parties: list[str] = []
    for what in ("issuer", "bank"):
        if pos >= len(raw):
            raise _malformed(f"token {token_id}: truncated before the {what} field")
        n = raw[pos]
        pos += 1
        if not 1 <= n <= MAX_PARTY_BYTES:
            raise _malformed(f"token {token_id}: {what} length {n}; must be 1..{MAX_PARTY_BYTES}")
        chunk = raw[pos : pos + n]
        if len(chunk) != n:
            raise _malformed(f"token {token_id}: {what} field is truncated")
        pos += n
        try:
            name = chunk.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed(f"token {token_id}: {what} is not UTF-8") from None
        parties.append(_check_party(name, what))
    issuer, bank = parties
    rest = raw[pos:]
    want = DIGEST_BYTES + 16 + SIGNATURE_BYTES
    if len(rest) != want:
        raise _malformed(
            f"token {token_id}: {len(rest)} bytes after the party names; expected {want}"
        )
    digest = rest[:DIGEST_BYTES]
    issued_at, expires_at = struct.unpack(">QQ", rest[DIGEST_BYTES : DIGEST_BYTES + 16])
    signature = rest[DIGEST_BYTES + 16 :]
    try:
        return ConsentToken(
            token_id=token_id,
            bank=bank,
            applicant_digest=digest,
            issued_at=issued_at,
            expires_at=expires_at,
            issuer=issuer,
            signature=signature,
        )
    except ConsentError as exc:
        exc.token_id = token_id
        raise


def _now(now: Callable[[], float]) -> float:
    t = now()
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise ValueError(f"clock returned {t!r}; expected finite unix seconds")
    return float(t)


def issue_consent(
    signing_key: SigningPrivateKey,
    *,
    issuer: str,
    bank: str,
    applicant_id: str,
    ttl_s: int,
    now: Callable[[], float] = time.time,
) -> ConsentToken:
    """Sign a token that lets ``bank`` score ``applicant_id`` for ``ttl_s`` seconds.

    Called by the platform when the person applies; ``issuer`` is the platform's party
    name. The token holds only a salted digest of ``applicant_id``.
    """
    if not isinstance(signing_key, SigningPrivateKey):
        raise TypeError(f"signing_key must be a SigningPrivateKey, got {type(signing_key)}")
    issuer = _check_party_arg(issuer, "issuer")
    bank = _check_party_arg(bank, "bank")
    if not isinstance(applicant_id, str):
        raise TypeError(f"applicant_id must be str, got {type(applicant_id).__name__}")
    if not applicant_id:
        raise ValueError("applicant_id must not be empty")
    if type(ttl_s) is not int:
        raise ValueError(f"ttl_s must be an int number of seconds, got {ttl_s!r}")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be 1..{MAX_TTL_S} seconds (30 days), got {ttl_s}")
    issued_at = math.floor(_now(now))
    if not 0 <= issued_at <= _U64 - ttl_s:
        raise ValueError(f"clock value {issued_at} is outside the token's time range")
    token_id = os.urandom(TOKEN_ID_BYTES).hex()
    digest = applicant_digest(applicant_id, token_id=token_id, bank=bank)
    expires_at = issued_at + ttl_s
    payload = _payload(token_id, issuer, bank, digest, issued_at, expires_at)
    return ConsentToken(
        token_id=token_id,
        bank=bank,
        applicant_digest=digest,
        issued_at=issued_at,
        expires_at=expires_at,
        issuer=issuer,
        signature=signing_key.sign(payload),
    )


def verify_consent(
    token: ConsentToken | str,
    verify_key: VerifyKey,
    *,
    bank: str,
    applicant_id: str,
    issuer: str | None = None,
    now: Callable[[], float] = time.time,
    leeway_s: int = DEFAULT_LEEWAY_S,
) -> ConsentToken:
    """Return the token if it lets ``bank`` score ``applicant_id`` now; raise ConsentError.

    ``verify_key`` is the platform's own Ed25519 key. Checks run in a fixed order, the
    signature first, so nothing unauthenticated decides which refusal is reported:
    MALFORMED (undecodable), FORGED (bad signature, another key, or ``issuer`` given and
    different), WRONG_BANK, WRONG_APPLICANT, then NOT_YET_VALID / EXPIRED, which allow
    ``leeway_s`` seconds of clock skew. It never returns False.
    """
    if not isinstance(verify_key, VerifyKey):
        raise TypeError(f"verify_key must be a VerifyKey, got {type(verify_key).__name__}")
    if not isinstance(bank, str):
        raise TypeError(f"bank must be str, got {type(bank).__name__}")
    if not isinstance(applicant_id, str):
        raise TypeError(f"applicant_id must be str, got {type(applicant_id).__name__}")
    if type(leeway_s) is not int or not 0 <= leeway_s <= MAX_LEEWAY_S:
        raise ValueError(f"leeway_s must be an int in 0..{MAX_LEEWAY_S}, got {leeway_s!r}")
    if isinstance(token, str):
        token = ConsentToken.decode(token)
    elif not isinstance(token, ConsentToken):
        raise _malformed(f"expected a ConsentToken or its encoding, got {type(token).__name__}")
    tid = token.token_id

    try:
        verify_key.verify(token.signature, token.signed_bytes())
    except SignatureError:
        raise ConsentError(
            ConsentRefusal.FORGED,
            f"token {tid}: signature does not verify under the platform key "
            f"{verify_key.hex()[:16]}... (altered, or signed by another key)",
            token_id=tid,
        ) from None
    if issuer is not None and token.issuer != issuer:
        raise ConsentError(
            ConsentRefusal.FORGED,
            f"token {tid}: issued by {token.issuer!r}, expected {issuer!r}",
            token_id=tid,
        )

    if token.bank != bank:
        raise ConsentError(
            ConsentRefusal.WRONG_BANK,
            f"token {tid} was issued to bank {token.bank!r}, presented by {bank!r}",
            token_id=tid,
        )

    expected = applicant_digest(applicant_id, token_id=tid, bank=token.bank)
    if not hmac.compare_digest(expected, token.applicant_digest):
        raise ConsentError(
            ConsentRefusal.WRONG_APPLICANT,
            f"token {tid} is for applicant ref {token.applicant_ref}..., "
            "not for the applicant in this request",
            token_id=tid,
        )

    t = _now(now)
    if t + leeway_s < token.issued_at:
        raise ConsentError(
            ConsentRefusal.NOT_YET_VALID,
            f"token {tid} is valid from {token.issued_at}, now is {math.floor(t)} "
            f"(leeway {leeway_s}s); check the clocks",
            token_id=tid,
        )
    if t >= token.expires_at + leeway_s:
        raise ConsentError(
            ConsentRefusal.EXPIRED,
            f"token {tid} expired at {token.expires_at}, now is {math.floor(t)} "
            f"(leeway {leeway_s}s)",
            token_id=tid,
        )
    return token
