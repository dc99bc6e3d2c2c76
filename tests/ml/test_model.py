import numpy as np
import pytest
import torch

from fedscore.ml.architecture import BottomConfig, SplitArchitecture, TopConfig, bank_layout
from fedscore.ml.frozen import FrozenBankModel
from fedscore.ml.model import BankModel, BottomModel, TopModel, load_arrays, to_arrays

BOTTOM = BottomConfig(
    n_numeric=3, cat_cardinalities=(4, 6), cat_dim=2, hidden=(8,), out_dim=5, dropout=0.1
)
TOP = TopConfig(bank_dim=5, platform_dim=4, hidden=(6,), dropout=0.1)


def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, generator=g), torch.randint(0, 4, (b, 2), generator=g)


def test_bottom_shapes() -> None:
    num, cat = batch(7)
    assert BottomModel(BOTTOM)(num, cat).shape == (7, 5)
    assert BottomModel(BOTTOM)(num[:0], cat[:0]).shape == (0, 5)


def test_linear_skip_shapes() -> None:
    num, cat = batch(7)
    bottom = BottomConfig(3, (4, 6), 2, (8,), 5, 0.1, linear_skip=True)
    top = TopConfig(5, 4, (6,), 0.1, linear_skip=True)
    model = BankModel(bottom, top)
    assert model.bottom.skip is not None and model.top.skip is not None
    assert model(num, cat, torch.randn(7, 4), torch.ones(7, dtype=torch.bool)).shape == (7,)


def test_bank_model_shapes() -> None:
    num, cat = batch(7)
    model = BankModel(BOTTOM, TOP)
    present = torch.tensor([True, False, True, True, False, False, True])
    assert model(num, cat, torch.randn(7, 4), present).shape == (7,)


def test_absent_rows_ignore_platform_embedding() -> None:
    top = TopModel(TOP).eval()
    bank = torch.randn(6, 5)
    present = torch.tensor([True, False, True, False, True, False])
    a = top(bank, torch.randn(6, 4), present)
    b = top(bank, torch.randn(6, 4) * 100, present)
    assert torch.equal(a[~present], b[~present])
    assert not torch.allclose(a[present], b[present])


def test_default_embedding_learns_from_absent_rows_only() -> None:
    top = TopModel(TOP).eval()
    bank, plat = torch.randn(4, 5), torch.randn(4, 4, requires_grad=True)
    top(bank, plat, torch.tensor([True, True, True, True])).sum().backward()
    assert top.default_platform.grad is None or torch.all(top.default_platform.grad == 0)
    top.zero_grad()
    plat.grad = None
    top(bank, plat, torch.tensor([False, True, False, True])).sum().backward()
    assert top.default_platform.grad is not None
    assert top.default_platform.grad.abs().sum() > 0
    assert plat.grad is not None
    assert torch.all(plat.grad[[0, 2]] == 0) and plat.grad[[1, 3]].abs().sum() > 0


def test_presence_indicator_changes_output() -> None:
    # present rows with the default embedding still differ from absent rows (indicator)
    top = TopModel(TOP).eval()
    with torch.no_grad():
        top.default_platform.copy_(torch.randn(4))
    bank = torch.randn(2, 5)
    plat = top.default_platform.detach().expand(2, 4)
    out = top(bank, plat, torch.tensor([True, False]))
    out_swapped = top(bank, plat, torch.tensor([False, True]))
    assert not torch.allclose(out, out_swapped)


def test_seeded_dropout_is_private() -> None:
    num, cat = batch(32)
    a, b = BottomModel(BOTTOM), BottomModel(BOTTOM)
    b.load_state_dict(a.state_dict())
    a.seed_dropout(3)
    b.seed_dropout(3)
    torch.manual_seed(1)
    ya = a.train()(num, cat)
    torch.manual_seed(2)  # the global stream does not matter
    yb = b.train()(num, cat)
    assert torch.equal(ya, yb)


def test_architecture_configs_fit_together() -> None:
    arch = SplitArchitecture()
    model = BankModel(arch.bank_bottom(3, (4, 6)), arch.top())
    assert model.top.cfg.platform_dim == arch.platform_bottom(2, (3,)).out_dim
    with pytest.raises(ValueError, match="out_dim"):
        BankModel(BOTTOM, TopConfig(bank_dim=9, platform_dim=4, hidden=(), dropout=0.0))


