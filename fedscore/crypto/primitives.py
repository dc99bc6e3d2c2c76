"""Every cryptographic primitive fedscore uses, and the only importer of ``cryptography.hazmat``.

Keeping the dangerous layer in one module means a reviewer audits one file: other modules
get keys, sealed boxes and PSI blinding through the validated types defined here, never
through raw hazmat objects.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from fedscore.errors import FedscoreError

POINT_SIZE = 32
"""Bytes per X25519 u-coordinate (a hashed id, a blinded id, a doubly blinded id)."""


class CryptoError(FedscoreError):
    """A cryptographic operation was refused: malformed input, bad key, failed check."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class SignatureError(CryptoError):
    """A signature did not verify. Verification raises; it never returns False."""

    code = grpc.StatusCode.PERMISSION_DENIED


class SealError(CryptoError):
    """A sealed box was refused: tampered, replayed, reordered, or for another session."""

    code = grpc.StatusCode.PERMISSION_DENIED


# --------------------------------------------------------------------------------------------
# Private set intersection (ECDH-PSI over X25519)
# --------------------------------------------------------------------------------------------


def hash_ids_to_points(ids: Iterable[str], domain: bytes) -> bytes:
    """Hash ids to X25519 u-coordinates, concatenated, 32 bytes per id, input order.

    ``domain`` separates PSI sessions/purposes so hashes from one session are useless in
    another; it is length-prefixed so (domain, id) pairs cannot collide by shifting bytes.
    Bit 255 is cleared so each point has a canonical encoding (X25519 ignores it anyway).
    """
    if not isinstance(domain, bytes | bytearray):
        raise CryptoError(f"PSI domain must be bytes, got {type(domain).__name__}")
    if len(domain) > 0xFFFF:
        raise CryptoError(f"PSI domain is {len(domain)} bytes; at most 65535 allowed")
    prefix = hashlib.sha256(struct.pack(">H", len(domain)) + bytes(domain))
    copy = prefix.copy
    out: list[bytes] = []
    append = out.append
    for i, ident in enumerate(ids):
        if not isinstance(ident, str):
            raise CryptoError(f"PSI id #{i} must be str, got {type(ident).__name__}")
        h = copy()
        h.update(ident.encode("utf-8"))
        d = h.digest()
        append(d[:31] + bytes((d[31] & 0x7F,)))
    return b"".join(out)


class PsiKey:
    """A fresh secret X25519 scalar for one PSI session; never serialised.

    X25519 ladders on u-coordinates commute (``a*(b*P) == b*(a*P)``), which is what lets
    each side blind the other's already blinded ids and compare only double blindings.
    """

    __slots__ = ("_key",)

    def __init__(self, _key: X25519PrivateKey) -> None:
        self._key = _key

    @classmethod
    def generate(cls) -> PsiKey:
        """A fresh random scalar, for one PSI session only."""
        return cls(X25519PrivateKey.generate())

    def blind(self, points: bytes) -> bytes:
        """Return X25519(scalar, u) for each 32-byte u in ``points``, same order."""
        n = len(points)
        if n % POINT_SIZE:
            raise CryptoError(
                f"PSI points buffer is {n} bytes; expected a multiple of {POINT_SIZE}"
            )
        if not isinstance(points, bytes):
            points = bytes(points)
        exchange = self._key.exchange
        load = X25519PublicKey.from_public_bytes
        try:
            out = [exchange(load(points[i : i + POINT_SIZE])) for i in range(0, n, POINT_SIZE)]
        except ValueError:
            # cryptography raises ValueError when the shared value is all zero.
            bad = _first_low_order(points, exchange, load)
            raise CryptoError(
                f"PSI point #{bad} is a low-order point (blinding gives all zeros); "
                "refusing malformed or malicious input"
            ) from None
        return b"".join(out)

    def __repr__(self) -> str:
        return "PsiKey(<secret>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("PsiKey is a per-session secret and must never be serialised")


