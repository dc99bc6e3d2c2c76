import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedscore.data.preprocess import Encoded
from fedscore.ml import metrics
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.model import BankModel, BottomModel, SeededDropout
from fedscore.ml.training import (
    BankData,
    LocalPlatformLink,
    PlatformBottom,
    TrainConfig,
    TrainedBank,
    predict,
    stratified_split,
    train_bank_model,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: intra-op threads only cost (and spin badly on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ARCH = SplitArchitecture(
    cat_dim=2, platform_hidden=(16,), platform_out=4, bank_hidden=(16,), bank_out=4,
    top_hidden=(8,), dropout=0.1,
)
CFG = TrainConfig(epochs=8, batch_size=64, lr=5e-3, weight_decay=1e-4, patience=3,
                  validation_share=0.25, seed=0, ema_decay=0.0)


def synthetic(
    n_platform: int = 2000, n_bank: int = 1500, seed: int = 0
) -> tuple[Encoded, np.ndarray, BankData]:
    """Latent risk drives platform features, bank features and labels; 30% of the
    bank's customers are unknown to the platform."""
    rng = np.random.default_rng(seed)
    risk_p = rng.normal(size=n_platform)
    plat = Encoded(
        np.column_stack([risk_p + rng.normal(0, 0.5, n_platform), rng.normal(size=n_platform)])
        .astype(np.float32),
        np.column_stack([np.clip((risk_p > 0).astype(int) + 1, 0, 2)]).astype(np.int64),
    )
    handle_rows = rng.permutation(n_platform)[:n_bank]  # handle h -> platform row
    aligned = rng.random(n_bank) < 0.7
    handles = np.where(aligned, np.arange(n_bank), -1)
    risk = np.where(aligned, risk_p[handle_rows], rng.normal(size=n_bank))
    bank_signal = rng.normal(size=n_bank)
    logit = 1.5 * np.where(aligned, risk, 0.0) + 1.5 * bank_signal - 0.5
    y = (rng.random(n_bank) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    bank = Encoded(
        np.column_stack([bank_signal + rng.normal(0, 0.3, n_bank)]).astype(np.float32),
        rng.integers(0, 3, (n_bank, 1)).astype(np.int64),
    )
    return plat, handle_rows, BankData(bank, y, handles)


def rows_of(data: BankData, rows: np.ndarray) -> BankData:
    return BankData(data.encoded.take(rows), data.labels[rows], data.handles[rows])


TRAIN, TEST = np.arange(1000), np.arange(1000, 1500)


def fit(
    seed: int = 0, cfg: TrainConfig = CFG
) -> tuple[TrainedBank, LocalPlatformLink, BankData]:
    plat, rows, data = synthetic(seed=seed)
    data = rows_of(data, TRAIN)
    pb = PlatformBottom(plat, ARCH.platform_bottom(2, (3,)), cfg)
    link = LocalPlatformLink(pb, rows)
    trained = train_bank_model(data, link, ARCH.bank_bottom(1, (3,)), ARCH.top(), cfg)
    return trained, link, data


def test_trains_to_good_auc_on_held_out_rows() -> None:
    trained, link, _ = fit()
    test = rows_of(synthetic()[2], TEST)
    p = predict(trained.model, test, link)
    assert p.shape == (len(test.encoded),) and ((p > 0) & (p < 1)).all()
    assert metrics.auc(test.labels, p) > 0.75
    assert 0 <= trained.best_epoch < trained.epochs_run <= CFG.epochs
    assert len(trained.history) == trained.epochs_run


def test_platform_features_help() -> None:
    trained, link, data = fit()
    aligned = data.handles >= 0
    p = predict(trained.model, data, link)
    # the same bank without the platform (every row on the absent path)
    plat, rows, _ = synthetic()
    alone_data = BankData(data.encoded, data.labels, np.full(len(data.labels), -1))
    alone_link = LocalPlatformLink(PlatformBottom(plat, ARCH.platform_bottom(2, (3,)), CFG), rows)
    alone = train_bank_model(alone_data, alone_link, ARCH.bank_bottom(1, (3,)), ARCH.top(), CFG)
    q = predict(alone.model, alone_data, alone_link)
    y = data.labels[aligned]
    assert metrics.auc(y, p[aligned]) > metrics.auc(y, q[aligned]) + 0.03


def test_deterministic_for_a_seed() -> None:
    a, link_a, data = fit(seed=0)
    b, link_b, _ = fit(seed=0)
    np.testing.assert_array_equal(predict(a.model, data, link_a), predict(b.model, data, link_b))
    torch.manual_seed(123)  # global RNG state must not matter
    c, link_c, _ = fit(seed=0, cfg=TrainConfig(**{**CFG.__dict__, "seed": 1}))
    assert not np.array_equal(predict(a.model, data, link_a), predict(c.model, data, link_c))


def test_ema_runs_and_is_deterministic() -> None:
    cfg = TrainConfig(**{**CFG.__dict__, "ema_decay": 0.9, "epochs": 3})
    a, link_a, data = fit(cfg=cfg)
    b, link_b, _ = fit(cfg=cfg)
    np.testing.assert_array_equal(predict(a.model, data, link_a), predict(b.model, data, link_b))


def test_split_gradients_equal_joint_gradients() -> None:
    plat, rows, data = synthetic()
    cfg = TrainConfig(**{**CFG.__dict__, "lr": 0.1})
    plat_cfg = ARCH.platform_bottom(2, (3,))
    pb = PlatformBottom(plat, plat_cfg, cfg)
    link = LocalPlatformLink(pb, rows)
    model = BankModel(ARCH.bank_bottom(1, (3,)), ARCH.top())
    joint_platform = BottomModel(plat_cfg)
    joint_platform.load_state_dict(pb.model.state_dict())
    for m in (model, pb.model, joint_platform):  # both passes must see the same network
        for d in m.modules():
            if isinstance(d, SeededDropout):
                d.p = 0.0
    b = np.arange(64)
    h = data.handles[b]
    present = torch.from_numpy(h >= 0)
    num = torch.from_numpy(data.encoded.numeric[b])
    cat = torch.from_numpy(data.encoded.categorical[b])
    y = torch.from_numpy(data.labels[b].astype(np.float32))

    # joint: one graph through both halves
    prow = torch.from_numpy(rows[h[h >= 0]])
    emb = joint_platform(pb.numeric[prow], pb.categorical[prow])
    full = torch.zeros(64, emb.shape[1]).index_copy(0, torch.from_numpy(np.flatnonzero(h >= 0)),
                                                    emb)
    F.binary_cross_entropy_with_logits(model(num, cat, full, present), y).backward()
    joint_bank = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    joint_plat = {}
    for n, p in joint_platform.named_parameters():
        assert p.grad is not None
        joint_plat[n] = p.grad.clone()
    model.zero_grad()

    # split: embeddings through the link, gradient of the embedding back
    got = link.forward(h[h >= 0], train=True).requires_grad_(True)
    full = torch.zeros(64, got.shape[1]).index_copy(0, torch.from_numpy(np.flatnonzero(h >= 0)),
                                                    got)
    F.binary_cross_entropy_with_logits(model(num, cat, full, present), y).backward()
    assert got.grad is not None
    link.backward(got.grad)
    for n, p in model.named_parameters():
        if n in joint_bank:
            torch.testing.assert_close(p.grad, joint_bank[n])
    for n, p in pb.model.named_parameters():
        torch.testing.assert_close(p.grad, joint_plat[n])
    # and the platform took its optimizer step
    assert any(
        not torch.equal(p, q)
        for p, q in zip(pb.model.parameters(), joint_platform.parameters(), strict=True)
    )


def test_batches_without_aligned_rows_work() -> None:
    plat, rows, data = synthetic()
    data = BankData(data.encoded, data.labels, np.full(len(data.labels), -1))
    pb = PlatformBottom(plat, ARCH.platform_bottom(2, (3,)), CFG)
    before = {k: v.clone() for k, v in pb.state_dict().items()}
    link = LocalPlatformLink(pb, rows)
    trained = train_bank_model(data, link, ARCH.bank_bottom(1, (3,)), ARCH.top(), CFG)
    p = predict(trained.model, data, link)
    assert metrics.auc(data.labels, p) > 0.6
    for k, v in pb.state_dict().items():  # never asked, never stepped
        assert torch.equal(v, before[k])


def test_link_errors_are_clear() -> None:
    plat, _, _ = synthetic()
    pb = PlatformBottom(plat, ARCH.platform_bottom(2, (3,)), CFG)
    with pytest.raises(RuntimeError, match="without a training forward"):
        pb.backward(torch.zeros(2, 4))
    pb.forward(np.array([0, 1]), train=True)
    with pytest.raises(ValueError, match="gradient shape"):
        pb.backward(torch.zeros(3, 4))
    with pytest.raises(IndexError, match="out of range"):
        pb.forward(np.array([len(plat)]), train=False)
    with pytest.raises(KeyError, match="epoch 5"):
        pb.restore(5)
    with pytest.raises(ValueError, match="expects 3 and 1"):
        PlatformBottom(plat, ARCH.platform_bottom(3, (3,)), CFG)


def test_stratified_split() -> None:
    y = np.array([0] * 80 + [1] * 20)
    tr, va = stratified_split(y, 0.25, seed=0)
    assert len(va) == 25 and y[va].sum() == 5
    assert not set(tr) & set(va) and len(tr) + len(va) == 100


class RecordingLink(LocalPlatformLink):
    """Logs every call the loop makes, for checking the protocol."""

    def __init__(self, platform: PlatformBottom, rows: np.ndarray) -> None:
        super().__init__(platform, rows)
        self.calls: list[tuple[str, object]] = []

    def forward(self, handles: np.ndarray, train: bool) -> torch.Tensor:
        self.calls.append(("forward", train))
        return super().forward(handles, train)

    def end_epoch(self, epoch: int) -> None:
        self.calls.append(("end_epoch", epoch))
        super().end_epoch(epoch)

    def commit(self, epoch: int) -> None:
        self.calls.append(("commit", epoch))
        super().commit(epoch)

    def restart(self) -> None:
        self.calls.append(("restart", None))
        super().restart()


def test_refit_retrains_both_sides_on_all_rows() -> None:
    cfg = TrainConfig(**{**CFG.__dict__, "refit": True})
    plat, rows, data = synthetic()
    train = rows_of(data, TRAIN)
    first = PlatformBottom(plat, ARCH.platform_bottom(2, (3,)), cfg)
    link = RecordingLink(first, rows)
    trained = train_bank_model(train, link, ARCH.bank_bottom(1, (3,)), ARCH.top(), cfg)
    e = trained.best_epoch
    assert trained.refit_epochs == e + 1
    # protocol: first pass ends in commit(best); then restart, e+1 training-only epochs
    at = link.calls.index(("restart", None))
    assert link.calls[at - 1] == ("commit", e) and link.calls.count(("restart", None)) == 1
    second = link.calls[at + 1 :]
    assert ("forward", False) not in second
    assert [c for c in second if c[0] != "forward"] == [
        *[("end_epoch", k) for k in range(e + 1)], ("commit", e)
    ]
    # the refit pass sees every row: more training batches per epoch than the first pass
    first_epoch0 = link.calls[: link.calls.index(("end_epoch", 0))]
    second_epoch0 = second[: second.index(("end_epoch", 0))]
    assert len(second_epoch0) > len(first_epoch0)
    assert link.platform is not first  # the platform started over
    p = predict(trained.model, rows_of(data, TEST), link)
    assert metrics.auc(data.labels[TEST], p) > 0.75
    again, link2, _ = fit(cfg=cfg)
    np.testing.assert_array_equal(p, predict(again.model, rows_of(data, TEST), link2))
    plain, link3, _ = fit(cfg=dataclasses.replace(cfg, refit=False))
    assert not np.array_equal(p, predict(plain.model, rows_of(data, TEST), link3))


def test_fresh_platform_bottom_starts_as_new() -> None:
    plat, _, _ = synthetic()
    pb = PlatformBottom(plat, ARCH.platform_bottom(2, (3,)), CFG)
    init = {k: v.clone() for k, v in pb.state_dict().items()}
    out = pb.forward(np.arange(8), train=True)
    pb.backward(torch.ones_like(out))
    pb.snapshot(0)
    fresh = pb.fresh()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, init[k])
        assert not torch.equal(v, pb.state_dict()[k]) or v.ndim < 2
    with pytest.raises(KeyError):
        fresh.restore(0)


def test_refit_needs_a_restartable_link() -> None:
    class NoRestart:
        def __init__(self, inner: LocalPlatformLink) -> None:
            self.inner = inner
            self.embedding_dim = inner.embedding_dim

        def forward(self, handles: np.ndarray, train: bool) -> torch.Tensor:
            return self.inner.forward(handles, train)

        def backward(self, grad: torch.Tensor) -> None:
            self.inner.backward(grad)

        def end_epoch(self, epoch: int) -> None:
            self.inner.end_epoch(epoch)

        def commit(self, epoch: int) -> None:
            self.inner.commit(epoch)

    cfg = TrainConfig(**{**CFG.__dict__, "refit": True})
    plat, rows, data = synthetic()
    link = NoRestart(LocalPlatformLink(PlatformBottom(plat, ARCH.platform_bottom(2, (3,)), cfg),
                                       rows))
    with pytest.raises(TypeError, match="NoRestart has none"):
        train_bank_model(rows_of(data, TRAIN), link, ARCH.bank_bottom(1, (3,)), ARCH.top(), cfg)