@pytest.mark.parametrize(("bottom", "top"), [
    (BOTTOM, TOP),
    (BottomConfig(3, (4, 6), 2, (8, 7), 5, 0.1, linear_skip=True),
     TopConfig(5, 4, (6, 3), 0.1, linear_skip=True)),
    (BottomConfig(3, (), 2, (), 5, 0.1), TopConfig(5, 4, (), 0.1)),
])
def test_frozen_model_gives_the_torch_models_logits(bottom: BottomConfig, top: TopConfig
                                                    ) -> None:
    torch.manual_seed(1)
    model = BankModel(bottom, top)
    with torch.no_grad():  # a trained model's default embedding is not zero
        model.top.default_platform.normal_()
    model.eval()
    g = torch.Generator().manual_seed(2)
    num = torch.randn(50, 3, generator=g) * 3
    cat = torch.stack([torch.randint(0, c, (50,), generator=g)
                       for c in bottom.cat_cardinalities], 1) \
        if bottom.cat_cardinalities else torch.zeros(50, 0, dtype=torch.int64)
    emb = torch.randn(50, 4, generator=g)
    present = torch.arange(50) % 3 != 0
    with torch.no_grad():
        want = model(num, cat, emb, present).numpy()
    frozen = FrozenBankModel(bottom, top, to_arrays(model))
    got = frozen(num.numpy(), cat.numpy(), emb.numpy(), present.numpy())
    assert got.dtype == np.float32 and got.shape == (50,)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert np.ptp(want) > 0.1  # the check can tell rows apart
    np.testing.assert_allclose(frozen.pd(num.numpy(), cat.numpy(), emb.numpy(),
                                         present.numpy()),
                               torch.sigmoid(torch.from_numpy(want)).double().numpy(),
                               atol=1e-6, rtol=0)
    # the weights were copied out: training the torch model on does not move it
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    np.testing.assert_array_equal(frozen(num.numpy(), cat.numpy(), emb.numpy(),
                                         present.numpy()), got)


@pytest.mark.parametrize(("bottom", "top"), [
    (BOTTOM, TOP),
    (BottomConfig(3, (4, 6), 2, (8, 7), 5, 0.1, linear_skip=True),
     TopConfig(5, 4, (6, 3), 0.1, linear_skip=True)),
    (BottomConfig(3, (), 2, (), 5, 0.1, linear_skip=True), TopConfig(5, 4, (), 0.1)),
])
def test_the_torch_free_layout_is_the_state_dicts(bottom: BottomConfig, top: TopConfig
                                                  ) -> None:
    """The scoring server sizes a release's weights without torch: the names and shapes
    it expects are exactly BankModel's state_dict."""
    state = BankModel(bottom, top).state_dict()
    assert bank_layout(bottom, top) == [(k, tuple(v.shape)) for k, v in state.items()]


def test_weights_that_do_not_fit_are_named() -> None:
    arrays = to_arrays(BankModel(BOTTOM, TOP))
    for load in (lambda a: load_arrays(BankModel(BOTTOM, TOP), a),
                 lambda a: FrozenBankModel(BOTTOM, TOP, a)):
        with pytest.raises(ValueError, match=r"got 3 weight arrays, this model has \d+"):
            load(arrays[:3])
        bad = [*arrays[:2], np.zeros((1, 1), np.float32), *arrays[3:]]
        with pytest.raises(ValueError, match=r"weights bottom\.mlp\.0\.bias: got shape "
                                             r"\(1, 1\), this model has \(8,\)"):
            load(bad)


def test_more_category_values_leave_every_other_initial_weight_alone() -> None:
    # issue 17: the table drawn first from the seeded stream moved every later weight
    # when a schema declared one more category value
    def build(cards: tuple[int, ...]) -> BankModel:
        torch.manual_seed(7)
        return BankModel(BottomConfig(3, cards, 2, (8,), 5, 0.1), TOP)

    small, large = build((4, 6)).state_dict(), build((4, 9)).state_dict()
    assert small["bottom.embedding.weight"].shape == (10, 2)
    assert large["bottom.embedding.weight"].shape == (13, 2)
    for name, value in small.items():
        if name != "bottom.embedding.weight":
            assert torch.equal(value, large[name]), name
    # the table is still a random draw of the intended scale, not zeros
    table = large["bottom.embedding.weight"]
    assert 0.05 < float(table.std()) < 0.2
