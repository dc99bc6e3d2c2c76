"""Whole federations on Flower's Simulation Engine (Ray), the platform node a real process.

Three banks of a small synthetic population, one local epoch per round. Ray starts once
per ``simulate`` call (about 10 s), so the cases share runs:

* ``full``: 2 rounds of FedAvg under SecAgg+, every reply the coordinator receives
  recorded (checkpoints, the platform in step, quality, the signed release, privacy);
* ``res``: round 1 with plain FedAvg messages (the SecAgg+-free path the federation
  benchmark uses), the platform node stopped, a new platform process on the same state
  folder, then the same run id with 2 rounds under SecAgg+: it resumes at round 2;
* ``prox``: 1 round of FedProx.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message
from flwr.common import bytes_to_ndarray
from flwr.server import ServerApp
from flwr.serverapp import Grid

import fedscore.cli.simulation as simulation
from bank_node.node import BankNode
from bank_node.trainer import BankTables
from coordinator.app import RELEASE_DIR, run_rounds
from coordinator.checkpoint import Checkpoints
from coordinator.platform_control import PlatformControl
from fedscore.cli.local import platform_process
from fedscore.crypto.secure_sum import encoded_size
from fedscore.data.preprocess import MOMENTS, Moments, Preprocessor
from fedscore.data.scenarios import ScenarioManifest
from fedscore.data.synth import synth_population
from fedscore.federation.provision import load_kit, provision
from fedscore.federation.release import PREPROCESSING_FILE, verify_release
from fedscore.federation.runconfig import RunSettings
from fedscore.ledger.writer import Ledger
from fedscore.ml.metrics import auc
from fedscore.wire.transport import secure_channel

PEOPLE = 9000
EVAL_KEYS = {"bank", "auc", "ks", "loss", "aligned", "fingerprint", "hist-pos", "hist-neg"}
# SecAggPlusWorkflow's defaults: each bank's weighted update is clipped to +-8 and
# quantized onto 2**22 levels (stochastic rounding)
CLIPPING_RANGE, QUANTIZATION_RANGE = 8.0, 2**22


class RecordingGrid(Grid):
    """The coordinator's Grid, keeping every reply message it receives."""

    def __init__(self, inner: Grid, replies: list[Message]) -> None:
        self.inner, self.replies = inner, replies

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = list(self.inner.pull_messages(message_ids))
        self.replies.extend(out)
        return out

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        out = list(self.inner.send_and_receive(messages, timeout=timeout))
        self.replies.extend(out)
        return out


@dataclass
class World:
    root: Path
    data: ScenarioManifest
    banks: list[str]
    address: str  # the shared platform node (full and prox runs)

    def kit(self, party: str) -> Path:
        return self.root / "kits" / party

    def nodes(self, address: str) -> list[BankNode]:
        return [BankNode(b, self.data.bank_dirs[b], self.kit(b), address,
                         self.root / "bank-state" / b) for b in self.banks]

    def settings(self, run_id: str, rounds: int, address: str, **kw: Any) -> RunSettings:
        return RunSettings(run_id=run_id, num_rounds=rounds, local_epochs=1,
                           max_weight=10_000.0, state_dir=str(self.root / "coordinator"),
                           coordinator_kit=str(self.kit("coordinator")),
                           platform_address=address, **kw)

    def platform(self, state: str, log: str) -> Any:
        return platform_process(self.kit("platform"), self.data.platform_features,
                                self.data.platform_schema, log=self.root / log,
                                state_dir=self.root / state)

    def run_state(self, address: str, run_id: str) -> tuple[int, str]:
        """Asked as the coordinator, so on a ledger of the coordinator's (the audit test
        would find the platform's record of the call one-sided otherwise)."""
        kit = load_kit(self.kit("coordinator"))
        with (Ledger(self.root / "harness-ledger", kit.signing_key, kit.party,
                     lock_timeout_s=10) as ledger,
              secure_channel(address, kit, "platform", ledger=ledger) as ch):
            return PlatformControl(ch).run_state(run_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("simulation")
    data = synth_population(root / "data", people=PEOPLE, banks=3, seed=3)
    banks = sorted(data.bank_dirs)
    provision(root / "kits", parties=("platform", *banks, "coordinator"))
    w = World(root, data, banks, "")
    with w.platform("platform-state", "platform.log") as address:
        w.address = address
        yield w


@dataclass
class FullRun:
    settings: RunSettings
    replies: list[Message]
    platform_state: tuple[int, str]


@pytest.fixture(scope="module")
def full(world: World) -> FullRun:
    replies: list[Message] = []

    def recording_app(settings: RunSettings, *, secure_aggregation: bool = True) -> ServerApp:
        app = ServerApp()

        @app.main()
        def main(grid: Grid, context: Any) -> None:
            run_rounds(RecordingGrid(grid, replies), context, settings,
                       secure_aggregation=secure_aggregation)

        return app

    settings = world.settings("full", 2, world.address)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulation, "server_app", recording_app)
        simulation.simulate(settings, world.nodes(world.address))
    return FullRun(settings, replies, world.run_state(world.address, "full"))


