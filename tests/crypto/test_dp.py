"""Differential privacy: the accountant, the mechanism, the settings, the live platform
noising what it sends, and the coordinator's accounting (``privacy.jsonl``)."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from coordinator.checkpoint import Checkpoints
from coordinator.privacy import FILE as PRIVACY_FILE
from coordinator.privacy import PrivacyLog
from coordinator.strategy import CoordinatorStrategy
from fedscore.crypto import dp
from fedscore.crypto.dp import DpSettings, ReleaseCounter, embedding_epsilon, gaussian_epsilon
from fedscore.federation.runconfig import ConfigError, RunSettings
from fedscore.ml.training import train_round
from platform_node.embedding_service import EmbeddingTable
from tests.conftest import Federation as FederationFixture
from tests.conftest import LivePlatform
from tests.coordinator.test_strategy import OK, STATS, FakePlatform, _manager, _weights
from tests.platform_node.test_federation import CFG, _control, _node, _open_bank

# ------------------------------------------------------------------------------ accountant


def test_accountant_matches_a_pinned_value_and_brackets_the_exact_one() -> None:
    # DP-SGD's classic setting (Abadi et al.): q = 0.01, z = 1.1, 1000 steps, δ = 1e-5;
    # dp-accounting 0.6's RDP accountant gives 1.7118
    assert gaussian_epsilon(1.1, 1e-5, 1000, sampling_rate=0.01) == pytest.approx(1.7118,
                                                                                 abs=2e-3)
    # k Gaussians of multiplier z compose to one of z / sqrt(k), whose ε is known exactly
    # (analytic Gaussian); RDP is an upper bound on it, and below RDP's textbook
    # conversion ε = min_α kα/(2z²) + log(1/δ)/(α - 1)
    from dp_accounting import get_epsilon_gaussian

    for z, k in ((1.0, 1), (2.0, 10), (4.0, 50)):
        rdp = gaussian_epsilon(z, 1e-5, k)
        exact = get_epsilon_gaussian(z / math.sqrt(k), 1e-5)
        textbook = min(k * a / (2 * z * z) + math.log(1e5) / (a - 1)
                       for a in np.linspace(1.01, 200, 20000))
        assert exact <= rdp * (1 + 1e-9) and rdp <= textbook * (1 + 1e-9)
        assert rdp < 1.3 * exact  # and not a loose bound


def test_epsilon_grows_with_releases_and_shrinks_with_noise() -> None:
    by_k = [gaussian_epsilon(1.0, 1e-5, k) for k in (1, 2, 5, 20, 100)]
    assert all(a < b for a, b in itertools.pairwise(by_k))
    by_z = [gaussian_epsilon(z, 1e-5, 10) for z in (0.5, 1.0, 2.0, 8.0)]
    assert all(a > b for a, b in itertools.pairwise(by_z))
    assert gaussian_epsilon(1.0, 1e-6, 10) > gaussian_epsilon(1.0, 1e-4, 10)
    assert gaussian_epsilon(1.0, 1e-5, 0) == 0.0
    assert gaussian_epsilon(0.0, 1e-5, 3) == math.inf
    # embeddings: replace-one, sensitivity 2C: the accountant sees z / 2
    s = DpSettings(noise_multiplier=3.0, clip=0.7, delta=1e-6)
    assert embedding_epsilon(s, 4) == gaussian_epsilon(1.5, 1e-6, 4)


# ------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("kw", "word"), [
    ({"clip": 0.0}, "clip"), ({"clip": -1.0}, "clip"), ({"noise_multiplier": -0.1}, "noise"),
    ({"noise_multiplier": math.inf}, "noise"), ({"delta": 0.0}, "delta"),
    ({"delta": 1.0}, "delta"),
])
def test_dp_settings_refuse_bad_values(kw: dict[str, float], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        DpSettings(**kw)


@pytest.mark.parametrize(("key", "value"), [
    ("dp-embedding-noise", -1.0), ("dp-embedding-clip", 0.0), ("dp-update-noise", -0.5),
    ("dp-update-clip", -2.0), ("dp-delta", 1.0), ("dp-delta", 0.0),
])
def test_bad_dp_run_config_names_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"run config {key} = "):
        RunSettings.from_run_config({key: value})


def test_run_config_builds_both_mechanisms() -> None:
    s = RunSettings.from_run_config({"dp-update-noise": 1, "dp-update-clip": 0.25,
                                     "dp-embedding-noise": 2.0, "dp-delta": 1e-6})
    assert s.update_dp() == DpSettings(1.0, 0.25, 1e-6)
    assert s.embedding_dp() == DpSettings(2.0, 1.0, 1e-6)
    assert not RunSettings().update_dp().enabled and not RunSettings().embedding_dp().enabled


# ------------------------------------------------------------------------------ mechanism


def test_mechanism_clips_rows_and_adds_the_stated_noise() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    assert torch.allclose(dp.gaussian_mechanism(1.0, 0.0)(x),
                          torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    big = torch.randn(20000, 4) * 10
    out = dp.gaussian_mechanism(2.0, 1.5, seed=4)(big)
    clipped = big * (2.0 / big.norm(dim=1, keepdim=True)).clamp(max=1.0)
    noise = out - clipped
    assert float(noise.std()) == pytest.approx(3.0, rel=0.03)
    assert abs(float(noise.mean())) < 0.05
    # per-coordinate independent: no correlation between coordinates
    corr = np.corrcoef(noise.numpy().T)
    assert np.abs(corr - np.eye(4)).max() < 0.05
    # unseeded: two mechanisms do not repeat each other's noise
    a = dp.gaussian_mechanism(1.0, 1.0)(torch.zeros(10, 3))
    b = dp.gaussian_mechanism(1.0, 1.0)(torch.zeros(10, 3))
    assert not torch.equal(a, b)


def test_the_gradient_flows_back_through_the_clip() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]], requires_grad=True)
    y = dp.gaussian_mechanism(1.0, 5.0, seed=1)(x)
    g = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    y.backward(g)
    assert x.grad is not None
    # unclipped row: identity; clipped row (norm 5 -> 1): (I - u uᵀ) / 5 with u = x / |x|
    u = torch.tensor([0.6, 0.8])
    want = (g[0] - u * (u @ g[0])) / 5.0
    assert torch.allclose(x.grad[1], g[1]) and torch.allclose(x.grad[0], want, atol=1e-6)


def test_release_counter_counts_the_worst_row() -> None:
    c = ReleaseCounter()
    assert c.max() == 0 and c.rows() == 0
    c.record(np.array([3, 5, 5]))
    c.record(np.array([1000, 3]))
    assert c.max() == 2 and c.rows() == 3


# ---------------------------------------------------------------------- the live platform


def test_the_live_platform_noises_what_the_bank_receives(
        federation: FederationFixture, live_platform: LivePlatform) -> None:
    node = _node(live_platform)
    z, clip, seed = 2.0, 0.5, 6
    with contextlib.ExitStack() as stack:
        control = stack.enter_context(_control(live_platform, federation, "coordinator"))
        control.start_round("dp-emb", 1, seed, embedding_dp=DpSettings(z, clip))
        bank = _open_bank(stack, federation, live_platform, "bank-1", run_id="dp-emb",
                          federation_round=1)
        aligned = bank.train.handles[bank.train.handles >= 0]
        got = bank.link.forward(aligned, train=False).numpy()  # what the bank receives
        psi = node.sessions.get(bank.psi.session_id, bank.party).psi
        reference = node.make_bottom(CFG.seed, CFG.lr, CFG.weight_decay, CFG.ema_decay)
        reference.load_state_dict(node.initial_weights(seed))
        clean = reference.forward(psi.rows[aligned], train=False)
        clipped = clean * (clip / clean.norm(dim=1, keepdim=True)).clamp(max=1.0)
        noise = got - clipped.numpy()
        assert float(noise.std()) == pytest.approx(z * clip, rel=0.05)
        # training through the noise works, and the platform's copy learns from it
        train_round(bank.train, bank.link, bank.model, CFG, epochs=1, round_=1)
        session = node.sessions.get(bank.psi.session_id, bank.party)
        assert session.bottom is not None
        moved = session.bottom.state_dict()
        assert any(not torch.equal(moved[k], v) for k, v in node.initial_weights(seed).items())
        # every aligned training customer: once in evaluation, once in the epoch
        assert node.federation.releases("dp-emb") == (2, aligned.size)
        assert control.embedding_releases("dp-emb") == 2
        done = control.finish_round("dp-emb", 1)
        # evaluation with the round's model, the bank naming no run: still noised
        bank.link.reopen(base_version=done.version)
        again = bank.link.forward(aligned[:200], train=False).numpy()
        reference.load_state_dict(node.federation.store.by_version(done.version))
        plain = reference.forward(psi.rows[aligned[:200]], train=False).numpy()
        assert float(np.abs(again - plain).mean()) > 0.3 * z * clip
        # the evaluation's 200 customers: a third release each, counted
        assert node.federation.releases("dp-emb") == (3, aligned.size)
        # online scoring: the version's noisy table, the same row every time asked
        served = node.embeddings.rows(done.version, psi.rows[aligned[:50]])
        np.testing.assert_array_equal(served,
                                      node.embeddings.rows(done.version, psi.rows[aligned[:50]]))
        clean_table = EmbeddingTable(node.encoded, node.bottom_config,
                                     node.federation.by_version)
        diff = served - clean_table.rows(done.version, psi.rows[aligned[:50]])
        assert float(np.abs(diff).mean()) > 0.3 * z * clip
        bank.link.close()

        # the same without DP: the bank gets the model's own embeddings, nothing counted
        control.start_round("no-dp", 1, seed)
        plain_bank = _open_bank(stack, federation, live_platform, "bank-2", run_id="no-dp",
                                federation_round=1)
        handles = plain_bank.train.handles[plain_bank.train.handles >= 0][:300]
        psi2 = node.sessions.get(plain_bank.psi.session_id, plain_bank.party).psi
        reference.load_state_dict(node.initial_weights(seed))
        np.testing.assert_allclose(plain_bank.link.forward(handles, train=False).numpy(),
                                   reference.forward(psi2.rows[handles], train=False).numpy(),
                                   atol=1e-6)
        assert control.embedding_releases("no-dp") == 0
        plain_bank.link.close()


# -------------------------------------------------------------- the coordinator's accounting


class DpPlatform(FakePlatform):
    def __init__(self) -> None:
        super().__init__()
        self.embedding_dp: list[DpSettings | None] = []

    def start_round(self, run_id: str, round_: int, seed: int,
                    embedding_dp: DpSettings | None = None) -> str:
        self.embedding_dp.append(embedding_dp)
        return super().start_round(run_id, round_, seed)

    def embedding_releases(self, run_id: str) -> int:
        return 4  # e.g. 3 local epochs and one evaluation


def test_the_strategy_clips_noises_and_accounts(tmp_path: Path) -> None:
    settings = RunSettings(run_id="dp", num_rounds=2, state_dir=str(tmp_path),
                           dp_update_noise=1.0, dp_update_clip=0.5,
                           dp_embedding_noise=4.0, dp_embedding_clip=2.0, dp_delta=1e-6)
    platform = DpPlatform()
    cps = Checkpoints(settings.run_dir)
    strategy = CoordinatorStrategy(settings, platform, cps, STATS)  # type: ignore[arg-type]
    cm, proxies = _manager(3)
    rng = np.random.default_rng(0)
    pairs = strategy.configure_fit(1, ndarrays_to_parameters(_weights(rng)), cm)
    assert all(ins.config[KEY_CLIPPING_NORM] == 0.5 for _, ins in pairs)
    assert platform.embedding_dp == [DpSettings(4.0, 2.0, 1e-6)]
    # what SecAgg+ hands the strategy: every result holds the same (unweighted) mean
    mean = [np.zeros((200, 100)), np.zeros(50)]
    results: list[tuple[ClientProxy, FitRes]] = [
        (p, FitRes(OK, ndarrays_to_parameters(mean), 100_000, {})) for p in proxies]
    np.random.seed(7)  # Flower's helper draws from numpy's global generator
    params, _ = strategy.aggregate_fit(1, results, [])
    assert params is not None
    noisy = parameters_to_ndarrays(params)
    assert float(np.concatenate([a.ravel() for a in noisy]).std()) == pytest.approx(
        1.0 * 0.5 / 3, rel=0.02)
    saved = cps.load(1)  # the noisy model is checkpointed, not the mean
    for a, b in zip(saved.arrays, noisy, strict=True):
        np.testing.assert_array_equal(a, b)
    evaluate: Any = strategy.aggregate_evaluate
    from tests.coordinator.test_strategy import _eval_res

    y = np.array([0, 1] * 20)
    evaluate(1, [(p, _eval_res(f"bank-{i}", y, rng.random(40), "f"))
                 for i, p in enumerate(proxies, 1)], [])  # evaluation needs min-banks too
    lines = [json.loads(x) for x in (settings.run_dir / PRIVACY_FILE).read_text().splitlines()]
    assert [(x["round"], x["mechanism"], x["releases"]) for x in lines] == [
        (1, "bank-updates", 1), (1, "platform-embeddings", 4)]
    assert lines[0]["epsilon"] == pytest.approx(gaussian_epsilon(1.0, 1e-6, 1))
    assert lines[1]["epsilon"] == pytest.approx(
        embedding_epsilon(DpSettings(4.0, 2.0, 1e-6), 4))
    assert lines[1] | {"epsilon": 0} == {"round": 1, "mechanism": "platform-embeddings",
                                         "noise_multiplier": 4.0, "clip": 2.0,
                                         "delta": 1e-6, "releases": 4, "epsilon": 0}
    # a resumed run keeps counting where the file left off
    log = PrivacyLog(settings.run_dir)
    assert log.record(2, "bank-updates", settings.update_dp(), 1)["releases"] == 2
    assert log.budget()["bank-updates"]["epsilon"] == pytest.approx(
        gaussian_epsilon(1.0, 1e-6, 2))


def test_the_bank_clips_after_secure_aggregation_in_the_mods() -> None:
    # mods run outermost first: SecAgg+ must mask what the clipping mod returns
    from flwr.client.mod import secaggplus_mod

    from bank_node import client_app
    from bank_node.dp_mod import update_clipping_mod

    for app in (client_app.app, client_app.client_app()):
        mods = list(app._mods)
        assert mods[-1] is update_clipping_mod
        assert mods.index(secaggplus_mod) < mods.index(update_clipping_mod)
