"""The ``fedscore`` command: one entry point for every party and every tool.

Heavy imports (torch, grpc) happen inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from fedscore.federation.nodeconfig import NodeConfig, _Watched

C = TypeVar("C", bound="NodeConfig")

app = typer.Typer(
    name="fedscore",
    help="Privacy-preserving federated credit scoring for joint lending.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
platform_app = typer.Typer(help="Run the platform node.", no_args_is_help=True)
bank_app = typer.Typer(help="Run a bank node.", no_args_is_help=True)
release_app = typer.Typer(help="Model releases of federated runs.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    """``fedscore --version``: the installed distribution's version (what an image holds)."""
    if value:
        from importlib.metadata import version

        console.print(f"fedscore {version('fedscore')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print fedscore's version and exit."),
) -> None:
    """Privacy-preserving federated credit scoring for joint lending."""


def _fail(message: str) -> typer.Exit:
    from rich.markup import escape

    # escaped: messages quote logs and values, whose [brackets] rich would read as markup
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(1)


CONFIG_HELP = ("A node config file (TOML; see `fedscore config check`): every flag below is "
               "also a key of the same name (state-dir for --state-dir); a flag given here "
               "overrides the file's key.")
METRICS_HELP = ("host:port (a bare port: on 127.0.0.1) to serve Prometheus metrics on at "
                "/metrics; port 0: any free one (key metrics-address; default: off).")
LOG_FORMAT_HELP = "text (default) or json: one JSON object per line (key log-format)."
LOG_LEVEL_HELP = ("DEBUG (a line per message and request), INFO (default: lifecycle, "
                  "sessions, rounds), WARNING or ERROR (key log-level).")
CERT_WARN_HELP = ("Days before the node's TLS or CA certificate expires to warn (log and "
                  "health answer; key cert-warn-days; default 30).")
DRAIN_HELP = ("Seconds the health service answers NOT_SERVING before the server stops "
              "(key drain-s; default 0).")


def _node_config(model: type[C], config: Path | None, **flags: object) -> C:
    """The node's settings from ``config`` and the flags given (not None); every problem
    is printed, one line each, naming the file or flag, the key, the value, the expectation."""
    from fedscore.federation.nodeconfig import NodeConfigError, load

    try:
        return load(model, config, {k.replace("_", "-"): v for k, v in flags.items()})
    except NodeConfigError as exc:
        raise _fail_all(exc.problems) from None


@contextlib.contextmanager
def _watched(cfg: _Watched) -> Iterator[None]:
    """The node's logging (``log-format``, ``log-level``) and, with ``metrics-address``,
    its ``/metrics`` endpoint for as long as the command runs."""
    from fedscore.ops import logs, metrics

    logs.configure(cfg.log_level, cfg.log_format)
    server = metrics.serve(cfg.metrics_address) if cfg.metrics_address else None
    try:
        yield
    finally:
        if server is not None:
            server.close()


def _fail_all(problems: Sequence[str]) -> typer.Exit:
    from rich.markup import escape

    for problem in problems:
        err.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@platform_app.command("serve")
def platform_serve(
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    kit: Path | None = typer.Option(None, help="The platform's startup kit folder (required)."),
    data: Path | None = typer.Option(None, help="The platform's feature table (CSV or Parquet; "
                                     "required)."),
    schema: Path | None = typer.Option(None, help="The table's schema.toml (required)."),
    address: str | None = typer.Option(None, help="host:port to bind (port 0: any; default "
                                       "127.0.0.1:50051)."),
    state_dir: Path | None = typer.Option(
        None, help="Folder for committed federated models; a restart continues from it "
        "(default: memory only)."
    ),
    ledger_dir: Path | None = typer.Option(
        None, help="The audit ledger's folder (default: STATE_DIR/ledger); one of the two "
        "is required."
    ),
    drain_s: float | None = typer.Option(None, help=DRAIN_HELP),
    cert_warn_days: int | None = typer.Option(None, help=CERT_WARN_HELP),
    metrics_address: str | None = typer.Option(None, help=METRICS_HELP),
    log_format: str | None = typer.Option(None, help=LOG_FORMAT_HELP),
    log_level: str | None = typer.Option(None, help=LOG_LEVEL_HELP),
) -> None:
    """Serve PSI, split learning, round control and federated rounds to the federation."""
    from fedscore.data.table import DataError
    from fedscore.federation.nodeconfig import PlatformConfig
    from fedscore.federation.provision import KitError
    from fedscore.ledger.entry import LedgerError
    from platform_node.model_store import StoreError
    from platform_node.server import serve

    cfg = _node_config(PlatformConfig, config, kit=kit, data=data, schema=schema,
                       address=address, state_dir=state_dir, ledger_dir=ledger_dir,
                       drain_s=drain_s, cert_warn_days=cert_warn_days,
                       metrics_address=metrics_address, log_format=log_format,
                       log_level=log_level)
    try:
        with _watched(cfg):
            serve(cfg.kit, cfg.data, cfg.table_schema, cfg.address, cfg.state_dir,
                  cfg.ledger_dir, drain_s=cfg.drain_s, cert_warn_days=cfg.cert_warn_days)
    except (KitError, DataError, StoreError, LedgerError, ValueError) as exc:
        raise _fail(str(exc)) from None