@dataclass
class ResumedRun:
    settings: RunSettings
    after_round_1: dict[str, bytes]
    platform_state: tuple[int, str]
    progress: list[dict[str, Any]]


@pytest.fixture(scope="module")
def resumed(world: World) -> ResumedRun:
    with world.platform("platform-res", "platform-res-1.log") as address:
        simulation.simulate(world.settings("res", 1, address), world.nodes(address),
                            secure_aggregation=False)
    round_1 = world.root / "coordinator" / "res" / "round-0001"
    before = {p.name: p.read_bytes() for p in round_1.iterdir()}
    # the platform node went away; a new process on the same state folder (new port)
    with world.platform("platform-res", "platform-res-2.log") as address:
        settings = world.settings("res", 2, address)
        simulation.simulate(settings, world.nodes(address))
        state = world.run_state(address, "res")
    progress = [json.loads(x) for x in (settings.run_dir / "progress.jsonl").read_text()
                .splitlines()]
    return ResumedRun(settings, before, state, progress)


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines()]


def _bank_tests(world: World, run_id: str, round_: int) -> dict[str, tuple[np.ndarray,
                                                                            np.ndarray]]:
    out = {}
    for b in world.banks:
        with np.load(world.root / "bank-state" / b / run_id / f"round-{round_:04d}-test.npz") as z:
            out[b] = (z["labels"], z["pd"])
    return out


# ---------------------------------------------------------------------------------------------
# the full run
# ---------------------------------------------------------------------------------------------


def test_rounds_are_checkpointed_with_the_platform_in_step(world: World, full: FullRun) -> None:
    cps = Checkpoints(full.settings.run_dir)
    assert cps.rounds() == [1, 2]
    r1, r2 = cps.load(1), cps.load(2)
    # the pair: the platform's committed model of the last round is the checkpoint's
    assert full.platform_state == (2, r2.platform_version)
    assert r1.platform_version.startswith("r1-") and r2.platform_version.startswith("r2-")
    for cp in (r1, r2):
        assert cp.info["banks"] == 3 and cp.info["platform_sessions"] == 3
        assert cp.info["evaluation"]["platform_version"] == cp.platform_version
        assert cp.info["evaluation"]["n_test"] == sum(s.test_rows
                                                      for s in world.data.banks.values())
    # every training row that has platform data went through the platform, every round
    assert r1.info["platform_rows"] == r2.info["platform_rows"] == sum(
        s.train_on_platform for s in world.data.banks.values())
    events = _events(full.settings.run_dir)
    assert [(e["event"], e.get("round")) for e in events] == [
        ("started", None), ("trained", 1), ("evaluated", 1), ("trained", 2), ("evaluated", 2),
        ("released", None)]
    assert events[0]["settings"]["num-rounds"] == 2


def test_quality_and_the_exact_pooled_auc(world: World, full: FullRun) -> None:
    ev = Checkpoints(full.settings.run_dir).load(2).info["evaluation"]
    assert ev["pooled_auc"] > 0.65
    tests = _bank_tests(world, "full", 2)
    exact = auc(np.concatenate([y for y, _ in tests.values()]),
                np.concatenate([p for _, p in tests.values()]))
    assert ev["pooled_auc"] == pytest.approx(exact, abs=2e-3)  # from the PD histograms
    for bank in ev["banks"]:
        y, p = tests[bank["bank"]]
        assert bank["n"] == y.size == world.data.banks[bank["bank"]].test_rows
        assert bank["auc"] == pytest.approx(auc(y, p), abs=1e-12)
        assert bank["auc"] > 0.65


