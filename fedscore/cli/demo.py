"""``fedscore demo``: the whole federation on Flower's Deployment Engine, on this machine.

Prepares a scenario, provisions a federation (CA, one kit per party, SuperNode auth keys
for the banks), starts the platform node, a SuperLink (TLS, SuperNode auth) and one
SuperNode per bank, submits the coordinator's run with ``flwr run``, follows the run's
``progress.jsonl``, then draws the plots and verifies the signed release. Every process
is stopped on exit, also on Ctrl-C or a failure.

Layout of ``out``: ``data/`` (kept between demos), ``kits/``, ``state/`` (platform,
banks, coordinator: checkpoints, progress.jsonl, release), ``logs/``, ``plots/``,
``flwr-home/`` (the Flower CLI config), ``flwr/`` (each Flower process's home),
``superlink.db``, ``run-config.toml``, ``demo.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from fedscore.cli.deploy import (
    DeployError,
    Deployment,
    SuperNodeSpec,
    TLSFiles,
    last_lines,
    local_deployment,
)
from fedscore.errors import FedscoreError

SCENARIOS = ("default-credit", "synth")
LEAKAGE_FILE = Path("benchmarks/results/privacy.json")
"""benchmarks/privacy.py's figures for default-credit, shown in the demo's audit report."""
RUN_ID = "demo"
DEMO_KEYS = ("run-id", "num-rounds", "local-epochs", "seed", "max-weight", "state-dir",
             "coordinator-kit", "platform-address")
STATUS_EVERY = 15.0  # seconds between run-status checks (each is a `flwr ls` process)


class DemoError(FedscoreError, RuntimeError):
    """The demo was refused or failed; the message says which part and why."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class DemoOptions:
    """What ``fedscore demo`` was asked for: scenario, rounds, epochs, banks and run config."""

    scenario: str = "default-credit"
    rounds: int = 5
    epochs: int = 3
    banks: int = 3
    people: int = 20_000  # synth only
    seed: int = 0
    run_config: dict[str, Any] = field(default_factory=dict)  # e.g. the DP settings

    def check(self) -> None:
        """Refuse options the demo cannot run, naming the command-line flag."""
        if self.scenario not in SCENARIOS:
            raise DemoError(f"--scenario {self.scenario!r}: expected one of {', '.join(SCENARIOS)}")
        if self.scenario == "default-credit" and self.banks != 3:
            raise DemoError(f"--banks {self.banks}: the default-credit scenario has exactly 3 "
                            "banks; use --scenario synth for another number of banks")
        if self.banks < 2:
            raise DemoError(f"--banks {self.banks}: SecAgg+ needs at least 2 banks")
        if self.rounds < 1 or self.epochs < 1:
            raise DemoError("--rounds and --epochs must be at least 1")
        own = sorted(set(self.run_config) & set(DEMO_KEYS))
        if own:
            raise DemoError(f"--run-config {', '.join(own)}: the demo sets these itself (use "
                            "--rounds, --epochs, --seed)")
        from fedscore.federation.runconfig import ConfigError, RunSettings

        try:
            RunSettings.from_run_config(self.run_config)
        except ConfigError as exc:
            raise DemoError(f"--run-config: {exc}") from None


def app_dir() -> Path:
    """The repository root: the Flower app that ``flwr run`` builds and submits."""
    root = Path(__file__).resolve().parents[2]
    project = root / "pyproject.toml"
    if not project.is_file() or "[tool.flwr.app]" not in project.read_text():
        raise DemoError(f"{root}: no pyproject.toml with [tool.flwr.app]; run the demo from a "
                        "checkout of the repository (pip install -e .)")
    return root


def prepare_data(out: Path, opts: DemoOptions) -> Path:
    """The scenario's folder under ``out/data``, made once and reused by later demos."""
    if opts.scenario == "default-credit":
        data = out / "data" / f"default-credit-seed{opts.seed}"
        if not (data / "scenario.json").exists():
            from fedscore.data.scenarios import prepare_default_credit

            prepare_default_credit(data, seed=opts.seed)
    else:
        data = out / "data" / f"synth-{opts.people}x{opts.banks}-seed{opts.seed}"
        if not (data / "scenario.json").exists():
            from fedscore.data.synth import synth_population

            synth_population(data, people=opts.people, banks=opts.banks, seed=opts.seed)
    return data