@bank_app.command("train")
def bank_train(
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    kit: Path | None = typer.Option(None, help="This bank's startup kit folder (required)."),
    data: Path | None = typer.Option(None, help="Folder with train.*, test.* and schema.toml "
                                     "(required)."),
    platform: str | None = typer.Option(None, help="The platform node's host:port (required)."),
    out: Path | None = typer.Option(None, help="Where to write the model and metrics "
                                    "(default out/bank)."),
    seed: int | None = typer.Option(None, help="The random seed (default 0)."),
    epochs: int | None = typer.Option(None, help="Maximum epochs (0, the default: the default "
                                      "config)."),
    ledger_dir: Path | None = typer.Option(None, help="The audit ledger's folder (default: "
                                           "OUT/ledger)."),
    metrics_address: str | None = typer.Option(None, help=METRICS_HELP),
    log_format: str | None = typer.Option(None, help=LOG_FORMAT_HELP),
    log_level: str | None = typer.Option(None, help=LOG_LEVEL_HELP),
) -> None:
    """Align customers with the platform (PSI) and train the split model; print test metrics.

    Survives outages: an unreachable platform is retried with backoff, and the training
    goes on from its last whole epoch (PSI again only if the platform restarted); a rerun
    after this command stopped resumes from OUT/resume."""
    import dataclasses

    from bank_node.platform_link import PlatformError
    from bank_node.trainer import run_bank
    from fedscore.cli.vertical import EpochProgress
    from fedscore.crypto.psi import PsiError
    from fedscore.data.table import DataError
    from fedscore.federation.nodeconfig import BankTrainConfig
    from fedscore.federation.provision import KitError, load_kit
    from fedscore.ledger.entry import LedgerError
    from fedscore.ledger.writer import Ledger
    from fedscore.ml.training import TrainConfig

    cfg = _node_config(BankTrainConfig, config, kit=kit, data=data, platform=platform, out=out,
                       seed=seed, epochs=epochs, ledger_dir=ledger_dir,
                       metrics_address=metrics_address, log_format=log_format,
                       log_level=log_level)
    train = TrainConfig(seed=cfg.seed)
    if cfg.epochs:
        train = dataclasses.replace(train, epochs=cfg.epochs)
    try:
        bank = load_kit(cfg.kit)
        with _watched(cfg), Ledger(cfg.ledger_dir or cfg.out / "ledger", bank.signing_key,
                                   bank.party) as ledger, EpochProgress(err, bank.party) as shown:
            # progress on stderr: stdout stays the one JSON summary
            result = run_bank(bank, cfg.data, cfg.platform, train, out=cfg.out, ledger=ledger,
                              resume_dir=cfg.out / "resume", progress=shown)
    except (KitError, DataError, PsiError, PlatformError, LedgerError,
            FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    console.print_json(json.dumps(result.summary()))


@bank_app.command("score-server")
def bank_score_server(
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    kit: Path | None = typer.Option(None, help="This bank's startup kit folder (required)."),
    data: Path | None = typer.Option(None, help="The bank's customer store: a folder with "
                                     "train.*, test.* and schema.toml (required)."),
    release: Path | None = typer.Option(None, help="A release folder signed by the "
                                        "coordinator; SIGHUP reloads it (put a newer one in "
                                        "its place; required)."),
    platform: str | None = typer.Option(None, help="The platform node's host:port (required)."),
    address: str | None = typer.Option(None, help="host:port to bind (port 0: any; default "
                                       "127.0.0.1:50061)."),
    policy: Path | None = typer.Option(None, help="The bank's policy TOML (default: "
                                       "bank_node/default_policy.toml)."),
    ledger_dir: Path | None = typer.Option(None, help="The audit ledger's folder for this "
                                           "server (its own: not the training one; required)."),
    drain_s: float | None = typer.Option(None, help=DRAIN_HELP),
    cert_warn_days: int | None = typer.Option(None, help=CERT_WARN_HELP),
    metrics_address: str | None = typer.Option(None, help=METRICS_HELP),
    log_format: str | None = typer.Option(None, help=LOG_FORMAT_HELP),
    log_level: str | None = typer.Option(None, help=LOG_LEVEL_HELP),
) -> None:
    """Serve real-time joint scoring and decisions to this bank's decision engine."""
    import grpc

    from bank_node.policy import PolicyError
    from bank_node.scoring_service import serve
    from bank_node.scoring_store import ScoringError
    from fedscore.crypto.psi import PsiError
    from fedscore.data.table import DataError
    from fedscore.federation.nodeconfig import ScoreServerConfig
    from fedscore.federation.provision import KitError
    from fedscore.federation.release import ReleaseError
    from fedscore.ledger.entry import LedgerError

    cfg = _node_config(ScoreServerConfig, config, kit=kit, data=data, release=release,
                       platform=platform, address=address, policy=policy,
                       ledger_dir=ledger_dir, drain_s=drain_s, cert_warn_days=cert_warn_days,
                       metrics_address=metrics_address, log_format=log_format,
                       log_level=log_level)
    try:
        with _watched(cfg):
            serve(cfg.kit, cfg.data, cfg.release, cfg.platform, cfg.address, cfg.policy,
                  cfg.ledger_dir, drain_s=cfg.drain_s, cert_warn_days=cfg.cert_warn_days)
    except (KitError, DataError, PsiError, PolicyError, ReleaseError, ScoringError,
            LedgerError, ValueError) as exc:
        raise _fail(str(exc)) from None
    except grpc.RpcError as exc:
        raise _fail(f"the platform at {cfg.platform}: {exc.details()}") from None


@app.command("score")
def score(
    applicant: Path = typer.Argument(..., help="The applicant as JSON: {\"applicant_id\": "
                                     "..., \"features\": {...}, \"consent_token\": ..., "
                                     "\"requested_amount\": ...}; only applicant_id is "
                                     "required (features: else the bank's store)."),
    server: str = typer.Option("127.0.0.1:50061", help="The bank's scoring server."),
    kit: Path = typer.Option(..., help="The bank's startup kit (only the bank itself may "
                             "call its scoring server)."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Score one applicant and print the decision."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from bank_node.applicant import ApplicantError, applicant_from_json
    from fedscore.api.v1 import scoring_pb2, scoring_pb2_grpc
    from fedscore.federation.provision import KitError, load_kit
    from fedscore.wire.transport import secure_channel

    try:
        checked = applicant_from_json(json.loads(applicant.read_text()), str(applicant))
        request = scoring_pb2.ScoreRequest(
            applicant_id=checked.applicant_id, features=checked.features,
            consent_token=checked.consent_token, requested_amount=checked.requested_amount,
        )
    except ApplicantError as exc:
        raise _fail(str(exc)) from None
    except (OSError, ValueError) as exc:  # unreadable, or not JSON
        raise _fail(f"{applicant}: {exc}") from None
    try:
        bank = load_kit(kit)
        with secure_channel(server, bank, bank.party) as channel:
            reply = scoring_pb2_grpc.ScoringServiceStub(channel).Score(request, timeout=10)
    except KitError as exc:
        raise _fail(str(exc)) from None
    except grpc.RpcError as exc:
        if "Hostname Verification" in (exc.details() or ""):
            raise _fail(f"the server at {server} is not {bank.party}'s scoring server (only a "
                        "bank's own kit may call its scoring server)") from None
        raise _fail(f"{exc.code().name}: {exc.details()}") from None
    if as_json:
        console.print_json(json.dumps(MessageToDict(reply, preserving_proto_field_name=True)))
        return
    outcome = scoring_pb2.Outcome.Name(reply.outcome).removeprefix("OUTCOME_")
    part = scoring_pb2.PlatformPart.Name(reply.platform).removeprefix("PLATFORM_PART_")
    color = {"APPROVE": "green", "REFER": "yellow", "DECLINE": "red"}.get(outcome, "white")
    lines = [f"[bold {color}]{outcome}[/]  applicant {request.applicant_id}"]
    if reply.scored:
        lines.append(f"  PD {reply.pd:.4f}   score {reply.score}   grade {reply.grade}")
    if outcome == "APPROVE":
        lines.append(f"  credit limit {reply.credit_limit:,.0f}   APR {reply.apr:.2%}")
    for r in reply.reasons:
        lines.append(f"  reason {r.code}: {r.text} ({', '.join(r.features)})")
    fallback = f", fallback {reply.fallback}" if reply.fallback else ""
    lines.append(f"  model {reply.model_version} with platform {reply.platform_model_version}"
                 f"; platform part: {part.lower()}{fallback}")
    console.print("\n".join(lines), highlight=False)


@app.command("vertical")
def vertical(
    scenario: str = typer.Option("default-credit", help="default-credit, or a prepared folder."),
    out: Path = typer.Option(Path("out/vertical"), help="Working folder (data, kits, results)."),
    seed: int = typer.Option(0),
) -> None:
    """Prepare data, provision a federation, start the platform node, train every bank."""
    from fedscore.cli.vertical import run_vertical

    try:
        report = run_vertical(scenario, out, seed=seed, progress=console)
    except Exception as exc:  # surfaced as a clean message; details are in out/*.log
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    table = Table(title="split learning with the platform, per bank (test set)")
    for column in ("bank", "customers", "aligned", "AUC", "KS", "best epoch", "train s"):
        table.add_column(column, justify="right" if column != "bank" else "left")
    for bank in report["banks"]:
        table.add_row(
            bank["party"], str(bank["n_train"] + bank["n_test"]),
            str(bank["aligned_train"] + bank["aligned_test"]), f"{bank['test_auc']:.4f}",
            f"{bank['test_ks']:.4f}", str(bank["best_epoch"]), f"{bank['train_seconds']:.1f}",
        )
    console.print(table)
    console.print(
        f"pooled test AUC [bold]{report['pooled_auc']:.4f}[/bold], KS {report['pooled_ks']:.4f}; "
        f"results in {out / 'results.json'}"
    )


@app.command("demo")
def demo(
    rounds: int | None = typer.Option(None, min=1, help="Federated rounds (default 5: or the "
                                      "config's num-rounds)."),
    epochs: int | None = typer.Option(None, min=1, help="Local epochs per bank per round "
                                      "(default 3: or the config's local-epochs)."),
    banks: int = typer.Option(3, min=2, help="Banks (default-credit has exactly 3)."),
    scenario: str = typer.Option("default-credit", help="default-credit or synth."),
    people: int = typer.Option(20_000, min=1, help="Synthetic population size (synth only)."),
    out: Path = typer.Option(Path("fedscore-demo"), help="Working folder (data is reused)."),
    seed: int | None = typer.Option(None, help="Seed of the data and the run (default 0: or "
                                    "the config's seed)."),
    config: Path | None = typer.Option(
        None, "--config", help="The coordinator's run settings: a run config file (role "
        "coordinator, as `flwr run --run-config FILE` takes it; `fedscore config check "
        "--role coordinator FILE`). --rounds, --epochs, --seed and --run-config override its "
        "keys; run-id, max-weight, state-dir, coordinator-kit and platform-address are the "
        "demo's own."),
    run_config: str = typer.Option("", help="More run-config settings, as for `flwr run`, "
                                   "e.g. 'dp-update-noise=1.0 dp-embedding-noise=2.0'."),
) -> None:
    """The whole federation on Flower's Deployment Engine on this machine: a SuperLink,
    one SuperNode per bank and the platform node, rounds under SecAgg+, plots and a
    signed model release."""
    import signal
    import sys

    from fedscore.cli.demo import DEMO_KEYS, DemoError, DemoOptions, run_demo
    from fedscore.cli.deploy import DeployError
    from fedscore.cli.local import LaunchError

    # `kill` stops the demo as Ctrl-C does: every process it started is stopped first.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings: dict[str, object] = {}
    if config is not None:
        from fedscore.federation.nodeconfig import (
            ROLE_KEY,
            CoordinatorConfig,
            NodeConfigError,
            load,
            read_file,
            show,
        )

        try:
            load(CoordinatorConfig, config)
            settings = {k: v for k, v in read_file(config).items() if k != ROLE_KEY}
        except NodeConfigError as exc:
            raise _fail_all(exc.problems) from None
        flagged = {"num-rounds": "--rounds", "local-epochs": "--epochs", "seed": "--seed"}
        own = [k for k in settings if k in DEMO_KEYS and k not in flagged]
        if own:
            raise _fail_all([f"{config}: {k} = {show(settings[k])}: expected no {k} key (the "
                             "demo sets it itself)" for k in own])
    try:
        from flwr.common.config import parse_config_args

        extra = parse_config_args([run_config]) if run_config.strip() else {}
    except ValueError as exc:
        raise _fail(f"--run-config {run_config!r}: {exc}") from None

    def pick(flag: int | None, key: str, default: int) -> int:
        value = settings.pop(key, default)
        return flag if flag is not None else int(value)  # type: ignore[call-overload]

    rounds, epochs = pick(rounds, "num-rounds", 5), pick(epochs, "local-epochs", 3)
    seed = pick(seed, "seed", 0)
    options = DemoOptions(scenario=scenario, rounds=rounds, epochs=epochs, banks=banks,
                          people=people, seed=seed, run_config={**settings, **extra})
    try:
        run_demo(out, options, console)
    except KeyboardInterrupt:
        err.print("interrupted; every process the demo started has been stopped")
        raise typer.Exit(130) from None
    except (DemoError, DeployError, LaunchError) as exc:
        logs = out / "logs"
        message = f"{exc}" + (f"\n(all logs in {logs})" if logs.is_dir() else "")
        raise _fail(message) from None


@release_app.command("verify")
def release_verify(
    release: Path = typer.Argument(..., help="A release folder (manifest.json, manifest.sig)."),
    kit: Path = typer.Option(..., help="Any party's startup kit: its CA-signed manifest names "
                             "the coordinator's key."),
    coordinator: str = typer.Option("coordinator", help="The coordinator party's name."),
) -> None:
    """Check a release's signature and files; print what it pairs with."""
    from fedscore.federation.provision import KitError, load_kit
    from fedscore.federation.release import ReleaseError, verify_release

    try:
        key = load_kit(kit).peer(coordinator).verify_key
        manifest, _ = verify_release(release, key)
    except (KitError, ReleaseError) as exc:
        raise _fail(str(exc)) from None
    metrics = manifest.get("metrics", {})
    console.print(
        f"release {manifest['version']}: signed by {manifest['signed_by']}, verified\n"
        f"  platform model  {manifest['platform_model_version']}\n"
        f"  pooled AUC      {metrics.get('pooled_auc', float('nan')):.4f}\n"
        f"  fingerprints    " + ", ".join(
            f"{b}={fp[:12]}" for b, fp in manifest["preprocessing_fingerprints"].items()
        ), highlight=False,
    )


def _register() -> None:
    from fedscore.cli.audit import audit_app
    from fedscore.cli.config import config_app
    from fedscore.cli.data import app as data_app
    from fedscore.cli.health import health_command
    from fedscore.cli.provision import provision_app

    app.add_typer(data_app, name="data", help="Prepare scenario data sets and check tables.")
    app.add_typer(platform_app, name="platform")
    app.add_typer(bank_app, name="bank")
    app.add_typer(release_app, name="release")
    app.add_typer(provision_app, name="provision")
    app.add_typer(audit_app, name="audit",
                  help="Verify the nodes' audit ledgers; render a report for a reviewer.")
    app.add_typer(config_app, name="config")
    app.command("health")(health_command)


_register()

if __name__ == "__main__":
    app()