def test_release_verifies_and_pairs_with_the_platform(world: World, full: FullRun) -> None:
    kit = load_kit(world.kit("coordinator"))
    manifest, arrays = verify_release(full.settings.run_dir / RELEASE_DIR,
                                      kit.signing_key.verify_key())
    last = Checkpoints(full.settings.run_dir).load(2)
    assert manifest["round"] == 2 and manifest["run_id"] == "full"
    assert manifest["platform_model_version"] == last.platform_version == full.platform_state[1]
    for a, b in zip(arrays, last.arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    assert manifest["metrics"] == last.info["evaluation"]
    assert manifest["config"] == full.settings.to_run_config()
    # the preprocessing: every bank's moments summed under SecAgg+ (exactly), and every
    # bank's transforms fitted on that sum, the same at every bank
    trains = [BankTables.load(world.data.bank_dirs[bank]).train for bank in world.banks]
    summed = sum((Preprocessor.moments(t) for t in trains[1:]), Preprocessor.moments(trains[0]))
    pooled = json.loads((full.settings.run_dir / RELEASE_DIR / PREPROCESSING_FILE).read_text())
    assert pooled["layout"] == summed.layout == manifest["preprocessing_layout"]
    assert pooled["banks"] == 3
    np.testing.assert_allclose(pooled["sums"], summed.sums.ravel(), rtol=1e-13, atol=1e-15)
    rows = np.asarray(pooled["sums"]).reshape(-1, len(MOMENTS))
    want = Preprocessor.fit(trains[0], moments=Moments(pooled["layout"], rows)).fingerprint()
    assert want != Preprocessor.fit(trains[0]).fingerprint()  # not the bank's own fit
    assert manifest["preprocessing_fingerprints"] == {bank: want for bank in world.banks}


# ---------------------------------------------------------------------------------------------
# privacy: what the coordinator receives
# ---------------------------------------------------------------------------------------------


def _blobs(msg: Message) -> Iterator[tuple[str, Any]]:
    """(record/key, value) of every value in a reply; arrays as numpy arrays."""
    for name, record in msg.content.items():
        if isinstance(record, ArrayRecord):
            for key, arr in record.items():
                yield f"{name}/{key}", arr.numpy()
        else:
            for key, value in record.items():
                yield f"{name}/{key}", value


def _raw_bytes(value: Any) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, str):
        return [value.encode()]
    if isinstance(value, np.ndarray):
        return [value.tobytes()]
    if isinstance(value, list):
        return [b for v in value for b in _raw_bytes(v)]
    return []  # a scalar (a count, a metric, a node id) holds no row


def test_the_coordinator_receives_aggregates_only(world: World, full: FullRun) -> None:
    replies = full.replies
    assert replies and not any(m.has_error() for m in replies)
    kinds = {m.metadata.message_type for m in replies}
    assert kinds == {"query", "get_parameters", "train", "evaluate"}

    # identity: each bank once, its name and a signature, nothing else
    hellos = [m for m in replies if m.metadata.message_type == "query"]
    assert len(hellos) == 3
    for m in hellos:
        assert set(m.content.keys()) == {"fedscore-hello"}
        assert set(m.content.config_records["fedscore-hello"].keys()) == {"party", "signature"}

    # evaluation: exactly the documented metrics, per bank and round
    evals = [m for m in replies if m.metadata.message_type == "evaluate"]
    assert len(evals) == 3 * 2
    for m in evals:
        assert set(m.content.keys()) == {"evaluateres.loss", "evaluateres.num_examples",
                                         "evaluateres.metrics", "evaluateres.status"}
        metrics = m.content.config_records["evaluateres.metrics"]
        assert set(metrics.keys()) == EVAL_KEYS
        for key in ("hist-pos", "hist-neg"):  # 1000 bins of counts
            hist = metrics[key]
            assert isinstance(hist, bytes) and len(hist) == 4000
        assert not m.content.array_records

    # training under SecAgg+: no bank's weights in the clear, only masked integer vectors
    # of exactly the model's size
    init = [m for m in replies if m.metadata.message_type == "get_parameters"]
    assert len(init) == 1
    model = init[0].content.array_records["getparametersres.parameters"].to_numpy_ndarrays()
    n_params = sum(a.size for a in model)
    from bank_node.federated import BankClient  # torch: only now

    seeded = BankClient(world.nodes(world.address)[0], 0).get_parameters({"seed": 0})
    for a, b in zip(model, seeded, strict=True):  # the seeded initial model: no data in it
        np.testing.assert_array_equal(a, b)
    masked_sizes: list[int] = []
    for m in (m for m in replies if m.metadata.message_type == "train"):
        for arrays in m.content.array_records.values():
            assert len(arrays) == 0, "a bank's model update reached the coordinator in clear"
        configs = m.content.config_records["secaggplus_configs"]
        if "masked_params" in configs:
            masked = configs["masked_params"]
            assert isinstance(masked, list)
            vectors = [bytes_to_ndarray(blob) for blob in masked if isinstance(blob, bytes)]
            assert len(vectors) == len(masked)
            assert all(v.dtype.kind in "iu" for v in vectors)
            masked_sizes.append(sum(v.size for v in vectors))
    # 3 banks x 2 rounds of model updates, + the weight factor; and round 0, every bank's
    # preprocessing sums (masked the same way)
    columns = len(Preprocessor.moments(BankTables.load(world.data.bank_dirs["bank-1"]).train)
                  .sums)
    assert sorted(masked_sizes) == sorted(
        [n_params + 1] * 6 + [encoded_size(columns * len(MOMENTS)) + 1] * 3)

    # no row-level data: no bank's labels or scores, in any common encoding
    payload = b"".join(raw for m in replies for _, v in _blobs(m) for raw in _raw_bytes(v))
    tests = _bank_tests(world, "full", 2)
    for bank in world.banks:
        tables = BankTables.load(world.data.bank_dirs[bank])
        assert tables.train.labels is not None
        for y in (np.asarray(tables.train.labels), tests[bank][0]):
            y = y[:96]
            for enc in (np.int8, np.int32, np.int64, np.float32, np.float64):
                assert y.astype(enc).tobytes() not in payload
            assert np.packbits(y.astype(bool)).tobytes() not in payload
        pd = tests[bank][1][:8]
        assert pd.tobytes() not in payload and pd.astype(np.float32).tobytes() not in payload
        ids = tables.test.ids[:3]
        assert not any(str(i).encode() in payload for i in ids)


