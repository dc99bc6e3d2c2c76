"""The platform's durable store of committed federated models (unit tests, on tmp_path)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

from fedscore.wire.limits import quote
from platform_node.model_store import (
    ModelStore,
    StoreError,
    UnknownVersion,
    check_run_id,
    model_version,
    round_of_version,
)

VERSION = re.compile(r"r(\d+)-[0-9a-f]{12}")


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(4, 3, generator=g),
        "layer.bias": torch.randn(4, generator=g),
        "embedding.weight": torch.randn(5, 2, generator=g, dtype=torch.float64),
        "steps": torch.tensor([seed, seed + 1], dtype=torch.int64),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_load_round_trip_and_version_format(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    state = _state(1)
    version = store.save("run-a", 1, state)

    match = VERSION.fullmatch(version)
    assert match is not None and int(match.group(1)) == 1
    assert version == model_version(1, state)
    assert round_of_version(version) == 1

    loaded = store.load("run-a", 1)
    _assert_same(loaded, state)
    # load hands out a copy: changing it does not change the store
    loaded["layer.weight"].add_(1.0)
    _assert_same(store.load("run-a", 1), state)
    # the caller's tensors were copied too
    state["layer.bias"].zero_()
    assert not torch.equal(store.load("run-a", 1)["layer.bias"], state["layer.bias"])

    assert store.last("run-a") == (1, version)
    assert store.version("run-a", 1) == version
    assert store.version("run-a", 2) is None
    assert store.version("other", 1) is None
    assert store.last("other") is None


def test_version_names_the_content(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    a, b = _state(1), _state(2)
    va = store.save("run", 1, a)
    # same weights, another round: another version (round is part of the name)
    assert model_version(2, a) != va and model_version(2, a).startswith("r2-")
    # same round, another content: another version
    assert model_version(1, b) != va
    # one changed element changes the version
    nudged = {k: v.clone() for k, v in a.items()}
    nudged["layer.weight"][0, 0] += 1e-6
    assert model_version(1, nudged) != va
    # the version is computed from the weights, not from the dict's key order
    assert model_version(1, dict(reversed(list(a.items())))) == va
    # a re-save of identical weights yields the same version
    assert store.save("run", 1, _state(1)) == va


def test_round_zero_is_stored_but_not_a_finished_round(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    v0 = store.save("run", 0, _state(0))
    assert v0.startswith("r0-")
    assert store.last("run") is None
    _assert_same(store.load("run", 0), _state(0))
    v1 = store.save("run", 1, _state(1))
    assert store.last("run") == (1, v1)
    assert store.version("run", 0) == v0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state == {"last_round": 1, "version": v1, "rounds": {"0": v0, "1": v1}}


def test_restart_reloads_state_and_identical_tensors(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    versions = {r: store.save("run-a", r, _state(r)) for r in range(4)}
    other = store.save("run-b", 1, _state(10))
    del store

    again = ModelStore(tmp_path)
    assert again.last("run-a") == (3, versions[3])
    assert again.last("run-b") == (1, other)
    for r, version in versions.items():
        assert again.version("run-a", r) == version
        loaded = again.load("run-a", r)  # read from disk, not from a cache
        _assert_same(loaded, _state(r))
        assert model_version(r, loaded) == version
    assert again.find(other) == ("run-b", 1)
    _assert_same(again.by_version(versions[2]), _state(2))
    # the restarted store keeps working: a next round lands after the reloaded ones
    v4 = again.save("run-a", 4, _state(4))
    assert ModelStore(tmp_path).last("run-a") == (4, v4)


def test_resaving_a_round_drops_the_later_rounds(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    old = {r: store.save("run", r, _state(r)) for r in range(4)}  # rounds 0..3
    new2 = store.save("run", 2, _state(20))
    assert new2 != old[2]

    for s in (store, ModelStore(tmp_path)):  # in memory and after a restart
        assert s.last("run") == (2, new2)
        assert s.version("run", 3) is None
        assert s.version("run", 1) == old[1] and s.version("run", 0) == old[0]
        _assert_same(s.load("run", 2), _state(20))
        _assert_same(s.load("run", 1), _state(1))
        with pytest.raises(StoreError, match="no model for round 3"):
            s.load("run", 3)
        with pytest.raises(UnknownVersion):
            s.find(old[3])
        with pytest.raises(UnknownVersion):
            s.find(old[2])
    assert _files(tmp_path / "run") == [
        "round-0000.pt",
        "round-0001.pt",
        "round-0002.pt",
        "state.json",
    ]


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for r in range(3):
        store.save("run", r, _state(r))
    store.save("run", 1, _state(11))  # rewrites round 1 and state.json, drops round 2
    store.save("run", 1, _state(12))
    assert _files(tmp_path) == ["run"]
    assert _files(tmp_path / "run") == ["round-0000.pt", "round-0001.pt", "state.json"]
    assert not list(tmp_path.rglob("*.tmp"))
    assert not list(tmp_path.rglob(".*"))


def test_memory_only_store_writes_nothing(tmp_path: Path) -> None:
    store = ModelStore(None)
    version = store.save("run", 1, _state(1))
    _assert_same(store.by_version(version), _state(1))
    assert store.find(version) == ("run", 1)
    assert ModelStore(tmp_path).last("run") is None
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "damage",
    ["garbage", "empty", "truncated", "bit-flip", "other-weights", "not-a-state-dict"],
)
def test_a_corrupted_round_file_is_a_store_error_naming_the_file(
    tmp_path: Path, damage: str
) -> None:
    ModelStore(tmp_path).save("run", 1, _state(1))
    path = tmp_path / "run" / "round-0001.pt"
    data = path.read_bytes()
    if damage == "garbage":
        bad = b"this is not a torch file"
    elif damage == "empty":
        bad = b""
    elif damage == "truncated":
        bad = data[: len(data) // 2]
    elif damage == "bit-flip":  # one bit of the stored weights, the archive stays valid
        at = data.find(_state(1)["layer.weight"].numpy().tobytes())
        assert at > 0
        flipped = bytearray(data)
        flipped[at + 5] ^= 0x01
        bad = bytes(flipped)
    else:
        payload: object = _state(2) if damage == "other-weights" else {"w": [1, 2, 3]}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        bad = buffer.getvalue()
    path.write_bytes(bad)

    # state.json is intact: the store reads every model it names when it opens, so the
    # platform refuses to start rather than failing every query for this model
    with pytest.raises(StoreError) as info:
        ModelStore(tmp_path)
    assert str(path) in str(info.value)


def test_a_missing_round_file_is_a_store_error(tmp_path: Path) -> None:
    ModelStore(tmp_path).save("run", 1, _state(1))
    path = tmp_path / "run" / "round-0001.pt"
    path.unlink()
    with pytest.raises(StoreError, match=re.escape(str(path)) + ": missing"):
        ModelStore(tmp_path)


def test_a_corrupted_state_file_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    ModelStore(tmp_path).save("run", 1, _state(1))
    state_file = tmp_path / "run" / "state.json"
    for bad in ("{not json", "[]", '{"last_round": 2, "rounds": {"1": "r1-000000000000"}}'):
        state_file.write_text(bad)
        with pytest.raises(StoreError, match=re.escape(str(state_file))):
            ModelStore(tmp_path)


@pytest.mark.parametrize(
    "run_id", ["../x", "", "a/b", "..", ".", "/abs", "-x", "a" * 129, "a b", "a\\b"]
)
def test_invalid_run_ids_are_rejected_with_a_clear_message(tmp_path: Path, run_id: str) -> None:
    store = ModelStore(tmp_path)
    message = rf"invalid run id {re.escape(quote(run_id))}: use 1-128 letters, digits"
    with pytest.raises(StoreError, match=message):
        check_run_id(run_id)
    with pytest.raises(StoreError, match=message):
        store.save(run_id, 1, _state(1))
    with pytest.raises(StoreError, match=message):
        store.load(run_id, 1)
    with pytest.raises(StoreError, match=message):
        store.last(run_id)
    with pytest.raises(StoreError, match=message):
        store.version(run_id, 1)
    # nothing was written anywhere, inside the root or next to it
    assert not list(tmp_path.iterdir())
    assert not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("run_id", ["a", "run-1", "R_2.b", "0", "a" * 128])
def test_valid_run_ids(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


def test_find_and_by_version_across_runs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    va = store.save("alpha", 1, _state(1))
    vb0 = store.save("beta", 0, _state(5))
    vb1 = store.save("beta", 1, _state(6))
    assert store.find(va) == ("alpha", 1)
    assert store.find(vb0) == ("beta", 0)
    assert store.find(vb1) == ("beta", 1)
    _assert_same(store.by_version(vb0), _state(5))
    _assert_same(store.by_version(vb1), _state(6))
    _assert_same(store.by_version(va), _state(1))


@pytest.mark.parametrize(
    "version", ["r1-000000000000", "r9-abcdefabcdef", "r1-ABCDEFABCDEF", "nonsense", "", "r1-abc"]
)
def test_unknown_versions(tmp_path: Path, version: str) -> None:
    store = ModelStore(tmp_path)
    store.save("run", 1, _state(1))
    with pytest.raises(UnknownVersion):
        store.find(version)
    with pytest.raises(UnknownVersion):
        store.by_version(version)
    assert issubclass(UnknownVersion, StoreError)


def test_a_version_of_another_round_is_unknown(tmp_path: Path) -> None:
    """The round in a version must be the round it is stored under."""
    store = ModelStore(tmp_path)
    v1 = store.save("run", 1, _state(1))
    forged = "r2-" + v1.split("-", 1)[1]
    with pytest.raises(UnknownVersion, match=re.escape(repr(forged))):
        store.find(forged)


def test_negative_rounds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="round must be >= 0"):
        ModelStore(tmp_path).save("run", -1, _state(1))
