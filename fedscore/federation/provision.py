"""Federation provisioning (``fedscore provision``) and startup-kit loading.

One operator runs ``provision`` once: it creates a federation CA and, for every party, a
startup kit (TLS certificate and key, X25519 sealing key, Ed25519 signing key, and a
CA-signed manifest of every party's public keys). Each kit is handed to its party out of
band. A node starts only through :func:`load_kit`, which refuses an inconsistent kit.

Key material is created and parsed only through :mod:`fedscore.crypto.primitives`; this module uses
``cryptography.x509`` for certificate structure and nothing from ``hazmat``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedscore.atomic import atomic_write
from fedscore.crypto.primitives import (
    CertificateKey,
    CryptoError,
    SealingPrivateKey,
    SealingPublicKey,
    SignatureError,
    SigningPrivateKey,
    VerifyKey,
    certificate_pem,
    certificate_public_der,
    supernode_auth_keypair,
    verify_crl_signature,
    verify_with_certificate,
)
from fedscore.errors import FedscoreError

DEFAULT_PARTIES: tuple[str, ...] = ("platform", "bank-1", "bank-2", "bank-3", "coordinator")
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
ROLES: tuple[str, ...] = ("platform", "bank", "coordinator")
MANIFEST_FORMAT = "fedscore-federation/1"

CA_DIR = "ca"
CA_KEY = "ca.key"
CA_CERT = "ca.crt"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
SEALING_KEY = "sealing.key"
SIGNING_KEY = "signing.key"
MANIFEST = "federation.json"
MANIFEST_SIG = "federation.sig"
KIT_INFO = "kit.json"
SUPERNODE_KEY = "supernode.key"  # bank kits, with supernode_keys=True: Flower SuperNode auth
SUPERNODE_PUB = "supernode.pub"  # its public half, which the SuperLink operator registers
CRL = "revoked.crl"  # X.509 CRL signed by the CA; its CRL number is the list's version
KIT_FILES = (CA_CERT, TLS_CERT, TLS_KEY, SEALING_KEY, SIGNING_KEY, MANIFEST, MANIFEST_SIG, KIT_INFO)

_PARTY_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_CLOCK_SKEW = timedelta(minutes=5)
EXPIRY_WARN_DAYS = 30
"""Nodes warn this many days before their own or the CA's certificate expires."""


class ProvisionError(FedscoreError, ValueError):
    """Provisioning was refused (bad party name, kit already there, ...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class KitError(FedscoreError, ValueError):
    """A startup kit is missing, malformed or inconsistent; the node must not start."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class PeerInfo:
    """A party's public identity as signed into the federation manifest by the CA."""

    name: str
    role: str
    sealing_public: SealingPublicKey
    verify_key: VerifyKey


@dataclass(frozen=True)
class RetiredKey:
    """A party's keys as they were before it was revoked or rotated: kept in the manifest's
    ``history`` so the ledger entries it signed then still verify."""

    name: str
    role: str
    sealing_public: SealingPublicKey
    verify_key: VerifyKey
    certificate_serial: int | None
    retired: str
    reason: str  # "revoked" or "rotated"


@dataclass(frozen=True)
class TrustState:
    """What a node believes about the federation: the CA-signed manifest (its ``version``,
    current parties, retired keys) and the CA-signed revocation list (its CRL number and
    the revoked certificate serials). Replaced whole on reload, never edited."""

    version: int
    peers: Mapping[str, PeerInfo]
    history: tuple[RetiredKey, ...]
    crl_number: int
    revoked: frozenset[int]


class LiveTrust:
    """The kit's current :class:`TrustState`; :func:`reload_trust` swaps it (one attribute
    assignment, so a reader sees the old state or the new one) and never for an older one."""

    def __init__(self, state: TrustState) -> None:
        self.state = state
        self.lock = threading.Lock()


