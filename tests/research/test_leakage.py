"""Leakage measurement: the attacks find leaks where there are some and none elsewhere,
the recording link is transparent, and noise on the embeddings lowers inversion."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from fedscore.data.synth import synth_population
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.training import TrainConfig
from fedscore.research import leakage
from fedscore.research.baselines import (
    PlatformSide,
    Scenario,
    align,
    load_scenario,
    train_and_score,
)

SMALL = TrainConfig(epochs=5, patience=2, refit=False, seed=0)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    root = tmp_path_factory.mktemp("leakage")
    synth_population(root, people=3000, banks=2, seed=3)
    return load_scenario(root)


# ------------------------------------------------------------------ inversion attack
def test_inversion_recovers_a_linear_feature_and_nothing_from_noise() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 8))
    linear = emb @ rng.normal(size=8) + 0.1 * rng.normal(size=3000)
    linear[rng.random(3000) < 0.1] = np.nan  # missing targets are skipped, not fatal
    noise = rng.normal(size=3000)
    raw = np.column_stack([linear, noise])
    r = leakage.embedding_inversion(emb, raw, ["linear", "noise"], seed=1)
    assert set(r) == {"linear", "noise", leakage.MEAN_R2}
    assert r["linear"] > 0.9
    assert -0.1 < r["noise"] < 0.1
    assert r[leakage.MEAN_R2] == pytest.approx((r["linear"] + r["noise"]) / 2)


def test_inversion_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="same n"):
        leakage.embedding_inversion(np.zeros((10, 2)), np.zeros((9, 1)), ["a"])
    with pytest.raises(ValueError, match="finite"):
        leakage.embedding_inversion(np.full((30, 2), np.nan), np.zeros((30, 1)), ["a"])


# ------------------------------------------------------------------- label attacks
def test_norm_attack_reads_labels_from_norms_only_when_they_depend_on_them() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.2).astype(int)
    directions = rng.normal(size=(2000, 16))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    scale = np.where(y == 1, 3.0, 1.0) * rng.uniform(0.8, 1.2, 2000)
    leaky = leakage.label_leakage(directions * scale[:, None], y)
    assert leaky["norm_auc"] > 0.9
    blind = leakage.label_leakage(rng.normal(size=(2000, 16)), y)
    assert blind["norm_auc"] < 0.6
    assert blind["cosine_auc"] < 0.6


def test_cosine_attack_reads_labels_from_directions() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.3).astype(int)
    axis = rng.normal(size=16)
    # dL/dlogit = p - y: the sign flips with the label, the norm says nothing
    g = np.where(y == 1, -1.0, 1.0)[:, None] * axis + 0.3 * rng.normal(size=(2000, 16))
    g *= (rng.uniform(0.5, 2.0, 2000) / np.linalg.norm(g, axis=1))[:, None]
    r = leakage.label_leakage(g, y)
    assert r["cosine_auc"] > 0.9
    assert r["cosine_sign_accuracy"] > 0.9
    assert r["norm_auc"] < 0.6


# ------------------------------------------------------------------ the mechanism
def test_gaussian_mechanism_clips_rows_and_adds_the_stated_noise() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    clipped = leakage.gaussian_mechanism(clip=1.0, sigma=0.0)(x)
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    noisy = leakage.gaussian_mechanism(clip=2.0, sigma=1.5, seed=4)(torch.zeros(20000, 4))
    assert float(noisy.std()) == pytest.approx(3.0, rel=0.03)
    again = leakage.gaussian_mechanism(clip=2.0, sigma=1.5, seed=4)(torch.zeros(20000, 4))
    assert torch.equal(noisy, again)


class _FixedLink:
    """A platform that always sends ``emb`` and remembers the gradient it gets."""

    def __init__(self, emb: torch.Tensor) -> None:
        self.emb = emb
        self.got: torch.Tensor | None = None

    @property
    def embedding_dim(self) -> int:
        return int(self.emb.shape[1])

    def forward(self, handles: np.ndarray, train: bool) -> torch.Tensor:
        return self.emb[torch.from_numpy(handles)].clone()

    def backward(self, grad: torch.Tensor) -> None:
        self.got = grad

    def end_epoch(self, epoch: int) -> None:
        pass

    def commit(self, epoch: int) -> None:
        pass


def test_noisy_link_pulls_the_gradient_back_through_the_clip() -> None:
    e = torch.tensor([[3.0, 4.0]])  # norm 5, clipped to 1
    inner = _FixedLink(e)
    link = leakage.NoisyLink(inner, leakage.gaussian_mechanism(clip=1.0, sigma=0.0))
    sent = link.forward(np.array([0]), train=True)
    assert torch.allclose(sent, torch.tensor([[0.6, 0.8]]))
    grad = torch.tensor([[1.0, -2.0]])
    link.backward(grad)
    # d(e / |e|)/de = (I - u u^T) / |e| with u = e / |e|
    u = e[0] / 5.0
    expected = (torch.eye(2) - torch.outer(u, u)) / 5.0 @ grad[0]
    assert inner.got is not None
    assert torch.allclose(inner.got[0], expected, atol=1e-6)


def test_recording_link_keeps_what_crossed_and_refuses_a_broken_sequence() -> None:
    inner = _FixedLink(torch.arange(8.0).reshape(4, 2))
    link = leakage.RecordingLink(inner)
    for epoch in range(2):
        for h in (np.array([0, 1]), np.array([2, 3])):
            link.forward(h, train=True)
            link.backward(torch.full((2, 2), float(epoch)))
        link.end_epoch(epoch)
    link.forward(np.array([1]), train=False)  # early-stopping forward: not kept
    assert link.scoring == []
    kept = link.training()
    assert kept.handles.tolist() == [0, 1, 2, 3]
    assert kept.gradients is not None and (kept.gradients == 1.0).all()  # the last epoch only
    assert np.array_equal(kept.embeddings, inner.emb.numpy())
    assert link.epochs_and_passes()[0].tolist() == [1, 1, 1, 1]
    link.forward(np.array([0]), train=True)
    with pytest.raises(RuntimeError, match="without a backward"):
        link.forward(np.array([1]), train=True)


# ----------------------------------------------------------------- on a scenario
def test_collect_is_transparent_and_records_every_aligned_row(scenario: Scenario) -> None:
    rec = leakage.collect(scenario, bank=1, cfg=SMALL)
    platform = PlatformSide(scenario.platform, None)
    train, test = scenario.banks[1]
    (p,), _ = train_and_score(platform, train, [test], SplitArchitecture(), SMALL, None)
    assert np.array_equal(rec.test_pd, p)  # recording changes nothing in training
    rows = align(platform.ids, train.ids)
    aligned_train = rows[rows >= 0]
    # the last epoch's batches: every aligned row outside the validation share, once
    assert np.unique(rec.train_rows).size == rec.train_rows.size
    assert set(rec.train_rows) <= set(aligned_train)
    assert rec.train_rows.size >= 0.85 * aligned_train.size
    label_of_row = dict(zip(rows, np.asarray(train.labels), strict=True))
    assert [label_of_row[r] for r in rec.train_rows] == rec.train_labels.tolist()
    assert (rec.train_epoch == rec.info["epochs_run"] - 1).all()
    test_rows = align(platform.ids, test.ids)
    assert sorted(rec.scoring_rows) == sorted(np.r_[aligned_train, test_rows[test_rows >= 0]])
    assert rec.train_gradients.shape == rec.train_embeddings.shape


def test_measure_runs_end_to_end_and_noise_lowers_inversion(scenario: Scenario) -> None:
    names = list(scenario.platform.schema.numeric)
    clean = leakage.measure(scenario, cfg=SMALL, banks=[0])
    noisy = leakage.measure(
        scenario, cfg=SMALL, banks=[0],
        embedding_noise=leakage.gaussian_mechanism(clip=1.0, sigma=10.0, seed=0),
    )
    for r in (clean, noisy):
        assert set(r["inversion_r2"]) == set(names)
        assert all(np.isfinite(v) for v in r["inversion_r2"].values())
        for key in ("inversion_mean_r2", "label_norm_auc", "label_cosine_auc", "test_auc"):
            assert np.isfinite(r[key]), key
        assert 0.5 <= r["label_norm_auc"] <= 1.0
        assert 0.0 < r["test_auc"] < 1.0
    assert clean["inversion_mean_r2"] > 0.5  # unprotected embeddings reveal the features
    assert noisy["inversion_mean_r2"] < clean["inversion_mean_r2"] - 0.3
    assert noisy["inversion_mean_r2"] < 0.1


def test_measure_reads_a_scenario_folder(tmp_path: Path) -> None:
    synth_population(tmp_path, people=1000, banks=1, seed=5)
    r = leakage.measure(tmp_path, cfg=TrainConfig(epochs=2, refit=False), seed=2)
    assert len(r["per_bank"]) == 1
    assert r["per_bank"][0]["n_scoring_embeddings"] > 0
