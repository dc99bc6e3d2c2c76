"""The platform's kept states of resumable trainings: per bank and key, bounded, durable."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from platform_node.training_store import (
    KEEP_EPOCHS,
    MAX_KEY_CHARS,
    MAX_KEYS,
    TrainingStateError,
    TrainingStore,
)


def _state(v: float) -> dict[str, object]:
    return {"w": torch.full((2, 2), v), "steps": 3, "nested": {"0": torch.ones(1)}}


@pytest.mark.parametrize("on_disk", [True, False])
def test_states_are_kept_per_bank_and_key_and_bounded(tmp_path: Path, on_disk: bool) -> None:
    store = TrainingStore(tmp_path / "training" if on_disk else None)
    for epochs in range(1, 5):
        store.save("bank-1", "k/search", epochs, _state(float(epochs)))
    # the last KEEP_EPOCHS states only (the bank may be one epoch behind)
    for epochs in (1, 2):
        with pytest.raises(TrainingStateError, match=f"after epoch {epochs}"):
            store.load("bank-1", "k/search", epochs)
    for epochs in range(5 - KEEP_EPOCHS, 5):
        assert torch.equal(store.load("bank-1", "k/search", epochs)["w"],  # type: ignore[arg-type]
                           torch.full((2, 2), float(epochs)))
    # another bank cannot resume from bank-1's state under the same key
    with pytest.raises(TrainingStateError) as info:
        store.load("bank-2", "k/search", 4)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # at most MAX_KEYS keys per bank: the oldest goes
    for i in range(MAX_KEYS):
        store.save("bank-1", f"other-{i}", 1, _state(0.0))
    with pytest.raises(TrainingStateError):
        store.load("bank-1", "k/search", 4)
    store.load("bank-1", f"other-{MAX_KEYS - 1}", 1)
    store.forget("bank-1", f"other-{MAX_KEYS - 1}")
    with pytest.raises(TrainingStateError):
        store.load("bank-1", f"other-{MAX_KEYS - 1}", 1)
    if on_disk:  # the files are bounded as well
        assert len(list((tmp_path / "training" / "bank-1").iterdir())) <= MAX_KEYS * KEEP_EPOCHS


def test_states_survive_a_new_store_and_a_torn_file_is_refused(tmp_path: Path) -> None:
    TrainingStore(tmp_path).save("bank-1", "key", 3, _state(7.0))
    again = TrainingStore(tmp_path)  # the platform restarted
    assert torch.equal(again.load("bank-1", "key", 3)["w"], torch.full((2, 2), 7.0))  # type: ignore[arg-type]
    (path,) = (tmp_path / "bank-1").iterdir()
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(TrainingStateError, match="unreadable; start afresh"):
        again.load("bank-1", "key", 3)


@pytest.mark.parametrize("key", ["", "x" * (MAX_KEY_CHARS + 1)])
def test_a_malformed_key_is_refused(key: str) -> None:
    with pytest.raises(TrainingStateError) as info:
        TrainingStore(None).save("bank-1", key, 1, _state(0.0))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
