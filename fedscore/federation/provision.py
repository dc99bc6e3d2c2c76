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
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
KIT_FILES = (CA_CERT, TLS_CERT, TLS_KEY, SEALING_KEY, SIGNING_KEY, MANIFEST, MANIFEST_SIG, KIT_INFO)

_PARTY_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_CLOCK_SKEW = timedelta(minutes=5)


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
class StartupKit:
    """A validated startup kit: everything one node needs to join the federation."""

    party: str
    role: str
    path: Path
    federation: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    sealing_key: SealingPrivateKey
    signing_key: SigningPrivateKey
    peers: Mapping[str, PeerInfo]

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
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "federation": federation,
        "created": now.isoformat(),
        "parties": [
            {
                "name": n,
                "role": role_of(n),
                "sealing_public_key": sealing[n].public_bytes().hex(),
                "signing_public_key": signing[n].public_bytes().hex(),
            }
            for n in names
        ],
    }
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    manifest_sig = ca_key.sign(manifest_bytes)

    ca_dir = out / CA_DIR
    ca_dir.mkdir(mode=0o700)
    _write_private(ca_dir / CA_KEY, ca_key.to_pem())
    _write_public(ca_dir / CA_CERT, ca_pem)

    for n in names:
        kit = out / n
        kit.mkdir(mode=0o700)
        tls_key = CertificateKey.generate()
        cert = _tls_cert(ca_key, ca_cert, tls_key, n, federation, host_list, now, valid_days)
        _write_public(kit / CA_CERT, ca_pem)
        _write_public(kit / TLS_CERT, certificate_pem(cert))
        _write_private(kit / TLS_KEY, tls_key.to_pem())
        _write_private(kit / SEALING_KEY, sealing[n].to_pem())
        _write_private(kit / SIGNING_KEY, signing[n].to_pem())
        _write_public(kit / MANIFEST, manifest_bytes)
        _write_public(kit / MANIFEST_SIG, manifest_sig)
        info = {"party": n, "federation": federation}
        _write_public(kit / KIT_INFO, (json.dumps(info, indent=2) + "\n").encode())
        if supernode_keys and role_of(n) == "bank":
            private, public = supernode_auth_keypair()
            _write_private(kit / SUPERNODE_KEY, private)
            _write_public(kit / SUPERNODE_PUB, public)
    return out


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

    try:
        verify_with_certificate(ca, raw[MANIFEST_SIG], raw[MANIFEST])
    except SignatureError:
        raise KitError(
            f"{path / MANIFEST}: signature {path / MANIFEST_SIG} does not verify under the "
            f"kit's CA; the manifest was tampered with or comes from another federation"
        ) from None
    federation, peers = _parse_manifest(path / MANIFEST, raw[MANIFEST])
    info_fed = _str_field(info, "federation", path / KIT_INFO)
    if info_fed != federation:
        raise KitError(
            f"{path / KIT_INFO}: federation {info_fed!r} but {MANIFEST} is for {federation!r}"
        )
    if kit_party not in peers:
        raise KitError(f"{path / MANIFEST}: party {kit_party!r} is not in the federation")
    me = peers[kit_party]
    if sealing_key.public_key() != me.sealing_public:
        raise KitError(
            f"{path / SEALING_KEY}: public key does not match {kit_party}'s sealing key in "
            f"{MANIFEST}"
        )
    if signing_key.verify_key() != me.verify_key:
        raise KitError(
            f"{path / SIGNING_KEY}: public key does not match {kit_party}'s signing key in "
            f"{MANIFEST}"
        )
    return StartupKit(
        party=kit_party,
        role=me.role,
        path=path,
        federation=federation,
        ca_pem=raw[CA_CERT],
        cert_pem=raw[TLS_CERT],
        key_pem=raw[TLS_KEY],
        sealing_key=sealing_key,
        signing_key=signing_key,
        peers=peers,
    )


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


def _parse_manifest(f: Path, data: bytes) -> tuple[str, dict[str, PeerInfo]]:
    obj = _json(f, data)
    fmt = obj.get("format")
    if fmt != MANIFEST_FORMAT:
        raise KitError(f"{f}: field 'format' is {fmt!r}, expected {MANIFEST_FORMAT!r}")
    federation = _str_field(obj, "federation", f)
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
        peers[name] = PeerInfo(name=name, role=role, sealing_public=seal, verify_key=verify)
    return federation, peers