def _first_low_order(points: bytes, exchange: object, load: object) -> int:
    """Index of the first point whose blinding fails; only used to build an error."""
    for i in range(0, len(points), POINT_SIZE):
        try:
            exchange(load(points[i : i + POINT_SIZE]))  # type: ignore[operator]
        except ValueError:
            return i // POINT_SIZE
    return -1


# --------------------------------------------------------------------------------------------
# Long-term node keys (X25519 sealing, Ed25519 signing, ECDSA P-256 for X.509)
# --------------------------------------------------------------------------------------------

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_NOENC = serialization.NoEncryption()


def _load_private_pem(data: bytes, source: str, expected: Any, what: str) -> Any:
    if not isinstance(data, bytes | bytearray):
        raise CryptoError(f"{source}: expected PEM bytes, got {type(data).__name__}")
    try:
        key = serialization.load_pem_private_key(bytes(data), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(
            f"{source}: not a readable unencrypted PEM private key ({what} expected): {exc}"
        ) from None
    if not isinstance(key, expected):
        raise CryptoError(f"{source}: expected {what}, found {_key_kind(key)}")
    return key


def _load_public_pem(data: bytes, source: str, expected: Any, what: str) -> Any:
    if not isinstance(data, bytes | bytearray):
        raise CryptoError(f"{source}: expected PEM bytes, got {type(data).__name__}")
    try:
        key = serialization.load_pem_public_key(bytes(data))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(
            f"{source}: not a readable PEM public key ({what} expected): {exc}"
        ) from None
    if not isinstance(key, expected):
        raise CryptoError(f"{source}: expected {what}, found {_key_kind(key)}")
    return key


def _check_raw(raw: bytes, source: str, what: str, size: int = 32) -> bytes:
    if not isinstance(raw, bytes | bytearray):
        raise CryptoError(f"{source}: {what} must be bytes, got {type(raw).__name__}")
    if len(raw) != size:
        raise CryptoError(f"{source}: {what} must be {size} bytes, got {len(raw)}")
    return bytes(raw)


def _key_kind(key: object) -> str:
    names = {
        X25519PrivateKey: "an X25519 private key",
        X25519PublicKey: "an X25519 public key",
        Ed25519PrivateKey: "an Ed25519 private key",
        Ed25519PublicKey: "an Ed25519 public key",
        ec.EllipticCurvePrivateKey: "an EC private key",
        ec.EllipticCurvePublicKey: "an EC public key",
    }
    for cls, name in names.items():
        if isinstance(key, cls):
            if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
                return f"{name} on {key.curve.name}"
            return name
    return f"a {type(key).__name__}"


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CryptoError(f"{path}: cannot read key file: {exc.strerror or exc}") from None


class _PublicKeyBase:
    """Public keys compare and hash by their 32 raw bytes, so manifests can be checked."""

    __slots__ = ("_raw",)
    _raw: bytes

    def public_bytes(self) -> bytes:
        """The key's 32 raw bytes, as the federation manifest stores them."""
        return self._raw

    def hex(self) -> str:
        """The raw bytes in hex, for logs and error messages."""
        return self._raw.hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._raw.hex()[:16]}...)"