def test_every_message_is_on_both_ends_ledgers(world: World, full: FullRun) -> None:
    """The coordinator's Grid, the banks' ledger mod and the gRPC taps, audited together."""
    from fedscore.audit.verify import verify_ledgers
    from fedscore.ledger.verify import read_ledger

    folders = [world.root / "coordinator" / "ledger", world.root / "harness-ledger",
               *(world.root / "bank-state" / b / "ledger" for b in world.banks),
               *(p / "ledger" for p in sorted(world.root.glob("platform-*"))
                 if (p / "ledger").is_dir())]
    keys = {n: p.verify_key for n, p in load_kit(world.kit("coordinator")).peers.items()}
    report = verify_ledgers(folders, keys)
    assert report.ok, (report.problems[:5], [str(u) for u in report.unmatched[:5]])
    coordinator = [e for e in read_ledger(folders[0] / "ledger.jsonl")]
    kinds = {(e.direction, e.kind) for e in coordinator if e.peer == "bank-1"}
    assert {("sent", "identity-challenge"), ("received", "identity"),
            ("sent", "statistics-request"), ("received", "statistics-sums"),
            ("sent", "secagg-setup"), ("received", "secagg-public-keys"),
            ("sent", "model"), ("received", "model-update"), ("received", "metrics")} <= kinds
    t = report.traffic
    assert t[("bank-1", "coordinator", "model-update")].messages >= 2  # one per round
    assert t[("platform", "bank-1", "embeddings")].bytes > 0
    assert ("coordinator", "platform", "federation-control") in t


# ---------------------------------------------------------------------------------------------
# resume after a crash, and the SecAgg+-free path
# ---------------------------------------------------------------------------------------------