def _fresh(out: Path) -> None:
    """Remove what an earlier demo left in ``out`` (never ``data/``, nothing else)."""
    for name in ("kits", "state", "logs", "plots", "audit", "flwr-home", "flwr"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("run-config.toml", "demo.json"):
        (out / name).unlink(missing_ok=True)


def _events(path: Path) -> Iterator[dict[str, Any]]:
    """Follow a JSON-lines file: yield each complete line as it is appended (forever)."""
    pos = 0
    while True:
        if path.exists():
            with path.open("rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
            end = chunk.rfind(b"\n") + 1
            pos += end
            for line in chunk[:end].splitlines():
                yield json.loads(line)
        yield {"event": "tick"}


class _View:
    """A progress bar over rounds and a table that grows one row per evaluated round."""

    def __init__(self, rounds: int, banks: list[str]) -> None:
        self.progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn())
        self.task = self.progress.add_task("waiting for round 1", total=rounds)
        self.table = Table(title="test sets: pooled AUC and KS, weighted log loss, AUC per bank")
        for col in ("round", "pooled AUC", "pooled KS", "loss", *banks, "secs"):
            self.table.add_column(col, justify="right")
        self.banks = banks
        self.rounds = rounds
        self.last = time.monotonic()

    def __rich__(self) -> Group:
        return Group(self.table, self.progress)

    def evaluated(self, e: dict[str, Any]) -> None:
        now = time.monotonic()
        per_bank = {b["bank"]: b["auc"] for b in e["banks"]}
        self.table.add_row(
            str(e["round"]), f"{e['pooled_auc']:.4f}", f"{e['pooled_ks']:.4f}",
            f"{e['weighted_loss']:.4f}",
            *(f"{per_bank[b]:.4f}" if b in per_bank else "-" for b in self.banks),
            f"{now - self.last:.0f}",
        )
        self.last = now
        done = int(e["round"])
        label = "writing the release" if done >= self.rounds else f"round {done + 1}"
        self.progress.update(self.task, completed=done, description=label)


def follow_run(deployment: Deployment, run_id: int, progress_file: Path, view: _View,
               timeout: float) -> list[dict[str, Any]]:
    """Show the run's progress until it has released its model; return the evaluations.

    Fails when a process of the deployment stops, when the run ends without a release,
    or after ``timeout`` seconds."""
    evaluations: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + STATUS_EVERY
    for event in _events(progress_file):
        if event["event"] == "evaluated":
            evaluations.append(event)
            view.evaluated(event)
        elif event["event"] == "released":
            return evaluations
        elif event["event"] == "tick":
            if time.monotonic() > next_check:
                deployment.check()
                status = deployment.run_status(run_id)
                if status.startswith("finished") and not _released(progress_file):
                    raise DemoError(_failure(deployment, run_id, status))
                if time.monotonic() > deadline:
                    raise DemoError(f"run {run_id} did not finish in {timeout:.0f} s")
                next_check = time.monotonic() + STATUS_EVERY
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _failure(deployment: Deployment, run_id: int, status: str) -> str:
    """What went wrong with a run that ended without a release: the ServerApp's log tail,
    then the first exception of each bank's ClientApp (the root cause is often there)."""
    report = [f"the coordinator's ServerApp (run {run_id}) ended ({status}) without a "
              f"release; last lines of its log:\n{last_lines(deployment.run_log(run_id), 20)}"]
    for bank, error in deployment.clientapp_errors().items():
        report.append(f"{bank}'s ClientApp failed first with:\n{error}")
    return "\n\n".join(report)


def _released(progress_file: Path) -> bool:
    return progress_file.exists() and '"released"' in progress_file.read_text()


def write_plots(folder: Path, evaluations: list[dict[str, Any]],
                histograms: dict[str, dict[str, list[int]]]) -> list[Path]:
    """auc_per_round.png, roc.png and ks.png (pooled test sets of the final round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedscore.ml.metrics import auc_from_histograms, ks_from_histograms, roc_from_histograms

    folder.mkdir(parents=True, exist_ok=True)
    rounds = [e["round"] for e in evaluations]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, [e["pooled_auc"] for e in evaluations], "o-", lw=2.5, label="pooled")
    for bank in sorted({b["bank"] for e in evaluations for b in e["banks"]}):
        points = [(e["round"], b["auc"]) for e in evaluations for b in e["banks"]
                  if b["bank"] == bank]
        ax.plot(*zip(*points, strict=True), ".--", label=bank)
    ax.set(xlabel="round", ylabel="test AUC", title="Test AUC per round",
           xticks=rounds)
    ax.legend()
    ax.grid(alpha=0.3)
    paths = [folder / "auc_per_round.png"]
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    pos = np.sum([np.asarray(h["pos"], np.float64) for h in histograms.values()], axis=0)
    neg = np.sum([np.asarray(h["neg"], np.float64) for h in histograms.values()], axis=0)
    fpr, tpr = roc_from_histograms(pos, neg)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, lw=2, label=f"pooled, AUC {auc_from_histograms(pos, neg):.4f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title=f"ROC, pooled test sets, round {rounds[-1]}")
    ax.legend(loc="lower right")
    paths.append(folder / "roc.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    edges = np.linspace(0.0, 1.0, len(pos) + 1)[1:]  # PD threshold at each bin's upper edge
    cdf_pos, cdf_neg = np.cumsum(pos) / pos.sum(), np.cumsum(neg) / neg.sum()
    at = int(np.argmax(cdf_neg - cdf_pos))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(edges, cdf_neg, label="non-defaulters")
    ax.plot(edges, cdf_pos, label="defaulters")
    ax.vlines(edges[at], cdf_pos[at], cdf_neg[at], colors="k", linestyles="--",
              label=f"KS {ks_from_histograms(pos, neg):.4f} at PD {edges[at]:.3f}")
    ax.set(xlabel="predicted PD", ylabel="cumulative share",
           title=f"KS, pooled test sets, round {rounds[-1]}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    paths.append(folder / "ks.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def run_demo(out: Path, opts: DemoOptions, console: Console, *,
             run_timeout: float = 1800.0) -> dict[str, Any]:
    """Run the demo (see the module docstring); return the summary also written to
    ``out/demo.json``. Raises DemoError, DeployError or LaunchError on a failure."""
    from coordinator.checkpoint import Checkpoints
    from fedscore.cli.local import platform_process
    from fedscore.data.table import find_table
    from fedscore.federation.provision import (
        CA_CERT,
        SUPERNODE_KEY,
        SUPERNODE_PUB,
        TLS_CERT,
        TLS_KEY,
        load_kit,
        provision,
    )
    from fedscore.federation.release import ReleaseError, verify_release

    opts.check()
    app = app_dir()
    started = time.monotonic()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _fresh(out)
    with console.status(f"preparing the {opts.scenario} scenario..."):
        try:
            data = prepare_data(out, opts)
        except ValueError as exc:  # e.g. too few people for the banks
            raise DemoError(f"cannot prepare the {opts.scenario} scenario: {exc}") from None
    banks = [f"bank-{k + 1}" for k in range(opts.banks)]
    kits, state, logs = out / "kits", out / "state", out / "logs"
    provision(kits, parties=("platform", *banks, "coordinator"), supernode_keys=True,
              force=True)
    console.print(f"data in {data}; federation provisioned in {kits} "
                  f"(platform, {', '.join(banks)}, coordinator)")
    logs.mkdir()
    platform_data = data / "platform"
    coordinator = kits / "coordinator"
    # The platform team runs the SuperLink beside the coordinator, with the coordinator's
    # certificate; the banks' SuperNodes trust the federation CA.
    tls = TLSFiles(coordinator / TLS_CERT, coordinator / TLS_KEY, coordinator / CA_CERT)
    with ExitStack() as running:  # stops every process on exit, the platform last
        console.print("starting the platform node...")
        platform = running.enter_context(platform_process(
            kits / "platform", find_table(platform_data, "features"),
            platform_data / "schema.toml", log=logs / "platform.log",
            state_dir=state / "platform",
        ))
        console.print(f"platform node on {platform}; starting a SuperLink (TLS, SuperNode "
                      f"auth) and {len(banks)} SuperNodes...")
        nodes = [
            SuperNodeSpec(
                bank, kits / bank / SUPERNODE_KEY, kits / bank / SUPERNODE_PUB,
                kits / bank / CA_CERT,
                {"bank": bank, "data-dir": str(data / bank), "kit-dir": str(kits / bank),
                 "platform-address": platform, "state-dir": str(state / bank)},
            )
            for bank in banks
        ]
        deployment = running.enter_context(local_deployment(out, tls, nodes))
        run_config: dict[str, object] = {
            "run-id": RUN_ID, "num-rounds": opts.rounds, "local-epochs": opts.epochs,
            "seed": opts.seed, "max-weight": float(max(100_000, opts.people)),
            "state-dir": str(state / "coordinator"), "coordinator-kit": str(coordinator),
            "platform-address": platform, **opts.run_config,
        }
        run_id = deployment.submit(app, run_config)
        console.print(f"SuperLink on {deployment.address}, {len(banks)} SuperNodes online; "
                      f"run {run_id} submitted")
        run_dir = state / "coordinator" / RUN_ID
        view = _View(opts.rounds, banks)
        try:
            with Live(view, console=console, refresh_per_second=4):
                evaluations = follow_run(deployment, run_id, run_dir / "progress.jsonl",
                                         view, run_timeout)
        finally:
            _save_run_log(deployment, run_id, logs / "serverapp.log")
    elapsed = time.monotonic() - started

    final = Checkpoints(run_dir).latest()
    if final is None:
        raise DemoError(f"{run_dir}: the run released a model but has no checkpoint")
    plots = write_plots(out / "plots", evaluations, final.info["histograms"])
    verify_key = load_kit(kits / banks[0]).peer("coordinator").verify_key
    try:
        manifest, _ = verify_release(run_dir / "release", verify_key)
    except ReleaseError as exc:
        raise DemoError(f"the release does not verify: {exc}") from None
    audit = _audit(out, kits / "coordinator", state, banks, run_dir,
                   app / LEAKAGE_FILE if opts.scenario == "default-credit" else None)
    last = evaluations[-1]
    summary = {
        "options": asdict(opts) | {"out": str(out)}, "run_id": run_id,
        "seconds": round(elapsed, 1), "release": str(run_dir / "release"),
        "release_version": manifest["version"], "pooled_auc": last["pooled_auc"],
        "pooled_ks": last["pooled_ks"], "rounds": evaluations,
        "plots": [str(p) for p in plots], "logs": str(logs), "audit": audit,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    console.print(
        f"\n[bold]final pooled test AUC {last['pooled_auc']:.4f}, KS {last['pooled_ks']:.4f}"
        f"[/bold] after {opts.rounds} rounds x {opts.epochs} local epochs "
        f"({elapsed:.0f} s, every process stopped)\n"
        f"release {manifest['version']}: signature verified with the coordinator's key "
        f"from the federation manifest\n"
        f"  release      {run_dir / 'release'}\n"
        f"  plots        {', '.join(str(p) for p in plots)}\n"
        f"  checkpoints  {run_dir}  (progress.jsonl, round-XXXX/)\n"
        f"  logs         {logs}  (platform, superlink, bank-*, serverapp)\n"
        f"audit: {audit['entries']:,} ledger entries, every chain and signature valid, "
        f"every message recorded by both ends\n"
        f"  report       {audit['report']}\n"
        f"  summary      {out / 'demo.json'}",
        highlight=False,
    )
    return summary


def _audit(out: Path, kit: Path, state: Path, banks: list[str], run_dir: Path,
           leakage: Path | None) -> dict[str, Any]:
    """Verify every node's ledger against the others and write the reviewer's report;
    a failed verification fails the demo (after the report is written)."""
    from fedscore.audit.report import audit_and_report

    folders = [state / p / "ledger" for p in ("platform", *banks, "coordinator")]
    report, _, (html, md) = audit_and_report(
        folders, kit, out / "audit", platform_state=state / "platform", run_dir=run_dir,
        leakage=leakage if leakage is not None and leakage.is_file() else None,
    )
    if not report.ok:
        first = [*report.problems, *map(str, report.unmatched)][:3]
        raise DemoError(f"the audit ledgers do not verify ({len(report.problems)} problem(s), "
                        f"{len(report.unmatched)} one-sided message(s)); see {html}: "
                        + "; ".join(first))
    return {"ok": True, "entries": sum(report.entries.values()), "report": str(html),
            "markdown": str(md)}


def _save_run_log(deployment: Deployment, run_id: int, path: Path) -> None:
    try:
        path.write_text(deployment.run_log(run_id))
    except DeployError as exc:
        path.write_text(f"(could not fetch the run's log: {exc})\n")
