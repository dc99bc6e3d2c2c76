"""Privacy: what the split model leaks with and without DP on the platform embeddings, what
each DP setting costs in test AUC, and what the audit ledger costs in training wall time.

Leakage (in process, :func:`fedscore.research.leakage.measure`): every bank of default-credit trains
its split model with a fresh platform bottom exactly as the nodes do (default
``TrainConfig``: early stopping, refit pass), with what crosses recorded; then

* ``inversion_r2``: a bank that also holds the platform's raw numeric features for 30% of
  its customers regresses them from the embeddings it received (training and scoring);
  out-of-sample R² per feature, worst case over banks and embedding sources, and its mean;
* ``label_attack_auc``: the platform ranks customers by the gradients it received (norm
  and direction attacks, Li et al. 2021); AUC against the true labels, worst bank;
* ``auc``: pooled test AUC of the three banks; ``auc_cost`` = no-DP AUC minus this one.

Settings: no DP, then the platform's Gaussian mechanism (``fedscore.crypto.dp``) on every
embedding row it releases (clip the L2 norm to C, add N(0, (sigma C)²) per coordinate) for
each noise multiplier in ``--sigmas``; C defaults to the median norm of the embeddings the
no-DP run released for evaluation and scoring, so clipping bites on about half the rows.
``epsilon`` (at ``delta``) is the worst customer's over the whole run: one release per
epoch (training or validation row, refit pass included) plus the final scoring pass,
``fedscore.crypto.dp.embedding_epsilon`` (RDP, replace-one); later scoring requests would add
to it. Bank-update DP (``update_noise``, noise on the SecAgg+ sum) is not in these runs
(0); a setting with it can join the same table.

Ledger overhead (bank and platform each a process of their own, as the nodes run): one
bank trains with a platform node over mutual TLS gRPC, a fixed number of epochs (no early
stop, no refit), with the audit ledger at both nodes ("on": ``create_server(ledger=)``'s
``LedgerTap`` and ``secure_channel(ledger=)``'s ``LedgerChannel``, the nodes' own wiring)
or at neither ("off"; ``fedscore platform serve`` always ledgers, so the platforms are
this script's child, ``serve`` less the mandatory ledger). Each repetition runs both arms
at the same time, each against its own platform process (they stay up; one warm-up run
each is discarded), so both see the same load from the shared VM's other tenants, whose
drift over tens of seconds swamped the overhead when the arms ran back to back. Two
trainings at once also leave the ledger no idle core: what it costs in CPU it costs in
wall time, so the figure errs high. ``ledger_overhead`` = the median over repetitions of
on / off - 1 of the bank's training wall time; ``aa_overhead`` the same for ``--aa-reps``
repetitions with the ledger off in both arms (the method's own noise, which should read
near 0); ``median_overhead`` = median on / median off - 1. The two ledgers are verified at the
end with :func:`fedscore.audit.verify.verify_ledgers` (chains, signatures, every message on both
ends); ``us_per_entry`` is the median time added per split-learning entry (both ends
counted), ``microbench`` the in-process cost of one entry on the message path
(``submit``) and in the ledger's background thread (hash, sign, append).

    python benchmarks/privacy.py [--seed 0] [--sigmas 0.5,1,2] [--reps 12] [--aa-reps 4]

The last stdout line is one JSON object. Run time and the figures measured so far, with
the method's history: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from bank_node.platform_link import GrpcPlatformLink
from bank_node.psi_client import run_psi
from bank_node.trainer import BankTables
from fedscore.audit.verify import verify_ledgers
from fedscore.crypto import dp
from fedscore.data.preprocess import Preprocessor
from fedscore.data.scenarios import prepare_default_credit
from fedscore.data.table import find_table
from fedscore.federation.provision import load_kit, provision
from fedscore.ledger.entry import LEDGER_FILE
from fedscore.ledger.verify import read_ledger
from fedscore.ledger.writer import Ledger
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.metrics import auc
from fedscore.ml.training import BankData, TrainConfig, predict, train_bank_model
from fedscore.research import leakage
from fedscore.research.baselines import Scenario, load_scenario
from fedscore.wire.transport import secure_channel

_READY = "platform node listening on "
DELTA = 1e-5  # δ of the (ε, δ) reported per DP setting


# ------------------------------------------------------------------------------ leakage
@dataclass(frozen=True)
class Setting:
    """One privacy configuration; ``update_noise`` is the bank-update (SecAgg+ sum) noise
    multiplier, kept so that such settings can join the table without a new schema."""

    name: str
    embedding_noise: float = 0.0  # noise multiplier sigma of the embedding mechanism
    embedding_clip: float | None = None  # L2 clip C of each embedding row; None: no DP
    update_noise: float = 0.0

    def mechanism(self, seed: int) -> leakage.EmbeddingNoise | None:
        """The embedding mechanism this setting puts between the platform and the banks."""
        if self.embedding_clip is None:
            return None
        if self.update_noise:
            raise NotImplementedError("bank-update noise is not wired into this benchmark yet")
        return dp.gaussian_mechanism(self.embedding_clip, self.embedding_noise, seed=seed)


def epsilon(setting: Setting, releases: int) -> float | None:
    """ε at ``DELTA`` of the customer whose embedding was released most often, under the
    setting's embedding mechanism (``fedscore.crypto.dp``'s RDP accountant, replace-one); None
    without embedding DP."""
    if setting.embedding_clip is None or setting.embedding_noise <= 0:
        return None
    return dp.embedding_epsilon(
        dp.DpSettings(setting.embedding_noise, setting.embedding_clip, DELTA), releases)


class NormProbe:
    """An identity "mechanism" that notes the L2 norms of evaluation releases, to pick C.

    Identity in the forward and the backward, so the run is the no-DP run; only releases
    outside autograd (evaluation, scoring) are noted, training batches are not.
    """

    def __init__(self) -> None:
        self.norms: list[np.ndarray] = []

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        """Note the norms of an evaluation release and return ``emb`` unchanged."""
        if not torch.is_grad_enabled():
            self.norms.append(emb.detach().norm(dim=1).numpy().copy())
        return emb

    def median(self) -> float:
        """The median L2 norm over every noted release: the default clip C."""
        return float(np.median(np.concatenate(self.norms)))


def measure_setting(
    scenario: Scenario, setting: Setting, seed: int, cfg: TrainConfig,
    noise: leakage.EmbeddingNoise | None = None, banks: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Leakage and AUC of one setting, in the output's shape (``auc_cost`` filled later).

    ``noise`` overrides the setting's mechanism (the no-DP run passes its norm probe).
    """
    t0 = time.perf_counter()
    with threadpool_limits(1):  # sklearn's attack models: one core, like the training
        m = leakage.measure(
            scenario, seed=seed, cfg=cfg, banks=banks,
            embedding_noise=noise if noise is not None else setting.mechanism(seed),
        )
    inversion = {k: round(v, 4) for k, v in m["inversion_r2"].items()}
    # Each row is released once per epoch (as a training or a validation row; the refit
    # pass too), then once more when the final model scores it.
    releases = max(b["epochs_run"] + b["refit_epochs"] + 1 for b in m["per_bank"])
    eps = epsilon(setting, releases)
    inversion[leakage.MEAN_R2] = round(m["inversion_mean_r2"], 4)
    return {
        "name": setting.name,
        "embedding_noise": setting.embedding_noise,
        "embedding_clip": setting.embedding_clip,
        "update_noise": setting.update_noise,
        "inversion_r2": inversion,
        "label_attack_auc": {"norm_auc": round(m["label_norm_auc"], 4),
                             "cosine_auc": round(m["label_cosine_auc"], 4)},
        "auc": round(m["test_auc"], 5),
        "auc_cost": 0.0,
        "epsilon": None if eps is None else round(eps, 3),
        "releases": releases,
        "per_bank_auc": [round(b["test_auc"], 5) for b in m["per_bank"]],
        "epochs_run": [b["epochs_run"] + b["refit_epochs"] for b in m["per_bank"]],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def leakage_table(
    scenario: Scenario, sigmas: Sequence[float], seed: int, cfg: TrainConfig,
    clip: float | None = None, banks: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], float]:
    """No DP first (it fixes C unless ``clip`` is given), then one run per sigma.

    Returns the settings' rows (``auc_cost`` against the no-DP run) and C.
    """
    probe = NormProbe()
    base = measure_setting(scenario, Setting("no_dp"), seed, cfg, noise=probe, banks=banks)
    log(f"no_dp: {json.dumps(base)}")
    c = round(probe.median(), 3) if clip is None else clip
    rows = [base]
    for sigma in sigmas:
        setting = Setting(f"emb_sigma{sigma:g}", embedding_noise=sigma, embedding_clip=c)
        row = measure_setting(scenario, setting, seed, cfg, banks=banks)
        row["auc_cost"] = round(base["auc"] - row["auc"], 5)
        log(f"{setting.name}: {json.dumps(row)}")
        rows.append(row)
    return rows, c