def test_resume_continues_after_the_last_whole_round(world: World, resumed: ResumedRun) -> None:
    run_dir = resumed.settings.run_dir
    events = [(e["event"], e.get("round")) for e in resumed.progress]
    assert events == [
        ("started", None), ("trained", 1), ("evaluated", 1), ("released", None),
        ("resumed", 1), ("trained", 2), ("evaluated", 2), ("released", None)]
    # round 1 untouched by the resumed run
    assert {p.name: p.read_bytes() for p in (run_dir / "round-0001").iterdir()} == (
        resumed.after_round_1)
    cps = Checkpoints(run_dir)
    assert cps.rounds() == [1, 2]
    last = cps.load(2)
    # the final pair: checkpoint, platform (restarted from its state folder) and release
    assert resumed.platform_state == (2, last.platform_version)
    kit = load_kit(world.kit("coordinator"))
    manifest, arrays = verify_release(run_dir / RELEASE_DIR, kit.signing_key.verify_key())
    assert manifest["round"] == 2
    assert manifest["platform_model_version"] == last.platform_version
    for a, b in zip(arrays, last.arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    assert last.info["evaluation"]["pooled_auc"] > 0.65


def test_resumed_run_matches_the_uninterrupted_one(world: World, full: FullRun,
                                                   resumed: ResumedRun) -> None:
    a, b = Checkpoints(full.settings.run_dir), Checkpoints(resumed.settings.run_dir)
    # Round 1 starts from the same seeded models on both sides: the banks train the
    # same local models and the platform averages the same copies, bit for bit (the
    # bank-side averages differ by SecAgg+'s quantization, see the next test).
    assert a.load(1).platform_version == b.load(1).platform_version
    # Round 2 (after resume) starts from nearly the same pair: nearly the same model.
    diff2 = max(float(np.abs(x - y).max()) for x, y in zip(a.load(2).arrays, b.load(2).arrays,
                                                           strict=True))
    assert diff2 < 0.02
    assert b.load(2).info["evaluation"]["pooled_auc"] == pytest.approx(
        a.load(2).info["evaluation"]["pooled_auc"], abs=5e-3)


def _local_models(world: World, settings: RunSettings) -> tuple[list[list[np.ndarray]],
                                                                 list[int]]:
    """Each bank's round-1 model, trained here in process from the run's seeded start
    (preprocessing from the run's pooled statistics, the platform's bottom through
    LocalPlatformLink, the customers aligned by a plaintext join of ids instead of PSI)."""
    from bank_node.federated import BankClient
    from fedscore.data.table import load_table
    from fedscore.ml.architecture import SplitArchitecture
    from fedscore.ml.model import BankModel, load_arrays, to_arrays
    from fedscore.ml.training import BankData, LocalPlatformLink, PlatformBottom, train_round
    from fedscore.research.baselines import PlatformSide, align

    cfg = settings.train_config()
    platform = PlatformSide(load_table(world.data.platform_features,
                                       world.data.platform_schema, require_label=False), None)
    arch = SplitArchitecture()
    platform_cfg = arch.platform_bottom(platform.pre.n_numeric, platform.pre.cat_cardinalities)
    start = BankClient(world.nodes("unused")[0], settings.seed).get_parameters(
        {"seed": settings.seed})
    pooled = json.loads((settings.run_dir / "preprocessing.json").read_text())
    moments = Moments(pooled["layout"], np.asarray(pooled["sums"]).reshape(-1, len(MOMENTS)))
    models, rows = [], []
    for bank in world.banks:
        tables = BankTables.load(world.data.bank_dirs[bank])
        assert tables.train.labels is not None
        pre = Preprocessor.fit(tables.train, moments=moments)
        platform_rows = align(platform.ids, tables.train.ids)
        aligned = platform_rows[platform_rows >= 0]
        handles = np.full(platform_rows.size, -1, np.int64)
        handles[platform_rows >= 0] = np.arange(aligned.size)
        model = BankModel(arch.bank_bottom(pre.n_numeric, pre.cat_cardinalities), arch.top())
        load_arrays(model, start)
        link = LocalPlatformLink(PlatformBottom(platform.encoded, platform_cfg, cfg), aligned)
        data = BankData(pre.transform(tables.train), np.asarray(tables.train.labels), handles)
        result = train_round(data, link, model, cfg, epochs=settings.local_epochs, round_=1)
        models.append(to_arrays(result.model))
        rows.append(result.rows)
    return models, rows


def test_the_global_model_is_the_row_weighted_mean_of_the_banks_models(
        world: World, full: FullRun, resumed: ResumedRun) -> None:
    models, rows = _local_models(world, full.settings)
    assert rows == [world.data.banks[b].train_rows for b in world.banks]

    def mean(weights: list[float]) -> list[np.ndarray]:
        total = np.asarray(weights, np.float64) / sum(weights)
        return [np.tensordot(total, np.stack([m[i] for m in models]).astype(np.float64), 1)
                for i in range(len(models[0]))]

    def gap(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))

    want = mean([float(n) for n in rows])
    # plain FedAvg messages (res, round 1): the mean itself, to float rounding
    plain = Checkpoints(resumed.settings.run_dir).load(1).arrays
    assert gap(plain, want) < 1e-6
    # under SecAgg+ (full, round 1): the coordinator only learns the sum, quantized: at
    # most one quantization step per bank, scaled back by the rows
    step = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
    bound = len(rows) * step * full.settings.max_weight / sum(rows)
    secure = Checkpoints(full.settings.run_dir).load(1).arrays
    assert gap(secure, want) <= 1.5 * bound
    # (the check can tell: the banks' models differ, so an unweighted mean is far off)
    assert gap(mean([1.0] * len(rows)), want) > 100 * bound


