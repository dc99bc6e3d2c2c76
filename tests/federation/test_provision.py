"""Tests for fedscore.federation.provision: kit layout, permissions, and load_kit refusals."""

from __future__ import annotations

import json
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from fedscore.crypto.primitives import Direction, Opener, Sealer, derive_session_key, new_session_id
from fedscore.federation.provision import (
    DEFAULT_PARTIES,
    KitError,
    ProvisionError,
    load_kit,
    provision,
    role_of,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
KIT_FILES = {
    "ca.crt",
    "tls.crt",
    "tls.key",
    "sealing.key",
    "signing.key",
    "federation.json",
    "federation.sig",
    "kit.json",
    "revoked.crl",
}
PRIVATE = {"tls.key", "sealing.key", "signing.key"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision(tmp_path_factory.mktemp("fed") / "out", now=NOW)


@pytest.fixture(scope="module")
def other_fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision(tmp_path_factory.mktemp("other") / "out", federation="other", now=NOW)


def _copy_kit(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_layout_and_permissions(fed: Path) -> None:
    assert sorted(p.name for p in fed.iterdir()) == sorted([*DEFAULT_PARTIES, "ca"])
    assert {p.name for p in (fed / "ca").iterdir()} == {
        "ca.key", "ca.crt", "federation.json", "federation.sig", "revoked.crl"}
    assert stat.S_IMODE((fed / "ca" / "ca.key").stat().st_mode) == 0o600
    for party in DEFAULT_PARTIES:
        kit = fed / party
        assert {p.name for p in kit.iterdir()} == KIT_FILES
        assert "ca.key" not in {p.name for p in kit.iterdir()}
        for name in PRIVATE:
            assert stat.S_IMODE((kit / name).stat().st_mode) == 0o600, f"{party}/{name}"
        assert (kit / "ca.crt").read_bytes() == (fed / "ca" / "ca.crt").read_bytes()


def test_certificates(fed: Path) -> None:
    ca = x509.load_pem_x509_certificate((fed / "ca" / "ca.crt").read_bytes())
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    cert = x509.load_pem_x509_certificate((fed / "bank-2" / "tls.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "bank-2"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["bank-2", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {
        x509.ExtendedKeyUsageOID.SERVER_AUTH,
        x509.ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)


def test_manifest_lists_every_party(fed: Path) -> None:
    manifest = json.loads((fed / "platform" / "federation.json").read_text())
    assert manifest["federation"] == "fedscore-demo"
    roles = {p["name"]: p["role"] for p in manifest["parties"]}
    assert roles == {
        "platform": "platform",
        "bank-1": "bank",
        "bank-2": "bank",
        "bank-3": "bank",
        "coordinator": "coordinator",
    }


def test_load_kit_and_peers_agree_on_session_keys(fed: Path) -> None:
    bank = load_kit(fed / "bank-1", now=NOW)
    plat = load_kit(fed / "platform", now=NOW, party="platform")
    assert (bank.party, bank.role, bank.federation) == ("bank-1", "bank", "fedscore-demo")
    assert set(bank.peers) == set(DEFAULT_PARTIES)
    assert bank.peers["platform"] == plat.peers["platform"]
    assert bank.peers["bank-1"].sealing_public == bank.sealing_key.public_key()
    sid = new_session_id()
    k_bank = derive_session_key(bank.sealing_key, bank.peer("platform").sealing_public, sid)
    k_plat = derive_session_key(plat.sealing_key, plat.peer("bank-1").sealing_public, sid)
    box = Sealer(k_bank, sid, Direction.BANK_TO_PLATFORM).seal(b"emb", round=0, batch=0)
    assert Opener(k_plat, sid, Direction.BANK_TO_PLATFORM).open(box) == b"emb"
    sig = bank.signing_key.sign(b"entry")
    plat.peer("bank-1").verify_key.verify(sig, b"entry")
    with pytest.raises(KitError, match="no party 'bank-9'"):
        bank.peer("bank-9")


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    out = provision(tmp_path / "f", parties=["platform", "bank-1"], now=NOW)
    old = (out / "bank-1" / "sealing.key").read_bytes()
    with pytest.raises(ProvisionError, match=r"already exist.*--force"):
        provision(out, parties=["platform", "bank-1"], now=NOW)
    assert (out / "bank-1" / "sealing.key").read_bytes() == old
    provision(out, parties=["platform", "bank-1"], now=NOW, force=True)
    assert (out / "bank-1" / "sealing.key").read_bytes() != old
    load_kit(out / "bank-1", now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"parties": ["platform", "Bank_1"]}, "lowercase"),
        ({"parties": ["platform", "auditor"]}, "role is known"),
        ({"parties": ["bank-1", "bank-1"]}, "duplicate"),
        ({"parties": ["platform", "platform-2"]}, "more than one platform"),
        ({"hosts": ["bank-1"]}, "also a party name"),
        ({"hosts": ["bad host!"]}, "DNS name or an IP"),
        ({"valid_days": 0}, "at least 1"),
    ],
)
def test_provision_rejects_bad_input(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ProvisionError, match=message):
        provision(tmp_path / "x", now=NOW, **kwargs)
    assert not (tmp_path / "x" / "ca").exists()


def test_role_of() -> None:
    assert role_of("bank-7") == "bank"
    assert role_of("coordinator") == "coordinator"
    with pytest.raises(ProvisionError):
        role_of("banker")


def test_cli(tmp_path: Path) -> None:
    import typer

    from fedscore.cli.provision import provision_app

    app = typer.Typer()
    app.add_typer(provision_app, name="provision")
    app.command("noop")(lambda: None)
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["provision", "--out", str(out), "-p", "platform", "-p", "bank-1", "--host", "node.lan"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    kit = load_kit(out / "bank-1")
    assert set(kit.peers) == {"platform", "bank-1"}
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert "already exist" in res.output


# ------------------------------------------------------------------------------------------
# load_kit refusals
# ------------------------------------------------------------------------------------------


def test_missing_file(fed: Path, tmp_path: Path) -> None:
    kit = _copy_kit(fed / "bank-1", tmp_path / "bank-1")
    (kit / "signing.key").unlink()
    with pytest.raises(KitError, match=r"signing\.key: missing"):
        load_kit(kit, now=NOW)
    with pytest.raises(KitError, match="directory not found"):
        load_kit(tmp_path / "nope", now=NOW)


def test_unparseable_pem(fed: Path, tmp_path: Path) -> None:
    kit = _copy_kit(fed / "bank-1", tmp_path / "bank-1")
    (kit / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
    with pytest.raises(KitError, match=r"tls\.crt: not a readable PEM certificate"):
        load_kit(kit, now=NOW)
    kit2 = _copy_kit(fed / "bank-1", tmp_path / "k2")
    (kit2 / "sealing.key").write_bytes((kit2 / "signing.key").read_bytes())
    with pytest.raises(KitError, match=r"sealing\.key: expected an X25519 private key"):
        load_kit(kit2, now=NOW)


def test_other_ca_swapped_in(fed: Path, other_fed: Path, tmp_path: Path) -> None:
    kit = _copy_kit(fed / "bank-1", tmp_path / "a")
    shutil.copy(other_fed / "ca" / "ca.crt", kit / "ca.crt")
    with pytest.raises(KitError, match=r"tls\.crt: not signed by the kit's CA"):
        load_kit(kit, now=NOW)
    kit = _copy_kit(fed / "bank-1", tmp_path / "b")
    for name in ("tls.crt", "tls.key"):
        shutil.copy(other_fed / "bank-1" / name, kit / name)
    with pytest.raises(KitError, match=r"tls\.crt: not signed by the kit's CA"):
        load_kit(kit, now=NOW)


def test_expired_and_not_yet_valid(fed: Path) -> None:
    with pytest.raises(KitError, match=r"ca\.crt: certificate expired"):
        load_kit(fed / "bank-1", now=NOW + timedelta(days=366))
    with pytest.raises(KitError, match="not valid yet"):
        load_kit(fed / "bank-1", now=NOW - timedelta(days=1))


def test_cert_of_another_party(fed: Path, tmp_path: Path) -> None:
    kit = _copy_kit(fed / "bank-1", tmp_path / "bank-1")
    for name in ("tls.crt", "tls.key"):
        shutil.copy(fed / "bank-2" / name, kit / name)
    with pytest.raises(KitError, match="CN is 'bank-2' but this kit is for 'bank-1'"):
        load_kit(kit, now=NOW)
    with pytest.raises(KitError, match="this kit is for 'bank-1', expected 'platform'"):
        load_kit(fed / "bank-1", now=NOW, party="platform")


def test_tls_key_not_matching_cert(fed: Path, tmp_path: Path) -> None:
    kit = _copy_kit(fed / "bank-1", tmp_path / "bank-1")
    shutil.copy(fed / "bank-2" / "tls.key", kit / "tls.key")
    with pytest.raises(KitError, match=r"tls\.key: private key does not match"):
        load_kit(kit, now=NOW)


def test_tampered_manifest(fed: Path, tmp_path: Path) -> None:
    kit = _copy_kit(fed / "bank-1", tmp_path / "bank-1")
    manifest = json.loads((kit / "federation.json").read_text())
    # An attacker swaps the platform's sealing key for their own.
    manifest["parties"][0]["sealing_public_key"] = "11" * 32
    (kit / "federation.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(KitError, match=r"federation\.json: signature .* does not verify"):
        load_kit(kit, now=NOW)


def test_manifest_from_other_federation(fed: Path, other_fed: Path, tmp_path: Path) -> None:
    kit = _copy_kit(fed / "bank-1", tmp_path / "bank-1")
    for name in ("federation.json", "federation.sig"):
        shutil.copy(other_fed / "bank-1" / name, kit / name)
    with pytest.raises(KitError, match="does not verify"):
        load_kit(kit, now=NOW)


def test_own_keys_must_match_manifest(fed: Path, tmp_path: Path) -> None:
    kit = _copy_kit(fed / "bank-1", tmp_path / "bank-1")
    shutil.copy(fed / "bank-2" / "sealing.key", kit / "sealing.key")
    with pytest.raises(KitError, match=r"sealing\.key: public key does not match bank-1's"):
        load_kit(kit, now=NOW)
    kit = _copy_kit(fed / "bank-1", tmp_path / "k2")
    shutil.copy(fed / "bank-2" / "signing.key", kit / "signing.key")
    with pytest.raises(KitError, match=r"signing\.key: public key does not match"):
        load_kit(kit, now=NOW)


def test_a_kit_from_before_revocation_lists_still_loads(fed: Path, tmp_path: Path) -> None:
    """A manifest without version, crl_number, history and certificate serials (as
    provisioned before revocation support), signed by the CA, and no revoked.crl: the
    kit loads with nothing revoked; the same manifest asking for a list does not load
    without one."""
    from fedscore.crypto.primitives import CertificateKey

    kit = _copy_kit(fed / "bank-1", tmp_path / "bank-1")
    ca_key = CertificateKey.from_file(fed / "ca" / "ca.key")
    manifest = json.loads((kit / "federation.json").read_text())
    for key in ("version", "crl_number", "history"):
        del manifest[key]
    for party in manifest["parties"]:
        del party["certificate_serial"]
    (kit / "revoked.crl").unlink()

    def sign(doc: dict[str, object]) -> None:
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        (kit / "federation.json").write_bytes(data)
        (kit / "federation.sig").write_bytes(ca_key.sign(data))

    sign(manifest)
    loaded = load_kit(kit, now=NOW)
    assert (loaded.trust.version, loaded.trust.crl_number, loaded.trust.revoked) == (
        0, 0, frozenset())
    assert set(loaded.peers) == set(DEFAULT_PARTIES)
    sign({**manifest, "crl_number": 1})
    with pytest.raises(KitError, match=r"revoked\.crl: missing"):
        load_kit(kit, now=NOW)
    sign({**manifest, "version": -1})
    with pytest.raises(KitError, match="'version' must be a whole number"):
        load_kit(kit, now=NOW)