@dataclass(frozen=True)
class StartupKit:
    """A validated startup kit: everything one node needs to join the federation.

    ``peers``, ``history`` and the revoked serials come from ``live``, which a reload
    (SIGHUP) replaces with a newer signed manifest and revocation list; the kit's own keys
    never change while a node runs (a rotated party restarts with its new kit).
    """

    party: str
    role: str
    path: Path
    federation: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    sealing_key: SealingPrivateKey
    signing_key: SigningPrivateKey
    live: LiveTrust = field(repr=False, compare=False)

    @property
    def trust(self) -> TrustState:
        """The manifest and revocation list this node goes by now."""
        return self.live.state

    @property
    def peers(self) -> Mapping[str, PeerInfo]:
        """The manifest's current parties (a revoked party is not among them)."""
        return self.live.state.peers

    def is_revoked(self, serial: int) -> bool:
        """Whether a certificate of this federation with ``serial`` is on the revocation list."""
        return serial in self.live.state.revoked

    def ledger_keys(self) -> dict[str, list[VerifyKey]]:
        """Every key a party ever signed its ledger with: the current one first, then the
        retired ones (newest first), so entries signed before a rotation or a revocation
        still verify."""
        keys: dict[str, list[VerifyKey]] = {n: [p.verify_key] for n, p in self.peers.items()}
        for old in reversed(self.trust.history):
            keys.setdefault(old.name, []).append(old.verify_key)
        return keys

    def peer(self, name: str) -> PeerInfo:
        """The manifest entry for ``name``; raises KitError for a party not in the federation."""
        try:
            return self.peers[name]
        except KeyError:
            raise KitError(
                f"{self.path / MANIFEST}: no party {name!r} in federation {self.federation!r} "
                f"(parties: {', '.join(sorted(self.peers))})"
            ) from None

    def peers_with_role(self, role: str) -> list[PeerInfo]:
        """The manifest's parties of ``role``, sorted by name."""
        return [p for _, p in sorted(self.peers.items()) if p.role == role]


def role_of(party: str) -> str:
    """The role a party name implies: ``platform``, ``bank`` (``bank-*``) or ``coordinator``."""
    for role in ROLES:
        if party == role or party.startswith(role + "-"):
            return role
    raise ProvisionError(
        f"party {party!r}: name must be one of {', '.join(ROLES)} or start with '<role>-' "
        "(e.g. bank-1) so its role is known"
    )