# ---------------------------------------------------------------------------------------------
# FedProx
# ---------------------------------------------------------------------------------------------


def test_fedprox_runs_and_stays_nearer_the_global_model(world: World, full: FullRun) -> None:
    settings = world.settings("prox", 1, world.address, proximal_mu=0.1)
    simulation.simulate(settings, world.nodes(world.address))
    events = _events(settings.run_dir)
    assert events[0]["settings"]["proximal-mu"] == 0.1
    cps = Checkpoints(settings.run_dir)
    assert cps.rounds() == [1]
    prox = cps.load(1)
    assert prox.info["evaluation"]["pooled_auc"] > 0.65
    from bank_node.federated import BankClient

    start = BankClient(world.nodes(world.address)[0], 0).get_parameters({"seed": 0})

    def moved(arrays: list[np.ndarray]) -> float:
        return float(np.sqrt(sum(((a - s) ** 2).sum()
                                 for a, s in zip(arrays, start, strict=True))))

    # the proximal term pulls every bank toward the round's global model (here the start)
    fedavg = Checkpoints(full.settings.run_dir).load(1)
    assert moved(prox.arrays) < 0.8 * moved(fedavg.arrays)


# ---------------------------------------------------------------------------------------------
# differential privacy of the bank updates
# ---------------------------------------------------------------------------------------------


def test_update_dp_clips_each_bank_and_noises_the_unweighted_mean(
        world: World, full: FullRun) -> None:
    from coordinator.privacy import FILE as PRIVACY_FILE
    from fedscore.crypto.dp import gaussian_epsilon

    models, _ = _local_models(world, full.settings)  # round 1 from the seeded start
    from bank_node.federated import BankClient

    start = BankClient(world.nodes(world.address)[0], 0).get_parameters({"seed": 0})

    def delta(m: list[np.ndarray]) -> list[np.ndarray]:
        return [a.astype(np.float64) - s for a, s in zip(m, start, strict=True)]

    norms = [float(np.sqrt(sum((d ** 2).sum() for d in delta(m)))) for m in models]
    clip, z = 0.5 * min(norms), 0.5  # every bank's update is clipped
    settings = world.settings("dp", 1, world.address, dp_update_noise=z, dp_update_clip=clip)
    simulation.simulate(settings, world.nodes(world.address))

    noisy = Checkpoints(settings.run_dir).load(1)
    # each bank's update scaled to norm clip, then the plain (unweighted) mean
    clipped = [[d * (clip / n) for d in delta(m)] for m, n in zip(models, norms, strict=True)]
    want = [s + sum(c[i] for c in clipped) / len(models) for i, s in enumerate(start)]
    residual = np.concatenate([(a - w).ravel() for a, w in zip(noisy.arrays, want,
                                                                strict=True)])
    # what is left is Flower's noise, std z * clip / n (n = 3 banks), nothing systematic
    assert float(residual.std()) == pytest.approx(z * clip / 3, rel=0.05)
    assert abs(float(residual.mean())) < 0.1 * z * clip / 3
    # the noisy model is the one checkpointed and released
    kit = load_kit(world.kit("coordinator"))
    manifest, arrays = verify_release(settings.run_dir / RELEASE_DIR,
                                      kit.signing_key.verify_key())
    for a, b in zip(arrays, noisy.arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    lines = [json.loads(x) for x in (settings.run_dir / PRIVACY_FILE).read_text().splitlines()]
    eps = gaussian_epsilon(z, settings.dp_delta, 1)
    assert lines == [{"round": 1, "mechanism": "bank-updates", "noise_multiplier": z,
                      "clip": clip, "delta": settings.dp_delta, "releases": 1,
                      "epsilon": pytest.approx(eps)}]
    assert manifest["privacy"] == {"bank-updates": lines[0]}
    # round 0's preprocessing sums stayed exact (not clipped): the same as the full run's
    assert (settings.run_dir / "preprocessing.json").read_text() == (
        full.settings.run_dir / "preprocessing.json").read_text()
    # and the run without DP wrote no privacy lines
    assert not (full.settings.run_dir / PRIVACY_FILE).exists()
