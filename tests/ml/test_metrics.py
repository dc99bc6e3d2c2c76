import numpy as np
import pytest

from fedscore.ml import metrics


def test_auc_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    assert metrics.auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert metrics.auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert metrics.auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5


def test_ks_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    # perfectly separated
    assert metrics.ks(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    # bads' CDF vs goods' CDF: max gap 0.5 at threshold 0.4 (goods 1.0 vs bads 0.5)
    assert metrics.ks(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.5)
    # ties are one threshold: all scores equal -> no separation
    assert metrics.ks(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.0


def test_ks_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) + 0.3 * y, 2)
    brute = max(
        abs(np.mean(p[y == 1] <= t) - np.mean(p[y == 0] <= t)) for t in np.unique(p)
    )
    assert metrics.ks(y, p) == pytest.approx(brute)


def test_log_loss_known_values() -> None:
    y = np.array([1, 0])
    assert metrics.log_loss(y, np.array([0.5, 0.5])) == pytest.approx(np.log(2))
    assert metrics.log_loss(y, np.array([0.9, 0.2])) == pytest.approx(
        -(np.log(0.9) + np.log(0.8)) / 2
    )
    assert metrics.log_loss(y, np.array([1.0, 0.0])) < 1e-6  # clipped, finite


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        (np.array([0, 1]), np.array([0.5]), "2 rows but scores have 1"),
        (np.array([0, 2]), np.array([0.5, 0.5]), "0 or 1"),
        (np.array([1, 1]), np.array([0.2, 0.5]), "both classes"),
        (np.array([0, 1]), np.array([np.nan, 0.5]), "finite"),
    ],
)
def test_bad_input_is_named(y: np.ndarray, p: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.auc(y, p)