def _check_parties(parties: Sequence[str]) -> list[str]:
    names = list(parties)
    if not names:
        raise ProvisionError("no parties given")
    for name in names:
        if not _PARTY_RE.match(name):
            raise ProvisionError(
                f"party {name!r}: expected lowercase letters, digits and '-', at most 63 chars "
                "(it becomes a directory name and a DNS name in the TLS certificate)"
            )
        if name == CA_DIR:
            raise ProvisionError(f"party {name!r}: name is reserved for the CA directory")
        role_of(name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ProvisionError(f"duplicate party names: {', '.join(dupes)}")
    if sum(role_of(n) == "platform" for n in names) > 1:
        raise ProvisionError("more than one platform party given; a federation has one platform")
    return names


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.match(r"^[A-Za-z0-9*](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?$", host):
        raise ProvisionError(f"host {host!r}: expected a DNS name or an IP address")
    return x509.DNSName(host)


def _write_private(path: Path, data: bytes) -> None:
    """Create a private file 0600 from the start, so it is never briefly world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # umask cannot widen it, but be explicit


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _ca_cert(key: CertificateKey, federation: str, now: datetime, days: int) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} CA"),
        ]
    )
    pub = key.x509_public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    return key.sign_certificate(builder)


def _tls_cert(
    ca_key: CertificateKey,
    ca_cert: x509.Certificate,
    key: CertificateKey,
    party: str,
    federation: str,
    hosts: Sequence[str],
    now: datetime,
    days: int,
) -> x509.Certificate:
    names: list[x509.GeneralName] = [x509.DNSName(party)]
    for host in hosts:
        san = _san(host)
        if san not in names:
            names.append(san)
    pub = key.x509_public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
                    x509.NameAttribute(NameOID.COMMON_NAME, party),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    return ca_key.sign_certificate(builder)


def provision(
    out: Path,
    parties: Sequence[str] = DEFAULT_PARTIES,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    federation: str = "fedscore-demo",
    valid_days: int = 365,
    now: datetime | None = None,
    *,
    force: bool = False,
    supernode_keys: bool = False,
) -> Path:
    """Create ``out/ca`` (operator only) and one startup kit ``out/<party>`` per party.

    ``supernode_keys``: also put a Flower SuperNode authentication key pair
    (``supernode.key``, ``supernode.pub``, ECDSA P-256 in OpenSSH format) in every bank's
    kit, for a Deployment Engine SuperLink started with ``--enable-supernode-auth``.

    Refuses to overwrite an existing CA or kit directory unless ``force`` (which replaces
    exactly those directories, nothing else under ``out``). Returns ``out``.
    """
    names = _check_parties(parties)
    if not federation or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", federation):
        raise ProvisionError(
            f"federation {federation!r}: expected letters, digits, '.', '_' or '-' (max 64)"
        )
    if valid_days < 1:
        raise ProvisionError(f"valid_days must be at least 1, got {valid_days}")
    host_list = list(hosts)
    for host in host_list:
        _san(host)
        if host in names or host == CA_DIR:
            # Every certificate carries every host as a SAN; a host named like a party would
            # let any node pass as that party to a client checking the server name.
            raise ProvisionError(f"host {host!r} is also a party name; use another host name")
    now = _utc(now)
    out = Path(out)
    targets = [out / CA_DIR, *(out / n for n in names)]
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if existing and not force:
        raise ProvisionError(
            f"{', '.join(str(t) for t in existing)} already exist(s); refusing to overwrite "
            "keys (pass --force to replace them, which invalidates every kit issued before)"
        )
    out.mkdir(parents=True, exist_ok=True)
    for t in existing:
        if t.is_dir() and not t.is_symlink():
            shutil.rmtree(t)
        else:
            t.unlink()

    ca_key = CertificateKey.generate()
    ca_cert = _ca_cert(ca_key, federation, now, valid_days)
    ca_pem = certificate_pem(ca_cert)

    sealing = {n: SealingPrivateKey.generate() for n in names}
    signing = {n: SigningPrivateKey.generate() for n in names}
    tls_keys = {n: CertificateKey.generate() for n in names}
    certs = {
        n: _tls_cert(ca_key, ca_cert, tls_keys[n], n, federation, host_list, now, valid_days)
        for n in names
    }
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "federation": federation,
        "created": now.isoformat(),
        "version": 1,
        "crl_number": 1,
        "parties": [_party_entry(n, sealing[n], signing[n], certs[n]) for n in names],
        "history": [],
    }
    manifest_bytes = _manifest_bytes(manifest)
    manifest_sig = ca_key.sign(manifest_bytes)
    crl_pem = _crl(ca_key, ca_cert, 1, [], now)

    ca_dir = out / CA_DIR
    ca_dir.mkdir(mode=0o700)
    _write_private(ca_dir / CA_KEY, ca_key.to_pem())
    _write_public(ca_dir / CA_CERT, ca_pem)
    _write_public(ca_dir / MANIFEST, manifest_bytes)
    _write_public(ca_dir / MANIFEST_SIG, manifest_sig)
    _write_public(ca_dir / CRL, crl_pem)

    for n in names:
        _write_kit(out / n, n, federation, ca_pem, tls_keys[n], certs[n], sealing[n],
                   signing[n], (manifest_bytes, manifest_sig, crl_pem),
                   supernode_keys=supernode_keys and role_of(n) == "bank")
    return out


def _party_entry(
    name: str, sealing: SealingPrivateKey, signing: SigningPrivateKey, cert: x509.Certificate
) -> dict[str, str]:
    return {
        "name": name,
        "role": role_of(name),
        "sealing_public_key": sealing.public_bytes().hex(),
        "signing_public_key": signing.public_bytes().hex(),
        "certificate_serial": format(cert.serial_number, "x"),
    }


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def _crl(
    ca_key: CertificateKey,
    ca_cert: x509.Certificate,
    number: int,
    revoked: Sequence[tuple[int, datetime]],
    now: datetime,
) -> bytes:
    """The federation's X.509 CRL (the standard form; any TLS tool can read it), its CRL
    number the list's version, valid until the CA itself expires (a new list is issued on
    every revocation, not on a schedule)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _CLOCK_SKEW)
        .next_update(max(ca_cert.not_valid_after_utc, now + timedelta(days=1)))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return ca_key.sign_crl(builder)


def _write_kit(
    kit: Path,
    party: str,
    federation: str,
    ca_pem: bytes,
    tls_key: CertificateKey,
    cert: x509.Certificate,
    sealing: SealingPrivateKey,
    signing: SigningPrivateKey,
    trust: tuple[bytes, bytes, bytes],
    *,
    supernode_keys: bool,
) -> None:
    manifest_bytes, manifest_sig, crl_pem = trust
    kit.mkdir(mode=0o700)
    _write_public(kit / CA_CERT, ca_pem)
    _write_public(kit / TLS_CERT, certificate_pem(cert))
    _write_private(kit / TLS_KEY, tls_key.to_pem())
    _write_private(kit / SEALING_KEY, sealing.to_pem())
    _write_private(kit / SIGNING_KEY, signing.to_pem())
    _write_public(kit / MANIFEST, manifest_bytes)
    _write_public(kit / MANIFEST_SIG, manifest_sig)
    _write_public(kit / CRL, crl_pem)
    info = {"party": party, "federation": federation}
    _write_public(kit / KIT_INFO, (json.dumps(info, indent=2) + "\n").encode())
    if supernode_keys:
        private, public = supernode_auth_keypair()
        _write_private(kit / SUPERNODE_KEY, private)
        _write_public(kit / SUPERNODE_PUB, public)


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC))")
    return now.astimezone(UTC)


# --------------------------------------------------------------------------------------------
# Loading and validating a kit
# --------------------------------------------------------------------------------------------