class SealingPublicKey(_PublicKeyBase):
    """A node's long-term X25519 public key, the peer half of session-key agreement."""

    __slots__ = ("_key",)

    def __init__(self, _key: X25519PublicKey) -> None:
        self._key = _key
        self._raw = _key.public_bytes(_RAW, _RAW_PUB)

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "<bytes>") -> SealingPublicKey:
        """Load from the 32 raw bytes; ``source`` names the origin in errors."""
        raw = _check_raw(raw, source, "X25519 public key")
        return cls(X25519PublicKey.from_public_bytes(raw))

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "<pem>") -> SealingPublicKey:
        """Load from a SubjectPublicKeyInfo PEM; refuses any other key type."""
        return cls(_load_public_pem(data, source, X25519PublicKey, "an X25519 public key"))

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM, as written into a startup kit."""
        return self._key.public_bytes(_PEM, _SPKI)


class SealingPrivateKey:
    """A node's long-term X25519 secret; only used to derive per-session sealing keys."""

    __slots__ = ("_key",)

    def __init__(self, _key: X25519PrivateKey) -> None:
        self._key = _key

    @classmethod
    def generate(cls) -> SealingPrivateKey:
        """A new random sealing key (provisioning only)."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "<bytes>") -> SealingPrivateKey:
        """Load from the 32 raw secret bytes; ``source`` names the origin in errors."""
        raw = _check_raw(raw, source, "X25519 private key")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "<pem>") -> SealingPrivateKey:
        """Load from an unencrypted PKCS#8 PEM; refuses any other key type."""
        return cls(_load_private_pem(data, source, X25519PrivateKey, "an X25519 private key"))

    @classmethod
    def from_file(cls, path: Path) -> SealingPrivateKey:
        """Load a kit's PEM key file; errors name the path."""
        return cls.from_pem(_read(path), source=str(path))

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM, as written into a startup kit."""
        return self._key.private_bytes(_PEM, _PKCS8, _NOENC)

    def public_key(self) -> SealingPublicKey:
        """The public half, which peers use to derive session keys with this node."""
        return SealingPublicKey(self._key.public_key())

    def public_bytes(self) -> bytes:
        """The public half's 32 raw bytes."""
        return self.public_key().public_bytes()

    def __repr__(self) -> str:
        return f"SealingPrivateKey(public={self.public_bytes().hex()[:16]}..., <secret>)"


class VerifyKey(_PublicKeyBase):
    """An Ed25519 public key. ``verify`` raises SignatureError; it never returns False."""

    __slots__ = ("_key",)

    def __init__(self, _key: Ed25519PublicKey) -> None:
        self._key = _key
        self._raw = _key.public_bytes(_RAW, _RAW_PUB)

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "<bytes>") -> VerifyKey:
        """Load from the 32 raw bytes; an invalid point raises CryptoError."""
        raw = _check_raw(raw, source, "Ed25519 public key")
        try:
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as exc:
            raise CryptoError(f"{source}: invalid Ed25519 public key: {exc}") from None

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "<pem>") -> VerifyKey:
        """Load from a SubjectPublicKeyInfo PEM; refuses any other key type."""
        return cls(_load_public_pem(data, source, Ed25519PublicKey, "an Ed25519 public key"))

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM, as written into a startup kit."""
        return self._key.public_bytes(_PEM, _SPKI)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check an Ed25519 ``signature`` over ``data``; raise SignatureError if it fails."""
        if not isinstance(signature, bytes | bytearray) or len(signature) != 64:
            got = len(signature) if isinstance(signature, bytes | bytearray) else signature
            raise SignatureError(f"Ed25519 signature must be 64 bytes, got {got!r}")
        try:
            self._key.verify(bytes(signature), data)
        except InvalidSignature:
            raise SignatureError(
                f"Ed25519 signature does not verify under key {self.hex()[:16]}..."
            ) from None


