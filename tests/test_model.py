import pytest
import torch

from fedscore.model import (
    BankModel,
    BottomConfig,
    BottomModel,
    SplitArchitecture,
    TopConfig,
    TopModel,
)

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