def load_kit(path: Path, *, now: datetime | None = None, party: str | None = None) -> StartupKit:
    """Load a startup kit, or raise KitError naming the file and what is wrong.

    Checks: every file present and parseable; the TLS certificate signed by the kit's CA,
    currently valid (``now`` injectable) and issued to the kit's party; the manifest signed
    by the CA; the kit's own private keys matching the manifest and the certificate.
    ``party``, when given, must be the kit's party (a node configured as bank-1 refuses
    bank-2's kit).
    """
    path = Path(path)
    now = _utc(now)
    if not path.is_dir():
        raise KitError(f"{path}: startup kit directory not found (run `fedscore provision`)")
    raw: dict[str, bytes] = {}
    for name in KIT_FILES:
        f = path / name
        try:
            raw[name] = f.read_bytes()
        except FileNotFoundError:
            raise KitError(f"{f}: missing from the startup kit") from None
        except OSError as exc:
            raise KitError(f"{f}: cannot read: {exc.strerror or exc}") from None

    info = _json(path / KIT_INFO, raw[KIT_INFO])
    kit_party = _str_field(info, "party", path / KIT_INFO)
    if party is not None and party != kit_party:
        raise KitError(f"{path / KIT_INFO}: this kit is for {kit_party!r}, expected {party!r}")

    ca = _load_cert(path / CA_CERT, raw[CA_CERT])
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise KitError(f"{path / CA_CERT}: not a CA certificate (basicConstraints ca=False)")
    _check_validity(path / CA_CERT, ca, now)

    cert = _load_cert(path / TLS_CERT, raw[TLS_CERT])
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as exc:  # ValueError, TypeError or InvalidSignature
        raise KitError(
            f"{path / TLS_CERT}: not signed by the kit's CA {path / CA_CERT} "
            f"({ca.subject.rfc4514_string()}): {type(exc).__name__} {exc}".rstrip()
        ) from None
    _check_validity(path / TLS_CERT, cert, now)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if cn != kit_party:
        raise KitError(
            f"{path / TLS_CERT}: certificate CN is {cn!r} but this kit is for {kit_party!r}"
        )

    try:
        tls_key = CertificateKey.from_pem(raw[TLS_KEY], source=str(path / TLS_KEY))
        sealing_key = SealingPrivateKey.from_pem(raw[SEALING_KEY], source=str(path / SEALING_KEY))
        signing_key = SigningPrivateKey.from_pem(raw[SIGNING_KEY], source=str(path / SIGNING_KEY))
    except CryptoError as exc:
        raise KitError(str(exc)) from None
    if tls_key.public_der() != certificate_public_der(cert):
        raise KitError(f"{path / TLS_KEY}: private key does not match {path / TLS_CERT}")

    federation, trust = _read_trust(path, ca, raw[MANIFEST], raw[MANIFEST_SIG])
    info_fed = _str_field(info, "federation", path / KIT_INFO)
    if info_fed != federation:
        raise KitError(
            f"{path / KIT_INFO}: federation {info_fed!r} but {MANIFEST} is for {federation!r}"
        )
    _check_own_keys(path, kit_party, trust, sealing_key, signing_key)
    if trust.revoked and cert.serial_number in trust.revoked:
        raise KitError(
            f"{path / TLS_CERT}: certificate {cert.serial_number:x} of {kit_party!r} is on the "
            f"federation's revocation list {path / CRL} (number {trust.crl_number}); this kit "
            "was revoked or replaced by a rotation"
        )
    return StartupKit(
        party=kit_party,
        role=trust.peers[kit_party].role,
        path=path,
        federation=federation,
        ca_pem=raw[CA_CERT],
        cert_pem=raw[TLS_CERT],
        key_pem=raw[TLS_KEY],
        sealing_key=sealing_key,
        signing_key=signing_key,
        live=LiveTrust(trust),
    )


def _check_own_keys(
    path: Path,
    party: str,
    trust: TrustState,
    sealing_key: SealingPrivateKey,
    signing_key: SigningPrivateKey,
) -> None:
    if party not in trust.peers:
        retired = [h for h in trust.history if h.name == party]
        why = f" ({retired[-1].reason} on {retired[-1].retired})" if retired else ""
        raise KitError(f"{path / MANIFEST}: party {party!r} is not in the federation{why}")
    me = trust.peers[party]
    if sealing_key.public_key() != me.sealing_public:
        raise KitError(
            f"{path / SEALING_KEY}: public key does not match {party}'s sealing key in "
            f"{MANIFEST}"
        )
    if signing_key.verify_key() != me.verify_key:
        raise KitError(
            f"{path / SIGNING_KEY}: public key does not match {party}'s signing key in "
            f"{MANIFEST}"
        )