class SigningPrivateKey:
    """A node's long-term Ed25519 key: signs ledger entries, consent tokens, manifests."""

    __slots__ = ("_key",)

    def __init__(self, _key: Ed25519PrivateKey) -> None:
        self._key = _key

    @classmethod
    def generate(cls) -> SigningPrivateKey:
        """A new random signing key (provisioning only)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "<bytes>") -> SigningPrivateKey:
        """Load from the 32 raw secret bytes; ``source`` names the origin in errors."""
        raw = _check_raw(raw, source, "Ed25519 private key")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "<pem>") -> SigningPrivateKey:
        """Load from an unencrypted PKCS#8 PEM; refuses any other key type."""
        return cls(_load_private_pem(data, source, Ed25519PrivateKey, "an Ed25519 private key"))

    @classmethod
    def from_file(cls, path: Path) -> SigningPrivateKey:
        """Load a kit's PEM key file; errors name the path."""
        return cls.from_pem(_read(path), source=str(path))

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM, as written into a startup kit."""
        return self._key.private_bytes(_PEM, _PKCS8, _NOENC)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def verify_key(self) -> VerifyKey:
        """The public half, which the manifest publishes for others to verify with."""
        return VerifyKey(self._key.public_key())

    def public_bytes(self) -> bytes:
        """The public half's 32 raw bytes."""
        return self.verify_key().public_bytes()

    def __repr__(self) -> str:
        return f"SigningPrivateKey(public={self.public_bytes().hex()[:16]}..., <secret>)"