# ------------------------------------------------------------------ bank-update DP
def update_dp_table(
    root: Path, bank_dirs: dict[str, Path], platform: tuple[Path, Path], sigmas: Sequence[float],
    clip: float, rounds: int, epochs: int, seed: int, log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """The federation (Flower Simulation Engine, SecAgg+, a real platform process) without
    DP, then with the banks' updates clipped to ``clip`` and the sum noised, per sigma.

    Update DP changes nothing that crosses the platform boundary per customer (the
    attacks above), so those fields are null here; what it bounds is one bank's influence
    on the model the coordinator and every bank get (ε per bank, from ``privacy.jsonl``).
    """
    from bank_node.node import BankNode
    from fedscore.cli.local import platform_process
    from fedscore.cli.simulation import simulate
    from fedscore.federation.runconfig import RunSettings

    banks = sorted(bank_dirs)
    rows: list[dict[str, Any]] = []
    with platform_process(root / "kits" / "platform", *platform,
                          state_dir=root / "platform-state", log=root / "platform.log") as addr:
        for sigma in [0.0, *sigmas]:
            name = "federated_no_dp" if sigma == 0 else f"upd_sigma{sigma:g}"
            settings = RunSettings(
                run_id=name, num_rounds=rounds, local_epochs=epochs, seed=seed,
                state_dir=str(root / "coordinator"),
                coordinator_kit=str(root / "kits" / "coordinator"), platform_address=addr,
                dp_update_noise=sigma, dp_update_clip=clip, dp_delta=DELTA)
            nodes = [BankNode(b, bank_dirs[b], root / "kits" / b, addr,
                              root / "bank-state" / b) for b in banks]
            t0 = time.perf_counter()
            for attempt in range(2):  # Ray's start-up times out now and then on this machine
                try:
                    simulate(settings, nodes)
                    break
                except RuntimeError as exc:
                    if attempt or "Simulation Runtime crashed" not in str(exc):
                        raise
                    log(f"{name}: the Simulation Engine failed to start ({exc}); again")
            ys, ps = [], []
            for b in banks:
                test = root / "bank-state" / b / name / f"round-{rounds:04d}-test.npz"
                with np.load(test) as z:
                    ys.append(z["labels"])
                    ps.append(z["pd"])
            budget = [json.loads(x) for x in (settings.run_dir / "privacy.jsonl").read_text()
                      .splitlines()] if sigma else []
            row: dict[str, Any] = {
                "name": name, "embedding_noise": 0.0, "embedding_clip": None,
                "update_noise": sigma, "update_clip": clip if sigma else None,
                "inversion_r2": None, "label_attack_auc": None,
                "auc": round(auc(np.concatenate(ys), np.concatenate(ps)), 5),
                "auc_cost": 0.0,
                "epsilon": round(budget[-1]["epsilon"], 3) if budget else None,
                "rounds": rounds, "local_epochs": epochs,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            if sigma:
                row["auc_cost"] = round(rows[0]["auc"] - row["auc"], 5)
            log(f"{name}: {json.dumps(row)}")
            rows.append(row)
    return rows


# ------------------------------------------------------------------------ ledger overhead
def platform_child(kit: Path, data: Path, schema: Path, ledger_dir: Path | None) -> None:
    """``serve`` with the ledger optional (the real one always ledgers): the "off" arm."""
    from fedscore.data.table import load_table
    from platform_node.server import PlatformNode, create_server

    torch.set_num_threads(1)
    k = load_kit(kit)
    node = PlatformNode(k, load_table(data, schema))
    ledger = Ledger(ledger_dir, k.signing_key, k.party) if ledger_dir is not None else None
    server, port = create_server("127.0.0.1:0", node, ledger=ledger)
    server.start()
    print(f"{_READY}127.0.0.1:{port}", flush=True)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    stop.wait()
    server.stop(grace=2).wait()
    if ledger is not None:
        ledger.close()


@contextmanager
def platform_proc(kit: Path, data: Path, schema: Path, ledger_dir: Path | None) -> Iterator[str]:
    """Run :func:`platform_child` in its own process; yield its address; stop it (SIGTERM,
    so its ledger is closed and complete) on exit."""
    cmd = [sys.executable, __file__, "--platform-child", str(kit), str(data), str(schema)]
    if ledger_dir is not None:
        cmd += ["--ledger-dir", str(ledger_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith(_READY):
                break
        else:
            raise RuntimeError(f"platform child exited {proc.wait()} before listening")
        address = line[len(_READY):].split()[0]
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe open
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def bank_run(
    kit_dir: Path, data_dir: Path, address: str, cfg: TrainConfig, ledger_dir: Path | None,
) -> tuple[float, float]:
    """``bank_node.trainer.run_bank``'s PSI, training and test (its channel ledgered, as
    there, when ``ledger_dir``); returns (training seconds, test AUC)."""
    kit = load_kit(kit_dir)
    tables = BankTables.load(data_dir)
    pre = Preprocessor.fit(tables.train)
    n = len(tables.train)
    assert tables.train.labels is not None and tables.test.labels is not None
    ledger = Ledger(ledger_dir, kit.signing_key, kit.party) if ledger_dir is not None else None
    try:
        with secure_channel(address, kit, "platform", ledger=ledger) as channel:
            ids = np.concatenate([tables.train.ids, tables.test.ids])
            psi = run_psi(channel, ids, party=kit.party)
            handles = psi.handles_for_rows(len(ids))
            link = GrpcPlatformLink(channel, kit, psi, cfg)
            arch = SplitArchitecture()
            bank_cfg = arch.bank_bottom(pre.n_numeric, pre.cat_cardinalities)
            top_cfg = dataclasses.replace(arch.top(), platform_dim=link.embedding_dim)
            trained = train_bank_model(
                BankData(pre.transform(tables.train), tables.train.labels, handles[:n]),
                link, bank_cfg, top_cfg, cfg)
            test_pd = predict(trained.model, BankData(pre.transform(tables.test),
                                                      tables.test.labels, handles[n:]),
                              link, cfg.eval_batch_size)
            link.close()
    finally:
        if ledger is not None:
            ledger.close()
    return trained.wall_s, auc(tables.test.labels, test_pd)


def _training_entries(folder: Path) -> int:
    """Entries of one ledger for the split-learning service (training and its test pass)."""
    return sum(e.purpose == "training" for e in read_ledger(folder / LEDGER_FILE))


_RESULT = "bank run: "


def bank_child(kit: Path, data: Path, address: str, epochs: int, seed: int,
               ledger_dir: Path | None) -> None:
    """One :func:`bank_run` in a process of its own (a bank node's); prints its result."""
    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=epochs, patience=epochs, seed=seed, refit=False)
    seconds, test_auc = bank_run(kit, data, address, cfg, ledger_dir)
    print(_RESULT + json.dumps({"seconds": seconds, "auc": test_auc}), flush=True)


def _bank_proc(kit: Path, data: Path, address: str, epochs: int, seed: int,
               ledger_dir: Path | None) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--bank-child", str(kit), str(data), address,
           "--epochs", str(epochs), "--seed", str(seed)]
    if ledger_dir is not None:
        cmd += ["--ledger-dir", str(ledger_dir)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    for line in out.splitlines():
        if line.startswith(_RESULT):
            result: dict[str, Any] = json.loads(line[len(_RESULT):])
            return result
    raise RuntimeError(f"bank run exited {proc.returncode} without a result")


def ledger_overhead(
    tmp: Path, bank: str, bank_dir: Path, platform_data: Path, schema: Path, epochs: int,
    seed: int, reps: int, aa_reps: int, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Each repetition trains the bank twice at the same time, once per arm, each bank
    and platform a process of its own; ``overhead`` = median of the repetitions' on / off
    - 1. ``aa_overhead``: the same with the ledger off in both (the method's noise).

    Two platform processes stay up throughout, one ledgered and one not, so neither arm
    pays a start-up; each gets one discarded warm-up run first. The bank's ledger, like the
    platform's, is one chain over all the "on" runs, verified against the platform's at
    the end.
    """
    kits = tmp / "kits"
    keys = {name: p.verify_key for name, p in load_kit(kits / "platform").peers.items()}
    folders = {"platform": tmp / "ledger" / "platform", bank: tmp / "ledger" / bank}
    runs: dict[str, list[float]] = {"off": [], "on": []}
    aucs: dict[str, list[float]] = {"off": [], "on": []}
    aa: list[float] = []
    with platform_proc(kits / "platform", platform_data, schema, None) as off_addr, \
            platform_proc(kits / "platform", platform_data, schema, folders["platform"]) \
            as on_addr, \
            platform_proc(kits / "platform", platform_data, schema, None) as aa_addr:
        arms = {"off": (off_addr, None), "on": (on_addr, folders[bank]), "aa": (aa_addr, None)}
        for addr, folder in arms.values():
            _result(_bank_proc(kits / bank, bank_dir, addr, 1, seed, folder))
        warm = _training_entries(folders[bank])
        for rep in range(reps + aa_reps):
            pair = ("off", "on") if rep < reps else ("off", "aa")
            order = pair if rep % 2 == 0 else pair[::-1]  # who starts first alternates
            procs = {arm: _bank_proc(kits / bank, bank_dir, arms[arm][0], epochs, seed,
                                     arms[arm][1]) for arm in order}
            got = {arm: _result(p) for arm, p in procs.items()}
            if rep < reps:
                for arm in pair:
                    runs[arm].append(got[arm]["seconds"])
                    aucs[arm].append(got[arm]["auc"])
            else:
                aa.append(got["aa"]["seconds"] / got["off"]["seconds"] - 1.0)
            log(f"ledger rep {rep} ({'+'.join(order)}): " + ", ".join(
                f"{arm} {got[arm]['seconds']:.3f} s" for arm in order))
    report = verify_ledgers(list(folders.values()), keys)
    problems = [str(p) for p in (*report.problems, *report.unmatched)]
    if problems:
        log(f"ledger verification failed: {problems[:5]}")
    # both ends record every message: twice the bank's entries per run
    per_run = 2 * (_training_entries(folders[bank]) - warm) / reps
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    pairs = [b / a - 1.0 for a, b in zip(runs["off"], runs["on"], strict=True)]
    paired_s = statistics.median(b - a for a, b in zip(runs["off"], runs["on"], strict=True))
    return {
        "overhead": statistics.median(pairs),
        "pair_overheads": [round(x, 4) for x in pairs],
        "aa_overhead": round(statistics.median(aa), 4) if aa else None,
        "aa_pair_overheads": [round(x, 4) for x in aa],
        "median_overhead": round(on / off - 1.0, 4),
        "median_off_s": round(off, 3),
        "median_on_s": round(on, 3),
        "runs_off_s": [round(x, 3) for x in runs["off"]],
        "runs_on_s": [round(x, 3) for x in runs["on"]],
        "order": "both arms at once, each repetition; which starts first alternates",
        "test_auc_off": round(statistics.median(aucs["off"]), 5),
        "test_auc_on": round(statistics.median(aucs["on"]), 5),
        "entries": report.entries,
        "training_entries_per_run": round(per_run),
        "us_per_entry": round(1e6 * paired_s / per_run, 1) if per_run else None,
        "verified": report.ok,
        "problems": problems[:10],
        "microbench": ledger_microbench(tmp / "micro", load_kit(kits / bank)),
    }


def ledger_microbench(folder: Path, kit: Any, n: int = 2000, size: int = 8192) -> dict[str, float]:
    """In-process cost of one entry, on a quiet thread: ``submit`` on the message's path;
    the background thread's share (hash, sign, append: ``sync`` of n queued entries), of
    which ``sign_us`` is the Ed25519 signature; ``record`` (all of it on the path)."""
    payload = os.urandom(size)
    out: dict[str, float] = {}
    # intervals long enough that nothing drains during the loop: sync() then does it all
    with Ledger(folder / "submit", kit.signing_key, kit.party, sync_interval_s=60.0,
                drain_interval_s=60.0) as ledger:
        t0 = time.perf_counter()
        for _ in range(n):
            ledger.submit("platform", "sent", "gradients", payload, purpose="training")
        out["submit_us"] = round(1e6 * (time.perf_counter() - t0) / n, 2)
        t1 = time.perf_counter()
        ledger.sync()
        out["drain_us_per_entry"] = round(1e6 * (time.perf_counter() - t1) / n, 2)
    with Ledger(folder / "record", kit.signing_key, kit.party) as ledger:
        t0 = time.perf_counter()
        for _ in range(n):
            ledger.record("platform", "sent", "gradients", payload, purpose="training")
        out["record_us"] = round(1e6 * (time.perf_counter() - t0) / n, 2)
    line = b"x" * 400  # about one canonical entry
    t0 = time.perf_counter()
    for _ in range(n):
        kit.signing_key.sign(line)
    out["sign_us"] = round(1e6 * (time.perf_counter() - t0) / n, 2)
    out["payload_bytes"] = size
    return out


# --------------------------------------------------------------------------------- main
def main() -> None:
    """Run the leakage settings and the ledger-overhead arms; print the result as JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigmas", default="0.5,1,2",
                        help="embedding noise multipliers, comma-separated")
    parser.add_argument("--clip", type=float, default=None,
                        help="embedding L2 clip C (default: median no-DP embedding norm)")
    parser.add_argument("--bank", default="bank-1", help="the bank of the ledger runs")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each ledger run")
    parser.add_argument("--reps", type=int, default=12, help="ledger runs per arm")
    parser.add_argument("--aa-reps", type=int, default=4,
                        help="runs of the ledger-off A/A check (the method's noise)")
    parser.add_argument("--update-sigmas", default="0.1,0.5",
                        help="bank-update noise multipliers (federations), comma-separated")
    parser.add_argument("--update-clip", type=float, default=1.0,
                        help="L2 clip of a bank's round update")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each federation")
    parser.add_argument("--local-epochs", type=int, default=2,
                        help="local epochs of each federation round")
    parser.add_argument("--platform-child", nargs=3, metavar=("KIT", "DATA", "SCHEMA"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--bank-child", nargs=3, metavar=("KIT", "DATA", "ADDRESS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--ledger-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bank_child:
        kit_dir, data_dir, address = args.bank_child
        bank_child(Path(kit_dir), Path(data_dir), address, args.epochs, args.seed,
                   args.ledger_dir)
        return
    if args.platform_child:
        kit, data, schema = (Path(a) for a in args.platform_child)
        platform_child(kit, data, schema, args.ledger_dir)
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        manifest = prepare_default_credit(tmp / "data", seed=args.seed)
        provision(tmp / "kits", parties=("platform", *manifest.bank_dirs, "coordinator"))
        # Every ledger run is a bank process of its own, as a node's is: nothing this
        # process ran before (leakage training, the Simulation Engine) weighs on it.
        ledger = ledger_overhead(
            tmp, args.bank, manifest.bank_dirs[args.bank],
            find_table(manifest.platform_dir, "features"), manifest.platform_schema,
            args.epochs, args.seed, args.reps, args.aa_reps, log=log,
        )
        scenario = load_scenario(tmp / "data")
        settings, clip = leakage_table(scenario, sigmas, args.seed, TrainConfig(seed=args.seed),
                                       clip=args.clip, log=log)
        updates = update_dp_table(
            tmp, dict(manifest.bank_dirs),
            (find_table(manifest.platform_dir, "features"), manifest.platform_schema),
            [float(x) for x in args.update_sigmas.split(",") if x.strip()], args.update_clip,
            args.rounds, args.local_epochs, args.seed, log=log)
        settings += updates
    overhead = ledger.pop("overhead")
    result = {
        "seed": args.seed,
        "scenario": "default-credit",
        "settings": settings,
        "embedding_clip": clip,
        "delta": DELTA,
        "inversion_r2": {s["name"]: s["inversion_r2"] for s in settings},
        "label_attack_auc": {s["name"]: s["label_attack_auc"] for s in settings},
        "auc_cost": {s["name"]: s["auc_cost"] for s in settings},
        "ledger_overhead": round(overhead, 4),
        "ledger_target_met": overhead <= 0.05,
        "ledger": {"bank": args.bank, "epochs": args.epochs, "reps_per_arm": args.reps,
                   **ledger},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