def _read_trust(
    path: Path, ca: x509.Certificate, manifest: bytes, signature: bytes
) -> tuple[str, TrustState]:
    """The manifest and the revocation list of the kit at ``path``, both checked under the
    kit's CA, and the revocation list no older than the manifest says it must be."""
    try:
        verify_with_certificate(ca, signature, manifest)
    except SignatureError:
        raise KitError(
            f"{path / MANIFEST}: signature {path / MANIFEST_SIG} does not verify under the "
            f"kit's CA; the manifest was tampered with or comes from another federation"
        ) from None
    federation, version, crl_number, peers, history = _parse_manifest(path / MANIFEST, manifest)
    f = path / CRL
    try:
        crl_pem: bytes | None = f.read_bytes()
    except FileNotFoundError:
        crl_pem = None
    except OSError as exc:
        raise KitError(f"{f}: cannot read: {exc.strerror or exc}") from None
    if crl_pem is None:
        if crl_number > 0:
            raise KitError(
                f"{f}: missing; {MANIFEST} (version {version}) requires revocation list "
                f"number {crl_number} or newer"
            )
        number, revoked = 0, frozenset[int]()
    else:
        number, revoked = _load_crl(f, crl_pem, ca)
        if number < crl_number:
            raise KitError(
                f"{f}: revocation list number {number} is older than the {crl_number} that "
                f"{MANIFEST} (version {version}) requires; an old list cannot replace a newer one"
            )
    return federation, TrustState(version, peers, history, number, revoked)


def _load_crl(f: Path, data: bytes, ca: x509.Certificate) -> tuple[int, frozenset[int]]:
    """An X.509 CRL issued and signed by the federation CA: (its CRL number, the serials)."""
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise KitError(f"{f}: not a readable PEM revocation list (X.509 CRL): {exc}") from None
    try:
        if crl.issuer != ca.subject:
            raise SignatureError(f"issued by {crl.issuer.rfc4514_string()}")
        verify_crl_signature(crl, ca)
    except SignatureError as exc:
        raise KitError(
            f"{f}: revocation list not signed by the kit's CA ({ca.subject.rfc4514_string()}): "
            f"{exc}"
        ) from None
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        raise KitError(f"{f}: revocation list has no CRL number (its version)") from None
    return number, frozenset(r.serial_number for r in crl)