class CertificateKey:
    """ECDSA P-256 key for the federation CA and TLS certificates (BoringSSL-friendly).

    Provisioning builds certificates with ``cryptography.x509`` and hands them here to be
    signed, so no other module touches hazmat keys or hash objects.
    """

    __slots__ = ("_key",)

    def __init__(self, _key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(_key.curve, ec.SECP256R1):
            raise CryptoError(f"certificate keys must be P-256, got {_key.curve.name}")
        self._key = _key

    @classmethod
    def generate(cls) -> CertificateKey:
        """A new random P-256 key (provisioning only)."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "<pem>") -> CertificateKey:
        """Load from an unencrypted PKCS#8 PEM; refuses keys on any curve but P-256."""
        key = _load_private_pem(data, source, ec.EllipticCurvePrivateKey, "a P-256 private key")
        if not isinstance(key.curve, ec.SECP256R1):
            raise CryptoError(f"{source}: expected a P-256 private key, found {_key_kind(key)}")
        return cls(key)

    @classmethod
    def from_file(cls, path: Path) -> CertificateKey:
        """Load a kit's PEM key file; errors name the path."""
        return cls.from_pem(_read(path), source=str(path))

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM, the form gRPC's TLS credentials read."""
        return self._key.private_bytes(_PEM, _PKCS8, _NOENC)

    def x509_public_key(self) -> Any:
        """The public key object ``x509.CertificateBuilder.public_key`` wants (opaque)."""
        return self._key.public_key()

    def public_der(self) -> bytes:
        """SubjectPublicKeyInfo DER, to match the key against a certificate."""
        return self._key.public_key().public_bytes(serialization.Encoding.DER, _SPKI)

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign a certificate builder with this key (ECDSA-SHA256)."""
        return builder.sign(self._key, hashes.SHA256())

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> bytes:
        """Sign a revocation list builder with this key (ECDSA-SHA256); PEM."""
        return builder.sign(self._key, hashes.SHA256()).public_bytes(_PEM)

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 (DER) signature; the CA uses it to sign the federation manifest."""
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def __repr__(self) -> str:
        return "CertificateKey(P-256, <secret>)"


def certificate_pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM, the form written into kits and read by gRPC."""
    return cert.public_bytes(_PEM)


def certificate_public_der(cert: x509.Certificate) -> bytes:
    """SubjectPublicKeyInfo DER of a certificate, to match it against a private key."""
    return cert.public_key().public_bytes(serialization.Encoding.DER, _SPKI)


def verify_with_certificate(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    """Check an ECDSA-SHA256 signature made by the certificate's key; raise SignatureError."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"certificate key is {_key_kind(key)}, expected an EC key")
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError(
            f"ECDSA signature does not verify under certificate {cert.subject.rfc4514_string()}"
        ) from None


def verify_crl_signature(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> None:
    """Check that ``cert``'s (EC) key signed the revocation list; raise SignatureError."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
        raise SignatureError(
            f"revocation list not signed by certificate {cert.subject.rfc4514_string()}"
        )


def supernode_auth_keypair() -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key pair for Flower SuperNode authentication, in the formats
    Flower reads: (private key as an OpenSSH PEM, public key as one OpenSSH line).

    The SuperLink operator registers the public key (``flwr supernode register``); the
    SuperNode signs its requests with the private key (``--auth-supernode-private-key``).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(_PEM, serialization.PrivateFormat.OpenSSH, _NOENC)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


# --------------------------------------------------------------------------------------------
# Sealing of split-learning payloads (X25519 -> HKDF -> AES-256-GCM)
# --------------------------------------------------------------------------------------------


class Direction(IntEnum):
    """Who sealed a box; values equal the proto enum ``fedscore.v1.Direction``."""

    BANK_TO_PLATFORM = 1
    PLATFORM_TO_BANK = 2


SESSION_ID_MIN = 16
SESSION_ID_MAX = 64
_SEAL_INFO = b"fedscore/v1/seal"
_ROUND_INFO = b"fedscore/v1/seal/round"
_SCORING_INFO = b"fedscore/v1/seal/scoring"
_AAD_TAG = b"fedscore/v1/aad\x00"
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def new_session_id() -> bytes:
    """A fresh random 16-byte session id: the session key (and so nonce space) is per id."""
    return os.urandom(16)


def _check_session_id(session_id: bytes) -> bytes:
    if not isinstance(session_id, bytes | bytearray):
        raise CryptoError(f"session_id must be bytes, got {type(session_id).__name__}")
    if not SESSION_ID_MIN <= len(session_id) <= SESSION_ID_MAX:
        raise CryptoError(
            f"session_id must be {SESSION_ID_MIN}..{SESSION_ID_MAX} bytes (fresh random, see "
            f"new_session_id()), got {len(session_id)}"
        )
    return bytes(session_id)


@dataclass(frozen=True)
class SealedBox:
    """A sealed payload; the clear fields are authenticated as AAD, not encrypted."""

    session_id: bytes
    round: int
    batch: int
    direction: Direction
    seq: int
    ciphertext: bytes


class SessionKey:
    """A 32-byte AES-256-GCM key for one session between two nodes; never serialised."""

    __slots__ = ("_aead", "_raw")

    def __init__(self, _raw: bytes) -> None:
        if len(_raw) != 32:
            raise CryptoError(f"session key must be 32 bytes, got {len(_raw)}")
        self._raw = bytes(_raw)
        self._aead = AESGCM(_raw)

    def for_round(self, round: int) -> SessionKey:
        """The key of one round of the session (HKDF-Expand with the round number).

        Sealers restart their seq at 0 in every round, so each round needs its own key;
        the platform refuses to open a round twice, so no round key seals twice with one
        nonce even when a bank process restarts between rounds.
        """
        if not 0 <= round <= _U32:
            raise CryptoError(f"round must fit uint32, got {round}")
        info = _ROUND_INFO + struct.pack(">I", round)
        return SessionKey(HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(
            self._raw
        ))

    def for_scoring(self) -> SessionKey:
        """The key of a session's online scoring, apart from every round key, so
        scoring's sequence numbers never share a nonce space with training's."""
        return SessionKey(HKDFExpand(algorithm=hashes.SHA256(), length=32,
                                     info=_SCORING_INFO).derive(self._raw))

    def __repr__(self) -> str:
        return "SessionKey(<secret>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SessionKey must never be serialised")


def derive_session_key(
    own: SealingPrivateKey, peer: SealingPublicKey, session_id: bytes
) -> SessionKey:
    """Static-static X25519 then HKDF-SHA256 salted with the session id.

    Both sides derive the same key. A fresh session id gives a fresh key, which is what
    makes the (direction, seq) nonce unique per key.
    """
    session_id = _check_session_id(session_id)
    try:
        shared = own._key.exchange(peer._key)
    except ValueError:
        raise CryptoError(
            "X25519 shared secret is all zeros: the peer sealing key is low-order (malicious)"
        ) from None
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=session_id, info=_SEAL_INFO).derive(
        shared
    )
    return SessionKey(raw)


def _aad(session_id: bytes, round: int, batch: int, direction: int, seq: int) -> bytes:
    return b"".join(
        (
            _AAD_TAG,
            struct.pack(">B", len(session_id)),
            session_id,
            struct.pack(">IQIQ", round, batch, direction, seq),
        )
    )


def _as_direction(direction: int) -> Direction:
    try:
        return Direction(direction)
    except ValueError:
        raise CryptoError(
            f"direction must be 1 or 2 (fedscore.v1.Direction), got {direction!r}"
        ) from None


class Sealer:
    """Seals one direction of one session; ``seq`` counts 0, 1, 2, ... and never repeats.

    Nonce = 4-byte direction || 8-byte seq. The key is unique to the session id (and, with
    :meth:`SessionKey.for_round`, to the round), the two directions use disjoint nonce
    prefixes, and seq is a counter that this object owns, so a (key, nonce) pair is never
    reused as long as one Sealer exists per (key, direction).
    """

    __slots__ = ("_direction", "_encrypt", "_lock", "_seq", "session_id")

    def __init__(self, key: SessionKey, session_id: bytes, direction: Direction) -> None:
        self.session_id = _check_session_id(session_id)
        self._direction = _as_direction(direction)
        self._encrypt = key._aead.encrypt
        self._seq = 0
        self._lock = threading.Lock()  # two threads must never take one seq

    @property
    def direction(self) -> Direction:
        """The direction every box this sealer makes is marked with."""
        return self._direction

    @property
    def next_seq(self) -> int:
        """The seq the next box will get (the count of boxes sealed so far)."""
        return self._seq

    def seal(self, plaintext: bytes, *, round: int, batch: int) -> SealedBox:
        """Encrypt ``plaintext`` under the next seq, with ``round`` and ``batch`` authenticated."""
        if not 0 <= round <= _U32:
            raise SealError(f"round must fit uint32, got {round}")
        if not 0 <= batch <= _U64:
            raise SealError(f"batch must fit uint64, got {batch}")
        with self._lock:
            seq = self._seq
            if seq > _U64:
                raise SealError("sequence space exhausted; start a new session")
            self._seq = seq + 1
        d = self._direction
        nonce = struct.pack(">IQ", d, seq)
        ct = self._encrypt(nonce, plaintext, _aad(self.session_id, round, batch, d, seq))
        return SealedBox(self.session_id, round, batch, d, seq, ct)


class Opener:
    """Opens one direction of one session, accepting seq 0, 1, 2, ... exactly in order."""

    __slots__ = ("_decrypt", "_direction", "_expected", "session_id")

    def __init__(self, key: SessionKey, session_id: bytes, direction: Direction) -> None:
        self.session_id = _check_session_id(session_id)
        self._direction = _as_direction(direction)
        self._decrypt = key._aead.decrypt
        self._expected = 0

    @property
    def direction(self) -> Direction:
        """The direction this opener accepts boxes from."""
        return self._direction

    @property
    def expected_seq(self) -> int:
        """The seq the next box must carry."""
        return self._expected

    def open(self, box: SealedBox, *, round: int | None = None, batch: int | None = None) -> bytes:
        """Authenticate and decrypt; optionally also insist on the caller's round/batch."""
        if box.session_id != self.session_id:
            raise SealError(
                f"sealed box is for session {bytes(box.session_id).hex()}, "
                f"this opener is for session {self.session_id.hex()}"
            )
        if box.direction != self._direction:
            raise SealError(
                f"sealed box direction is {_dir_name(box.direction)}, "
                f"expected {self._direction.name}"
            )
        if box.seq != self._expected:
            kind = "replayed" if box.seq < self._expected else "reordered (a box is missing)"
            raise SealError(f"sealed box seq {box.seq} {kind}; expected seq {self._expected}")
        if round is not None and box.round != round:
            raise SealError(f"sealed box is for round {box.round}, expected round {round}")
        if batch is not None and box.batch != batch:
            raise SealError(f"sealed box is for batch {box.batch}, expected batch {batch}")
        if not (0 <= box.round <= _U32 and 0 <= box.batch <= _U64):
            raise SealError(f"sealed box round/batch out of range: {box.round}/{box.batch}")
        pt = _decrypt(self._decrypt, self.session_id, self._direction, box)
        self._expected = box.seq + 1
        return pt


class WindowOpener:
    """Opens one direction of one session whose boxes may arrive out of order (concurrent
    scoring calls): each seq is accepted once, and only within ``window`` of the highest
    seq opened so far (the anti-replay window of IPsec, RFC 4303 section 3.4.3).
    Thread-safe."""

    __slots__ = ("_decrypt", "_direction", "_highest", "_lock", "_seen", "_window",
                 "session_id")

    def __init__(self, key: SessionKey, session_id: bytes, direction: Direction,
                 window: int = 4096) -> None:
        if window < 1:
            raise CryptoError(f"window must be >= 1, got {window}")
        self.session_id = _check_session_id(session_id)
        self._direction = _as_direction(direction)
        self._decrypt = key._aead.decrypt
        self._window = window
        self._highest = -1
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def open(self, box: SealedBox, *, round: int, batch: int | None = None) -> bytes:
        """Authenticate, decrypt and mark ``box.seq`` used; insist on ``round`` (and
        ``batch``, when given: a reply must carry its request's number)."""
        if box.session_id != self.session_id:
            raise SealError(f"sealed box is for session {bytes(box.session_id).hex()}, "
                            f"this opener is for session {self.session_id.hex()}")
        if box.direction != self._direction:
            raise SealError(f"sealed box direction is {_dir_name(box.direction)}, "
                            f"expected {self._direction.name}")
        if box.round != round:
            raise SealError(f"sealed box is for round {box.round}, expected round {round}")
        if batch is not None and box.batch != batch:
            raise SealError(f"sealed box is for batch {box.batch}, expected batch {batch}")
        if not (0 <= box.round <= _U32 and 0 <= box.batch <= _U64 and 0 <= box.seq <= _U64):
            raise SealError("sealed box round/batch/seq out of range")
        with self._lock:
            self._check_fresh(box.seq)
        pt = _decrypt(self._decrypt, self.session_id, self._direction, box)
        with self._lock:  # only an authentic box may use up its seq
            self._check_fresh(box.seq)
            self._seen.add(box.seq)
            if box.seq > self._highest:
                self._highest = box.seq
                floor = self._highest - self._window
                if len(self._seen) > 2 * self._window:
                    self._seen = {s for s in self._seen if s > floor}
        return pt

    def _check_fresh(self, seq: int) -> None:
        if seq <= self._highest - self._window:
            raise SealError(f"sealed box seq {seq} is older than the replay window "
                            f"({self._window} below seq {self._highest})")
        if seq in self._seen:
            raise SealError(f"sealed box seq {seq} replayed")


def _decrypt(decrypt: Any, session_id: bytes, direction: Direction, box: SealedBox) -> bytes:
    """AES-GCM open of a box whose header the caller has checked; the header is the AAD."""
    nonce = struct.pack(">IQ", direction, box.seq)
    aad = _aad(session_id, box.round, box.batch, direction, box.seq)
    try:
        plaintext: bytes = decrypt(nonce, bytes(box.ciphertext), aad)
    except InvalidTag:
        raise SealError(
            f"sealed box seq {box.seq} failed authentication: ciphertext, round or batch "
            "was altered, or it was sealed under another key"
        ) from None
    return plaintext


def _dir_name(direction: int) -> str:
    try:
        return Direction(direction).name
    except ValueError:
        return f"invalid ({direction!r})"
