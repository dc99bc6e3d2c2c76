"""Signed releases: a round trip verifies; any change to any file, or another signer, is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedscore.crypto.primitives import SigningPrivateKey
from fedscore.federation.release import (
    FORMAT,
    MANIFEST,
    MODEL_FILE,
    PREPROCESSING_FILE,
    SIGNATURE,
    ReleaseError,
    verify_release,
    write_release,
)
from fedscore.federation.statistics import PooledStatistics

KEY = SigningPrivateKey.generate()


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]


def _write(folder: Path, key: SigningPrivateKey = KEY) -> dict:
    return write_release(
        folder, _arrays(), signer=key, signer_name="coordinator", run_id="run-7", round_=3,
        platform_version="r3-0123abcd",
        fingerprints={"bank-2": "f2" * 32, "bank-1": "f1" * 32},
        metrics={"pooled_auc": 0.78, "n_test": 6000},
        config={"num-rounds": 3, "local-epochs": 2},
        statistics=PooledStatistics("ab" * 32, np.arange(14.0), 2),
    )


@pytest.fixture()
def release(tmp_path: Path) -> Path:
    _write(tmp_path / "release")
    return tmp_path / "release"


def test_round_trip(tmp_path: Path) -> None:
    written = _write(tmp_path / "release")
    manifest, arrays = verify_release(tmp_path / "release", KEY.verify_key())
    assert manifest == written
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == [
        MODEL_FILE, MANIFEST, SIGNATURE, PREPROCESSING_FILE]
    assert manifest["preprocessing_layout"] == "ab" * 32
    assert manifest["format"] == FORMAT
    assert manifest["version"] == "run-7-r0003"
    assert manifest["run_id"] == "run-7" and manifest["round"] == 3
    assert manifest["platform_model_version"] == "r3-0123abcd"
    assert manifest["preprocessing_fingerprints"] == {"bank-1": "f1" * 32, "bank-2": "f2" * 32}
    assert manifest["metrics"] == {"pooled_auc": 0.78, "n_test": 6000}
    assert manifest["config"] == {"num-rounds": 3, "local-epochs": 2}
    assert manifest["signed_by"] == "coordinator"
    assert len(arrays) == 2
    for got, want in zip(arrays, _arrays(), strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_write_replaces_an_old_release(tmp_path: Path) -> None:
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "stale.bin").write_bytes(b"old")
    _write(folder)
    assert not (folder / "stale.bin").exists()
    verify_release(folder, KEY.verify_key())


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [MODEL_FILE, PREPROCESSING_FILE])
@pytest.mark.parametrize("at", [0, 100, -1])
def test_file_byte_flip_is_refused(release: Path, name: str, at: int) -> None:
    _flip(release / name, at)
    with pytest.raises(ReleaseError, match=name):
        verify_release(release, KEY.verify_key())


def test_weights_swapped_for_other_valid_weights_are_refused(release: Path) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, *[a + 1 for a in _arrays()])
    (release / MODEL_FILE).write_bytes(buf.getvalue())
    with pytest.raises(ReleaseError, match="altered"):
        verify_release(release, KEY.verify_key())


@pytest.mark.parametrize("edit", ["round", "platform", "fingerprint", "hash", "whitespace"])
def test_manifest_edit_is_refused(release: Path, edit: str) -> None:
    path = release / MANIFEST
    doc = json.loads(path.read_text())
    if edit == "round":
        doc["round"] = 4
    elif edit == "platform":
        doc["platform_model_version"] = "r3-ffffffff"
    elif edit == "fingerprint":
        doc["preprocessing_fingerprints"]["bank-1"] = "00" * 32
    elif edit == "hash":  # point the manifest at tampered weights
        _flip(release / MODEL_FILE, 50)
        import hashlib

        doc["files"][MODEL_FILE] = hashlib.sha256((release / MODEL_FILE).read_bytes()).hexdigest()
    if edit == "whitespace":
        path.write_bytes(path.read_bytes() + b" ")
    else:
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    with pytest.raises(ReleaseError, match="signature"):
        verify_release(release, KEY.verify_key())


@pytest.mark.parametrize("at", [0, 31, 63])
def test_signature_byte_flip_is_refused(release: Path, at: int) -> None:
    assert len((release / SIGNATURE).read_bytes()) == 64  # Ed25519
    _flip(release / SIGNATURE, at)
    with pytest.raises(ReleaseError, match="signature"):
        verify_release(release, KEY.verify_key())


def test_truncated_signature_is_refused(release: Path) -> None:
    (release / SIGNATURE).write_bytes((release / SIGNATURE).read_bytes()[:-1])
    with pytest.raises(ReleaseError):
        verify_release(release, KEY.verify_key())


@pytest.mark.parametrize("name", [MODEL_FILE, PREPROCESSING_FILE, MANIFEST, SIGNATURE])
def test_missing_file_is_refused(release: Path, name: str) -> None:
    (release / name).unlink()
    with pytest.raises(ReleaseError, match=r"missing|incomplete"):
        verify_release(release, KEY.verify_key())


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="incomplete"):
        verify_release(tmp_path / "nowhere", KEY.verify_key())


def test_another_coordinator_key_is_refused(release: Path, tmp_path: Path) -> None:
    other = SigningPrivateKey.generate()
    with pytest.raises(ReleaseError, match="signature"):
        verify_release(release, other.verify_key())
    # a release re-signed by someone else does not pass for the coordinator's
    _write(tmp_path / "forged", key=other)
    verify_release(tmp_path / "forged", other.verify_key())
    with pytest.raises(ReleaseError, match="signature"):
        verify_release(tmp_path / "forged", KEY.verify_key())
    # nor does splicing that signature (or manifest) into the genuine release
    shutil.copy(tmp_path / "forged" / SIGNATURE, release / SIGNATURE)
    with pytest.raises(ReleaseError, match="signature"):
        verify_release(release, KEY.verify_key())


def test_wrong_format_is_refused_even_when_signed(tmp_path: Path) -> None:
    folder = tmp_path / "release"
    _write(folder)
    doc = json.loads((folder / MANIFEST).read_text())
    doc["format"] = "fedscore-release/0"
    body = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    (folder / MANIFEST).write_bytes(body)
    (folder / SIGNATURE).write_bytes(KEY.sign(body))
    with pytest.raises(ReleaseError, match="format"):
        verify_release(folder, KEY.verify_key())