def _load_cert(f: Path, data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise KitError(f"{f}: not a readable PEM certificate: {exc}") from None


def _check_validity(f: Path, cert: x509.Certificate, now: datetime) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise KitError(f"{f}: certificate not valid yet (valid from {start.isoformat()})")
    if now > end:
        raise KitError(f"{f}: certificate expired on {end.isoformat()}")


def _json(f: Path, data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KitError(f"{f}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise KitError(f"{f}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _str_field(obj: Mapping[str, Any], key: str, f: Path, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise KitError(f"{f}: {where}field {key!r} must be a non-empty string, got {value!r}")
    return value


def _int_field(obj: Mapping[str, Any], key: str, f: Path) -> int:
    value = obj.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KitError(f"{f}: field {key!r} must be a whole number >= 0, got {value!r}")
    return value


def _keys_of(entry: Mapping[str, Any], f: Path, where: str) -> tuple[SealingPublicKey, VerifyKey]:
    try:
        seal = SealingPublicKey.from_bytes(
            bytes.fromhex(_str_field(entry, "sealing_public_key", f, where)),
            source=f"{f}: {where}sealing_public_key",
        )
        verify = VerifyKey.from_bytes(
            bytes.fromhex(_str_field(entry, "signing_public_key", f, where)),
            source=f"{f}: {where}signing_public_key",
        )
    except ValueError as exc:
        raise KitError(f"{f}: {where}public key is not hex: {exc}") from None
    except CryptoError as exc:
        raise KitError(str(exc)) from None
    return seal, verify


def _serial_of(entry: Mapping[str, Any], f: Path, where: str) -> int | None:
    value = entry.get("certificate_serial")
    if value is None:
        return None
    try:
        return int(_str_field(entry, "certificate_serial", f, where), 16)
    except ValueError:
        raise KitError(f"{f}: {where}certificate_serial {value!r} is not hex") from None


def _parse_manifest(
    f: Path, data: bytes
) -> tuple[str, int, int, dict[str, PeerInfo], tuple[RetiredKey, ...]]:
    obj = _json(f, data)
    fmt = obj.get("format")
    if fmt != MANIFEST_FORMAT:
        raise KitError(f"{f}: field 'format' is {fmt!r}, expected {MANIFEST_FORMAT!r}")
    federation = _str_field(obj, "federation", f)
    version = _int_field(obj, "version", f)
    crl_number = _int_field(obj, "crl_number", f)
    entries = obj.get("parties")
    if not isinstance(entries, list) or not entries:
        raise KitError(f"{f}: field 'parties' must be a non-empty list")
    peers: dict[str, PeerInfo] = {}
    for i, entry in enumerate(entries):
        where = f"parties[{i}]: "
        if not isinstance(entry, dict):
            raise KitError(f"{f}: {where}expected an object")
        name = _str_field(entry, "name", f, where)
        role = _str_field(entry, "role", f, where)
        if role not in ROLES:
            raise KitError(f"{f}: {where}role {role!r} is not one of {', '.join(ROLES)}")
        if name in peers:
            raise KitError(f"{f}: {where}duplicate party {name!r}")
        seal, verify = _keys_of(entry, f, where)
        peers[name] = PeerInfo(name=name, role=role, sealing_public=seal, verify_key=verify)
    old = obj.get("history", [])
    if not isinstance(old, list):
        raise KitError(f"{f}: field 'history' must be a list")
    history = []
    for i, entry in enumerate(old):
        where = f"history[{i}]: "
        if not isinstance(entry, dict):
            raise KitError(f"{f}: {where}expected an object")
        seal, verify = _keys_of(entry, f, where)
        reason = _str_field(entry, "reason", f, where)
        if reason not in ("revoked", "rotated"):
            raise KitError(f"{f}: {where}reason {reason!r} is not 'revoked' or 'rotated'")
        history.append(RetiredKey(
            name=_str_field(entry, "name", f, where), role=_str_field(entry, "role", f, where),
            sealing_public=seal, verify_key=verify,
            certificate_serial=_serial_of(entry, f, where),
            retired=_str_field(entry, "retired", f, where), reason=reason,
        ))
    return federation, version, crl_number, peers, tuple(history)


# --------------------------------------------------------------------------------------------
# Reload, revocation, rotation, expiry
# --------------------------------------------------------------------------------------------


def reload_trust(kit: StartupKit) -> TrustState:
    """Read the kit's manifest and revocation list again (a node's SIGHUP) and go by them
    from now on; return the new state, or raise KitError and keep the current one.

    Refused: anything :func:`load_kit` refuses, a manifest version or CRL number older than
    the ones loaded (an old list cannot replace a newer one), and a manifest in which this
    node's own keys changed or its certificate is revoked (restart it with its new kit).
    """
    path = kit.path
    try:
        manifest, signature = (path / MANIFEST).read_bytes(), (path / MANIFEST_SIG).read_bytes()
    except OSError as exc:
        raise KitError(f"{path}: cannot read {MANIFEST} or {MANIFEST_SIG}: {exc}") from None
    ca = x509.load_pem_x509_certificate(kit.ca_pem)
    federation, new = _read_trust(path, ca, manifest, signature)
    if federation != kit.federation:
        raise KitError(f"{path / MANIFEST}: federation {federation!r}, this node is in "
                       f"{kit.federation!r}")
    with kit.live.lock:
        cur = kit.live.state
        if new.version < cur.version or new.crl_number < cur.crl_number:
            raise KitError(
                f"{path / MANIFEST}: version {new.version} with revocation list number "
                f"{new.crl_number} is older than the loaded version {cur.version} with list "
                f"{cur.crl_number}; an old manifest or list cannot replace a newer one"
            )
        _check_own_keys(path, kit.party, new, kit.sealing_key, kit.signing_key)
        own = x509.load_pem_x509_certificate(kit.cert_pem).serial_number
        if own in new.revoked:
            raise KitError(f"{path / CRL}: this node's own certificate {own:x} is revoked; "
                           "restart it with its new kit")
        kit.live.state = new
    return new


@dataclass(frozen=True)
class TrustUpdate:
    """What :func:`revoke` or :func:`rotate` did: the party, the certificate serial it
    revoked, the new manifest version and CRL number, the kits it updated."""

    party: str
    revoked_serial: int
    version: int
    crl_number: int
    updated_kits: tuple[Path, ...]


def _operator_state(
    out: Path,
) -> tuple[CertificateKey, x509.Certificate, dict[str, Any], list[tuple[int, datetime]]]:
    """The CA key and certificate, the CA's copy of the manifest (checked under the CA) and
    the revoked serials with their dates, from ``out/ca``."""
    ca_dir = Path(out) / CA_DIR
    try:
        ca_key = CertificateKey.from_file(ca_dir / CA_KEY)
        ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        manifest = (ca_dir / MANIFEST).read_bytes()
        signature = (ca_dir / MANIFEST_SIG).read_bytes()
        crl_pem = (ca_dir / CRL).read_bytes()
    except FileNotFoundError as exc:
        raise ProvisionError(
            f"{exc.filename}: missing; revocation and rotation need the CA folder that "
            "`fedscore provision` wrote (ca.key, ca.crt, federation.json, federation.sig, "
            f"{CRL})"
        ) from None
    except (OSError, CryptoError, ValueError) as exc:
        raise ProvisionError(f"{ca_dir}: cannot read the CA: {exc}") from None
    try:
        _read_trust(ca_dir, ca_cert, manifest, signature)
    except KitError as exc:
        raise ProvisionError(str(exc)) from None
    crl = x509.load_pem_x509_crl(crl_pem)
    revoked = [(r.serial_number, r.revocation_date_utc) for r in crl]
    return ca_key, ca_cert, json.loads(manifest), revoked


def _current_entry(manifest: Mapping[str, Any], party: str, out: Path) -> dict[str, Any]:
    for entry in manifest["parties"]:
        if entry["name"] == party:
            if "certificate_serial" not in entry:
                raise ProvisionError(
                    f"{out / CA_DIR / MANIFEST}: party {party!r} has no certificate_serial "
                    "(provisioned before revocation support); re-provision the federation"
                )
            return dict(entry)
    gone = [h for h in manifest.get("history", []) if h["name"] == party]
    why = f": it was {gone[-1]['reason']} on {gone[-1]['retired']}" if gone else ""
    raise ProvisionError(
        f"party {party!r} is not a current party of the federation{why} (parties: "
        f"{', '.join(sorted(e['name'] for e in manifest['parties']))})"
    )


def _publish(
    out: Path,
    ca_key: CertificateKey,
    ca_cert: x509.Certificate,
    manifest: dict[str, Any],
    revoked: list[tuple[int, datetime]],
    now: datetime,
    skip: str | None = None,
) -> tuple[Path, ...]:
    """Sign and write the new manifest and CRL to ``out/ca`` and to every current party's
    kit found under ``out`` (not ``skip``'s): the CRL first, so a node reading in between
    sees a list at least as new as its manifest asks for."""
    manifest["version"] = int(manifest.get("version", 0)) + 1
    manifest["crl_number"] = int(manifest.get("crl_number", 0)) + 1
    data = _manifest_bytes(manifest)
    sig = ca_key.sign(data)
    crl_pem = _crl(ca_key, ca_cert, manifest["crl_number"], revoked, now)
    folders = [out / CA_DIR]
    folders += [out / e["name"] for e in manifest["parties"]
                if e["name"] != skip and (out / e["name"] / KIT_INFO).is_file()]
    for folder in folders:
        atomic_write(folder / CRL, crl_pem)
        atomic_write(folder / MANIFEST, data)
        atomic_write(folder / MANIFEST_SIG, sig)
    return tuple(folders[1:])


def revoke(out: Path, party: str, *, now: datetime | None = None) -> TrustUpdate:
    """Shut ``party`` out: its certificate goes on the CA's revocation list and its keys
    move from the manifest's parties to its history (so the ledger entries it signed still
    verify); both are re-signed and written to the CA folder and every other kit under
    ``out``. Nodes take them on SIGHUP or restart. Its SuperNode must also be unregistered
    from the SuperLink (``flwr supernode unregister``), which is the SuperLink's own list."""
    out, now = Path(out), _utc(now)
    ca_key, ca_cert, manifest, revoked = _operator_state(out)
    entry = _current_entry(manifest, party, out)
    serial = int(entry["certificate_serial"], 16)
    if sum(e["role"] == entry["role"] for e in manifest["parties"]) == 1 and \
            entry["role"] != "bank":
        raise ProvisionError(f"party {party!r} is the federation's only {entry['role']}; "
                             "rotate its keys instead (`fedscore provision rotate`)")
    manifest["parties"] = [e for e in manifest["parties"] if e["name"] != party]
    manifest.setdefault("history", []).append(
        {**entry, "retired": now.isoformat(), "reason": "revoked"})
    revoked.append((serial, now))
    kits = _publish(out, ca_key, ca_cert, manifest, revoked, now, skip=party)
    return TrustUpdate(party, serial, manifest["version"], manifest["crl_number"], kits)


def rotate(
    out: Path, party: str, *, valid_days: int = 365, now: datetime | None = None
) -> TrustUpdate:
    """Give ``party`` a new kit (new TLS key and certificate from the same CA, new sealing
    and signing keys, a new SuperNode key pair if it had one) in ``out/<party>``, which is
    replaced; revoke its old certificate; update the manifest with its new public keys
    (the old ones go to its history). The other parties' keys do not change: they take the
    new manifest and list on SIGHUP or restart and keep working."""
    out, now = Path(out), _utc(now)
    if valid_days < 1:
        raise ProvisionError(f"valid_days must be at least 1, got {valid_days}")
    ca_key, ca_cert, manifest, revoked = _operator_state(out)
    entry = _current_entry(manifest, party, out)
    kit = out / party
    try:
        old_cert = x509.load_pem_x509_certificate((kit / TLS_CERT).read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"{kit / TLS_CERT}: cannot read {party}'s current certificate "
                             f"(its host names are reused): {exc}") from None
    hosts = [
        str(n.value) for n in
        old_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if not (isinstance(n, x509.DNSName) and n.value == party)
    ]
    sealing, signing = SealingPrivateKey.generate(), SigningPrivateKey.generate()
    tls_key = CertificateKey.generate()
    cert = _tls_cert(ca_key, ca_cert, tls_key, party, str(manifest["federation"]), hosts, now,
                     valid_days)
    manifest["parties"] = [
        _party_entry(party, sealing, signing, cert) if e["name"] == party else e
        for e in manifest["parties"]
    ]
    manifest.setdefault("history", []).append(
        {**entry, "retired": now.isoformat(), "reason": "rotated"})
    revoked.append((int(entry["certificate_serial"], 16), now))
    kits = _publish(out, ca_key, ca_cert, manifest, revoked, now, skip=party)
    trust = tuple((out / CA_DIR / f).read_bytes() for f in (MANIFEST, MANIFEST_SIG, CRL))
    staging = out / f".{party}.new"
    if staging.exists():
        shutil.rmtree(staging)
    _write_kit(staging, party, str(manifest["federation"]), certificate_pem(ca_cert), tls_key,
               cert, sealing, signing, (trust[0], trust[1], trust[2]),
               supernode_keys=(kit / SUPERNODE_KEY).exists())
    shutil.rmtree(kit)
    staging.rename(kit)
    return TrustUpdate(party, int(entry["certificate_serial"], 16), manifest["version"],
                       manifest["crl_number"], (*kits, kit))


def expiry_warnings(
    kit: StartupKit, *, now: datetime | None = None, within_days: int = EXPIRY_WARN_DAYS
) -> list[str]:
    """One line for each of the kit's certificates (its own, the CA's) that expires within
    ``within_days`` days of ``now``; empty when none does. Nodes log these at start and on
    SIGHUP and put them in their health answer, so a renewal is not found out by an outage."""
    now = _utc(now)
    lines = []
    for what, pem, f in (("TLS certificate", kit.cert_pem, TLS_CERT),
                         ("CA certificate", kit.ca_pem, CA_CERT)):
        end = x509.load_pem_x509_certificate(pem).not_valid_after_utc
        left = end - now
        if left <= timedelta(days=within_days):
            days = max(0, left.days)
            lines.append(f"{kit.party}'s {what} {kit.path / f} expires on {end.isoformat()} "
                         f"(in {days} day{'s' if days != 1 else ''}; warning at {within_days}): "
                         f"renew it with `fedscore provision rotate --party {kit.party}`"
                         if what == "TLS certificate" else
                         f"{kit.party}'s {what} {kit.path / f} expires on {end.isoformat()} "
                         f"(in {days} day{'s' if days != 1 else ''}; warning at {within_days}):"
                         " the federation must be re-provisioned")
    return lines


def log_expiry(kit: StartupKit, log: logging.Logger, within_days: int = EXPIRY_WARN_DAYS,
               now: datetime | None = None) -> list[str]:
    """Log :func:`expiry_warnings` at WARNING (event ``certificate-expiry``); return them."""
    lines = expiry_warnings(kit, now=now, within_days=within_days)
    for line in lines:
        log.warning("%s", line, extra={"event": "certificate-expiry"})
    return lines


def reload_logged(kit: StartupKit, log: logging.Logger,
                  within_days: int = EXPIRY_WARN_DAYS) -> str:
    """A node's SIGHUP: :func:`reload_trust`, logged either way (a refused reload keeps the
    loaded manifest and list), then the expiry warnings. Returns the line it logged, which
    starts with ``trust: `` (servers print it too)."""
    try:
        new = reload_trust(kit)
    except KitError as exc:
        cur = kit.trust
        line = (f"trust: not reloaded, manifest version {cur.version} and revocation list "
                f"{cur.crl_number} stay: {exc}")
        log.warning("%s", line, extra={"event": "trust-reload-refused"})
    else:
        line = (f"trust: manifest version {new.version}, revocation list {new.crl_number} "
                f"({len(new.revoked)} revoked), {len(new.peers)} parties")
        log.info("%s", line, extra={"event": "trust-reload"})
    log_expiry(kit, log, within_days)
    return line
