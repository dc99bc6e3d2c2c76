"""The coordinator's strategy without Flower's runtime: pooled metrics from the banks'
PD histograms, FedAvg by training rows, the platform kept in step, checkpoints written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from bank_node.federated import HIST_BINS, _histogram
from coordinator.checkpoint import Checkpoints
from coordinator.dropouts import ReplyWatch
from coordinator.platform_control import FinishedRound
from coordinator.strategy import CoordinatorError, CoordinatorStrategy, pooled_metrics
from fedscore.federation.runconfig import RunSettings
from fedscore.federation.statistics import PooledStatistics
from fedscore.ml import metrics

# ---------------------------------------------------------------------------------------------
# pooled metrics
# ---------------------------------------------------------------------------------------------


def _bank(rng: np.random.Generator, n: int, rate: float, shift: float
          ) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < rate).astype(np.int64)
    z = rng.normal(size=n) + 1.2 * y + shift  # banks score on different scales
    return y, 1.0 / (1.0 + np.exp(-z))


def _metrics(name: str, y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    return {"bank": name, "n": int(y.size), "auc": metrics.auc(y, p), "ks": metrics.ks(y, p),
            "loss": metrics.log_loss(y, p), "hist_pos": _histogram(p[y == 1]),
            "hist_neg": _histogram(p[y == 0])}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_metrics_match_the_exact_pooled_auc_and_ks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    banks = [_bank(rng, 3000, 0.2, -1.5), _bank(rng, 1800, 0.3, 0.0),
             _bank(rng, 1200, 0.15, 1.0)]
    ms = [_metrics(f"bank-{i + 1}", y, p) for i, (y, p) in enumerate(banks)]
    out = pooled_metrics(ms)
    y = np.concatenate([b[0] for b in banks])
    p = np.concatenate([b[1] for b in banks])
    assert out["n_test"] == 6000
    assert out["pooled_auc"] == pytest.approx(metrics.auc(y, p), abs=2e-3)
    assert out["pooled_ks"] == pytest.approx(metrics.ks(y, p), abs=5e-3)
    # the pooled AUC is not the mean of the banks' AUCs (scales differ between banks)
    assert abs(out["pooled_auc"] - out["weighted_auc"]) > 5e-3


def test_weighted_means_are_by_test_rows() -> None:
    hist = np.zeros(HIST_BINS, "<u4")
    hist[10], hist[900] = 1, 1
    pos, neg = hist.tobytes(), np.roll(hist, 5).tobytes()
    ms = [
        {"n": 100, "auc": 0.6, "ks": 0.2, "loss": 0.5, "hist_pos": pos, "hist_neg": neg},
        {"n": 300, "auc": 0.8, "ks": 0.4, "loss": 0.3, "hist_pos": pos, "hist_neg": neg},
    ]
    out = pooled_metrics(ms)
    assert out["weighted_auc"] == pytest.approx((100 * 0.6 + 300 * 0.8) / 400)
    assert out["weighted_ks"] == pytest.approx((100 * 0.2 + 300 * 0.4) / 400)
    assert out["weighted_loss"] == pytest.approx((100 * 0.5 + 300 * 0.3) / 400)
    assert out["n_test"] == 400
    assert set(out) == {"weighted_auc", "weighted_ks", "weighted_loss", "pooled_auc",
                        "pooled_ks", "n_test"}


def test_histogram_auc_counts_ties_within_a_bin_as_half() -> None:
    # every score in one bin: no ranking information at all
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.full(6, 0.4321)
    ms = [_metrics("bank-1", y, p + np.array([0, 1e-5, 2e-5, 3e-5, 4e-5, 5e-5]))]
    assert pooled_metrics(ms)["pooled_auc"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# the strategy against a fake platform
# ---------------------------------------------------------------------------------------------


class FakePlatform:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def start_round(self, run_id: str, round_: int, seed: int) -> str:
        self.calls.append(("start", run_id, round_))
        return f"r{round_ - 1}-base" if round_ > 1 else "init"

    def finish_round(self, run_id: str, round_: int, banks: Any = ()) -> FinishedRound:
        self.calls.append(("finish", run_id, round_))
        self.banks = list(banks)
        return FinishedRound(f"r{round_}-v", sessions=3, rows=999)


class Proxy(ClientProxy):
    def get_properties(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    def get_parameters(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    def fit(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    def evaluate(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    def reconnect(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError


OK = Status(Code.OK, "")


def _strategy(tmp_path: Path, **kw: Any) -> tuple[CoordinatorStrategy, FakePlatform,
                                                    Checkpoints, RunSettings]:
    settings = RunSettings(run_id="run-x", num_rounds=kw.pop("num_rounds", 2), local_epochs=2,
                           proximal_mu=0.01, state_dir=str(tmp_path), coordinator_kit="kit",
                           platform_address="127.0.0.1:1", min_banks=2)
    platform = FakePlatform()
    cps = Checkpoints(settings.run_dir)
    return (CoordinatorStrategy(settings, platform, cps, STATS, **kw),  # type: ignore[arg-type]
            platform, cps, settings)


STATS = PooledStatistics("cd" * 32, np.linspace(-1.0, 1.0, 14), 3)


def _manager(n: int) -> tuple[SimpleClientManager, list[Proxy]]:
    cm = SimpleClientManager()
    proxies = [Proxy(str(i)) for i in range(n)]
    for i, p in enumerate(proxies):
        p.node_id = i  # as Flower's GridClientProxy has it
        cm.register(p)
    return cm, proxies


def _weights(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(size=(4, 3)), rng.normal(size=3)]


def test_configure_fit_opens_the_round_and_sends_the_run_settings(tmp_path: Path) -> None:
    strategy, platform, _, _ = _strategy(tmp_path, rounds_done=2)
    cm, proxies = _manager(3)
    params = ndarrays_to_parameters(_weights(np.random.default_rng(0)))
    pairs = strategy.configure_fit(1, params, cm)
    assert platform.calls == [("start", "run-x", 3)]  # resumed after round 2: round 3
    assert {c.cid for c, _ in pairs} == {p.cid for p in proxies}
    for _, ins in pairs:
        assert ins.parameters == params
        assert ins.config["round"] == 3
        assert ins.config["run-id"] == "run-x"
        assert ins.config["local-epochs"] == 2
        assert ins.config["proximal-mu"] == 0.01
        # the pooled preprocessing statistics go with every instruction
        assert ins.config["preprocessing-layout"] == STATS.layout
        assert ins.config["preprocessing-sums"] == STATS.sums.astype("<f8").tobytes()
        # the coordinator's own paths and address are none of the banks' business
        assert not {"state-dir", "coordinator-kit", "platform-address"} & set(ins.config)


def test_aggregate_fit_is_the_row_weighted_mean_and_checkpoints_the_pair(
        tmp_path: Path) -> None:
    strategy, platform, cps, _ = _strategy(tmp_path)
    rng = np.random.default_rng(1)
    cm, proxies = _manager(3)
    strategy.configure_fit(1, ndarrays_to_parameters(_weights(rng)), cm)
    local = [_weights(rng) for _ in proxies]
    rows = [3000, 1500, 500]
    results: list[tuple[ClientProxy, FitRes]] = [
        (p, FitRes(OK, ndarrays_to_parameters(w), n, {}))
        for p, w, n in zip(proxies, local, rows, strict=True)]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert params is not None
    got = parameters_to_ndarrays(params)
    for i, arr in enumerate(got):
        want = sum(n * w[i] for n, w in zip(rows, local, strict=True)) / sum(rows)
        np.testing.assert_allclose(arr, want, rtol=1e-12, atol=1e-12)
    assert platform.calls == [("start", "run-x", 1), ("finish", "run-x", 1)]
    saved = cps.latest()
    assert saved is not None and saved.round == 1
    assert saved.platform_version == "r1-v" == strategy.platform_version
    assert saved.info["banks"] == 3 and saved.info["platform_rows"] == 999
    for a, b in zip(saved.arrays, got, strict=True):
        np.testing.assert_array_equal(a, b)
    events = [json.loads(x) for x in cps.progress.read_text().splitlines()]
    assert [e["event"] for e in events] == ["trained"]
    assert events[0]["round"] == 1 and events[0]["platform_version"] == "r1-v"


def _watch(n: int) -> ReplyWatch:
    return ReplyWatch(None, 1.0, lambda: {i: f"bank-{i + 1}" for i in range(n)})  # type: ignore[arg-type]


def test_aggregate_fit_refuses_fewer_than_min_banks_naming_the_lost(tmp_path: Path) -> None:
    strategy, platform, cps, _ = _strategy(tmp_path, watch=_watch(2))
    cm, proxies = _manager(2)
    rng = np.random.default_rng(2)
    strategy.configure_fit(1, ndarrays_to_parameters(_weights(rng)), cm)
    results: list[tuple[ClientProxy, FitRes]] = [
        (proxies[0], FitRes(OK, ndarrays_to_parameters(_weights(rng)), 10, {}))]
    with pytest.raises(CoordinatorError,
                       match=r"round 1: only 1 bank\(s\) left \(bank-1\), fewer than "
                             r"min-banks = 2; lost: bank-2 \(no result\)"):
        strategy.aggregate_fit(1, results, [RuntimeError("bank-2 went away")])
    assert ("finish", "run-x", 1) not in platform.calls  # the platform round stays open
    assert cps.rounds() == []


def test_aggregate_fit_goes_on_without_a_lost_bank(tmp_path: Path) -> None:
    strategy, platform, cps, _ = _strategy(tmp_path, watch=_watch(3))
    cm, proxies = _manager(3)
    rng = np.random.default_rng(6)
    strategy.configure_fit(1, ndarrays_to_parameters(_weights(rng)), cm)
    local = [_weights(rng) for _ in proxies[:2]]
    results: list[tuple[ClientProxy, FitRes]] = [
        (p, FitRes(OK, ndarrays_to_parameters(w), n, {}))
        for p, w, n in zip(proxies[:2], local, [30, 10], strict=True)]
    params, _ = strategy.aggregate_fit(1, results, [RuntimeError("bank-3 went away")])
    assert params is not None
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0],
                               (30 * local[0][0] + 10 * local[1][0]) / 40)
    # the platform averages the same two banks' copies; the checkpoint and log name them
    assert platform.banks == ["bank-1", "bank-2"]
    info = cps.load(1).info
    assert info["contributors"] == ["bank-1", "bank-2"] and info["banks"] == 2
    assert info["lost"] == {"bank-3": "no result"}
    event = json.loads(cps.progress.read_text().splitlines()[-1])
    assert event["contributors"] == ["bank-1", "bank-2"] and "bank-3" in event["lost"]


def _eval_res(name: str, y: np.ndarray, p: np.ndarray, fingerprint: str) -> EvaluateRes:
    m = _metrics(name, y, p)
    return EvaluateRes(OK, m["loss"], int(y.size), {
        "bank": name, "auc": m["auc"], "ks": m["ks"], "loss": m["loss"],
        "aligned": int(y.size) - 7, "fingerprint": fingerprint,
        "hist-pos": m["hist_pos"], "hist-neg": m["hist_neg"]})


def test_evaluate_round_trip(tmp_path: Path) -> None:
    strategy, _, cps, _ = _strategy(tmp_path, num_rounds=2)
    cm, proxies = _manager(2)
    rng = np.random.default_rng(3)
    params = ndarrays_to_parameters(_weights(rng))
    strategy.configure_fit(1, params, cm)
    fit: list[tuple[ClientProxy, FitRes]] = [
        (p, FitRes(OK, ndarrays_to_parameters(_weights(rng)), 100, {})) for p in proxies]
    strategy.aggregate_fit(1, fit, [])

    pairs = strategy.configure_evaluate(1, params, cm)
    assert len(pairs) == 2
    for _, ins in pairs:
        assert ins.config["platform-version"] == "r1-v"
        assert ins.config["round"] == 1
        assert ins.config["final"] is False  # round 1 of 2

    banks = [_bank(rng, 900, 0.2, 0.0), _bank(rng, 600, 0.25, 0.5)]
    results: list[tuple[ClientProxy, EvaluateRes]] = [
        (proxies[1], _eval_res("bank-2", *banks[1], "fp2")),
        (proxies[0], _eval_res("bank-1", *banks[0], "fp1")),
    ]
    loss, summary = strategy.aggregate_evaluate(1, results, [])
    y = np.concatenate([b[0] for b in banks])
    p = np.concatenate([b[1] for b in banks])
    assert summary["pooled_auc"] == pytest.approx(metrics.auc(y, p), abs=2e-3)
    assert summary["n_test"] == 1500
    assert loss == pytest.approx((900 * metrics.log_loss(*banks[0])
                                  + 600 * metrics.log_loss(*banks[1])) / 1500)
    # checkpoint: the evaluation (banks sorted, no histograms inside) and the histograms
    info = cps.load(1).info
    ev = info["evaluation"]
    assert [b["bank"] for b in ev["banks"]] == ["bank-1", "bank-2"]
    assert set(ev["banks"][0]) == {"bank", "n", "auc", "ks", "loss", "aligned", "fingerprint"}
    assert {b["bank"]: b["fingerprint"] for b in ev["banks"]} == {"bank-1": "fp1", "bank-2": "fp2"}
    assert ev["platform_version"] == "r1-v"
    assert set(info["histograms"]) == {"bank-1", "bank-2"}
    assert len(info["histograms"]["bank-1"]["pos"]) == HIST_BINS
    assert sum(info["histograms"]["bank-1"]["pos"]) == int(banks[0][0].sum())
    lines = [json.loads(x) for x in cps.progress.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["trained", "evaluated"]
    assert lines[1]["pooled_auc"] == ev["pooled_auc"]

    # the last round tells the banks it is final (they close their platform session)
    strategy.configure_fit(2, params, cm)
    strategy.aggregate_fit(2, fit, [])
    assert all(ins.config["final"] is True for _, ins in strategy.configure_evaluate(2, params, cm))


def test_aggregate_evaluate_refuses_fewer_than_min_banks(tmp_path: Path) -> None:
    strategy, _, cps, _ = _strategy(tmp_path)
    cps.save(1, [np.zeros(2)], "r1-v", {})
    rng = np.random.default_rng(4)
    y, p = _bank(rng, 200, 0.3, 0.0)
    with pytest.raises(CoordinatorError, match=r"round 1 evaluation: only 1 bank.*bank-2 crashed"):
        strategy.aggregate_evaluate(1, [(Proxy("0"), _eval_res("bank-1", y, p, "fp"))],
                                    [RuntimeError("bank-2 crashed")])
    assert "evaluation" not in cps.load(1).info


def test_strategy_starts_from_the_resumed_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    w = _weights(rng)
    strategy, _, _, _ = _strategy(tmp_path, rounds_done=1, initial=w, platform_version="r1-v")
    init = strategy.initialize_parameters(SimpleClientManager())
    assert isinstance(init, Parameters)
    for a, b in zip(parameters_to_ndarrays(init), w, strict=True):
        np.testing.assert_array_equal(a, b)
    assert strategy.platform_version == "r1-v"


def test_a_halted_secure_aggregation_names_the_lost_banks(tmp_path: Path) -> None:
    """SecAgg+ halts (too few shares to unmask) before aggregate_fit: evaluation then stops
    the run with the banks the watch saw lost, not a generic failure."""
    watch = _watch(4)
    strategy, platform, _, _ = _strategy(tmp_path, watch=watch)
    cm, _ = _manager(4)
    params = ndarrays_to_parameters(_weights(np.random.default_rng(7)))
    strategy.configure_fit(1, params, cm)
    watch._lost.update({2: "error: gone", 3: "no reply within 1 s"})  # as send_and_receive notes
    with pytest.raises(CoordinatorError,
                       match=r"round 1: secure aggregation halted: 2 bank\(s\) left \(bank-1, "
                             r"bank-2\).*lost: bank-3 \(error: gone\), bank-4 \(no reply"):
        strategy.configure_evaluate(1, params, cm)
    assert ("finish", "run-x", 1) not in platform.calls
