"""Node config files: every broken file is refused with one line per problem naming the
file, the key, the value and what was expected; flags override keys; a good file starts
the platform node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedscore.cli.main import app
from fedscore.federation.nodeconfig import (
    BankTrainConfig,
    CoordinatorConfig,
    NodeConfigError,
    PlatformConfig,
    ScoreServerConfig,
    check_file,
    load,
)
from tests.conftest import Federation

PLATFORM_KEYS = ("address, cert-warn-days, data, drain-s, kit, ledger-dir, log-format, "
                 "log-level, metrics-address, schema, state-dir")
ADDRESS = "host:port, a port from 0 to 65535 (an IPv6 host in brackets)"
GOOD_PLATFORM = 'role = "platform"\nkit = "kit"\ndata = "data.csv"\nschema = "schema.toml"\n' \
                'state-dir = "state"\n'


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """What the files below name: a kit, a table and its schema, a bank's data folder."""
    (tmp_path / "kit").mkdir()
    (tmp_path / "bank").mkdir()
    (tmp_path / "release").mkdir()
    (tmp_path / "data.csv").write_text("id\n")
    (tmp_path / "schema.toml").write_text("")
    return tmp_path


# (role to check for, the file, the expected problems: {f} is the file, {d} its folder)
BROKEN = {
    "unknown key": (
        None, GOOD_PLATFORM + 'colour = "blue"\n',
        [f"{{f}}: unknown key 'colour' (= \"blue\"); expected one of {PLATFORM_KEYS} "
         "(for fedscore platform serve)"]),
    "snake_case key": (
        None, GOOD_PLATFORM + 'ledger_dir = "ledger"\n',
        [f"{{f}}: unknown key 'ledger_dir' (= \"ledger\"); expected one of {PLATFORM_KEYS} "
         "(for fedscore platform serve)"]),
    "a table where a value belongs": (
        None, GOOD_PLATFORM + "[platform]\naddress = \"0.0.0.0:1\"\n",
        [f"{{f}}: unknown key 'platform' (= a table); expected one of {PLATFORM_KEYS} "
         "(for fedscore platform serve)"]),
    "wrong type": (
        None, GOOD_PLATFORM + "address = 50051\n",
        ["{f}: address = 50051: expected a string"]),
    "missing required key": (
        None, 'role = "platform"\nkit = "kit"\ndata = "data.csv"\nstate-dir = "s"\n',
        ["{f}: schema is missing; expected the table's schema.toml (key schema or --schema)"]),
    "bad address": (
        None, GOOD_PLATFORM + 'address = "localhost"\n',
        [f'{{f}}: address = "localhost": expected {ADDRESS}']),
    "port out of range": (
        None, GOOD_PLATFORM + 'address = "0.0.0.0:70000"\n',
        [f'{{f}}: address = "0.0.0.0:70000": expected {ADDRESS}']),
    "missing file": (
        None, GOOD_PLATFORM.replace("data.csv", "nope.csv"),
        ['{f}: data = "nope.csv": expected an existing file ({d}/nope.csv is missing)']),
    "folder where a file belongs": (
        None, GOOD_PLATFORM.replace("schema.toml", "kit"),
        ['{f}: schema = "kit": expected an existing file ({d}/kit is a folder)']),
    "missing folder": (
        None, GOOD_PLATFORM.replace('"kit"', '"kits/platform"'),
        ['{f}: kit = "kits/platform": expected an existing folder ({d}/kits/platform is '
         "missing)"]),
    "negative number": (
        "bank-train", 'kit = "kit"\ndata = "bank"\nplatform = "p:1"\nepochs = -2\n',
        ["{f}: epochs = -2: expected a number >= 0"]),
    "negative seconds": (
        None, GOOD_PLATFORM + "drain-s = -0.5\n",
        ["{f}: drain-s = -0.5: expected a number >= 0.0"]),
    "boolean for an integer": (
        "bank-train", 'kit = "kit"\ndata = "bank"\nplatform = "p:1"\nseed = true\n',
        ["{f}: seed = true: expected an integer"]),
    "unknown role": (
        None, 'role = "banker"\n',
        ['{f}: role = "banker": expected one of "platform", "score-server", "bank-train", '
         '"supernode", "coordinator"']),
    "role of another command": (
        "score-server", GOOD_PLATFORM,
        ['{f}: role = "platform": expected "score-server" (a file for fedscore bank '
         "score-server)"]),
    "no role at all": (
        None, 'kit = "kit"\n',
        ['{f}: no role key; expected role = one of "platform", "score-server", "bank-train", '
         '"supernode", "coordinator" (or name the role with --role)']),
    "TOML syntax error": (
        None, 'role = "platform"\nkit = "kit"\ndata = \n',
        ["{f}: not valid TOML: Invalid value (at line 3, column 8)"]),
    "a key twice": (
        None, 'role = "platform"\nkit = "kit"\nkit = "kit"\n',
        ["{f}: not valid TOML: Cannot overwrite a value (at line 3, column 12)"]),
    "no ledger for the platform": (
        None, GOOD_PLATFORM.replace('state-dir = "state"\n', ""),
        ["{f}: the platform needs --ledger-dir or --state-dir (key ledger-dir or state-dir) "
         "for its audit ledger: it records every message (default ledger-dir: "
         "state-dir/ledger)"]),
    "coordinator rounds out of range": (
        "coordinator", "num-rounds = 0\nmin-banks = 1\n",
        ["{f}: num-rounds = 0: expected >= 1",
         "{f}: min-banks = 1: expected >= 2, SecAgg+ needs two banks"]),
    "coordinator key of the wrong type": (
        "coordinator", 'lr = "fast"\nplatform-address = "platform"\n',
        ['{f}: lr = "fast": expected a number',
         f'{{f}}: platform-address = "platform": expected {ADDRESS}']),
    "supernode without its bank": (
        "supernode", 'data-dir = "d"\nkit-dir = "k"\nplatform-address = "p:1"\n'
        'state-dir = "s"\n',
        ["{f}: bank is missing; expected the bank's party name"]),
    "every problem at once": (
        "score-server", 'kit = 3\nrelease = "gone"\nplatform = "p"\nwho = 1\n',
        ["{f}: kit = 3: expected a path (a non-empty string)",
         "{f}: data is missing; expected the bank's customer store: a folder with train.*, "
         "test.* and schema.toml (key data or --data)",
         '{f}: release = "gone": expected an existing folder ({d}/gone is missing)',
         f'{{f}}: platform = "p": expected {ADDRESS}',
         "{f}: ledger-dir is missing; expected the audit ledger's folder for this server "
         "(key ledger-dir or --ledger-dir)",
         "{f}: unknown key 'who' (= 1); expected one of address, cert-warn-days, data, "
         "drain-s, kit, "
         "ledger-dir, log-format, log-level, metrics-address, platform, policy, release "
         "(for fedscore bank score-server)"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_file_is_refused_with_its_message(tree: Path, case: str) -> None:
    role, text, expected = BROKEN[case]
    path = tree / "node.toml"
    path.write_text(text)
    with pytest.raises(NodeConfigError) as refused:
        check_file(path, role)
    assert list(refused.value.problems) == [e.format(f=path, d=tree) for e in expected]


def test_a_missing_or_unreadable_file_is_named(tree: Path) -> None:
    with pytest.raises(NodeConfigError, match=r"nope\.toml: no such file; expected a node "
                       r"config \(TOML\)"):
        check_file(tree / "nope.toml")
    with pytest.raises(NodeConfigError, match="kit: is a folder; expected a node config file"):
        check_file(tree / "kit", "platform")
    (tree / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(NodeConfigError, match=r"bin\.toml: not UTF-8 text"):
        check_file(tree / "bin.toml", "platform")


def test_good_files_for_every_role(tree: Path) -> None:
    files = {
        "platform": GOOD_PLATFORM,
        "score-server": 'role = "score-server"\nkit = "kit"\ndata = "bank"\n'
                        'release = "release"\nplatform = "platform.example:50051"\n'
                        'ledger-dir = "ledger"\naddress = "[::]:50061"\n',
        "bank-train": 'role = "bank-train"\nkit = "kit"\ndata = "bank"\nplatform = "p:1"\n'
                      "seed = 3\nepochs = 2\n",
    }
    for role, text in files.items():
        (tree / f"{role}.toml").write_text(text)
        assert check_file(tree / f"{role}.toml").role == role
    # the files Flower reads carry no role key (Flower refuses keys it does not know)
    (tree / "run.toml").write_text('num-rounds = 2\nlr = 1\nrun-id = "q4"\n'
                                   'platform-address = "platform.example:50051"\n')
    run = check_file(tree / "run.toml", "coordinator")
    assert isinstance(run, CoordinatorConfig)
    settings = run.settings()
    assert (settings.num_rounds, settings.lr, settings.run_id) == (2, 1.0, "q4")
    assert settings.local_epochs == 3  # a default
    (tree / "node.toml").write_text('bank = "bank-1"\ndata-dir = "d"\nkit-dir = "k"\n'
                                    'platform-address = "p:1"\nstate-dir = "s"\n')
    assert check_file(tree / "node.toml", "supernode").role == "supernode"


def test_relative_paths_are_the_file_folders_and_flags_override_keys(
        tree: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tree / "node.toml"
    path.write_text(GOOD_PLATFORM + 'address = "10.0.0.1:50051"\n')
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)  # the file means the same from any working directory
    cfg = load(PlatformConfig, path)
    assert (cfg.kit, cfg.data, cfg.state_dir) == (tree / "kit", tree / "data.csv",
                                                  tree / "state")
    assert (cfg.address, cfg.ledger_dir, cfg.drain_s) == ("10.0.0.1:50051", None, 0.0)
    # a flag wins over the key; its relative path is the working directory's
    (elsewhere / "other-kit").mkdir()
    cfg = load(PlatformConfig, path, {"address": "127.0.0.1:0", "kit": Path("other-kit"),
                                      "ledger-dir": None})
    assert (cfg.address, cfg.kit) == ("127.0.0.1:0", Path("other-kit"))
    # a bad flag is named as the flag
    with pytest.raises(NodeConfigError) as refused:
        load(PlatformConfig, path, {"address": "nowhere"})
    assert refused.value.problems == (f'--address "nowhere": expected {ADDRESS}',)
    # no file at all: the flags alone, their problems named as on the command line
    with pytest.raises(NodeConfigError) as refused:
        load(ScoreServerConfig, None, {"kit": tree / "kit"})
    assert refused.value.problems[0] == (
        "the command line: data is missing; expected the bank's customer store: a folder "
        "with train.*, test.* and schema.toml (key data or --data)")
    defaults = load(BankTrainConfig, None, {"kit": tree / "kit", "data": tree / "bank",
                                            "platform": "p:1"})
    assert (defaults.out, defaults.seed, defaults.epochs) == (Path("out/bank"), 0, 0)


runner = CliRunner()


def test_the_check_command_names_every_problem_without_a_traceback(tree: Path) -> None:
    good, bad = tree / "good.toml", tree / "bad.toml"
    good.write_text(GOOD_PLATFORM)
    bad.write_text(GOOD_PLATFORM + 'address = "localhost"\ncolour = 1\n')
    result = runner.invoke(app, ["config", "check", str(good), str(bad)])
    assert result.exit_code == 1
    assert f"{good}: a valid platform config (for fedscore platform serve)" in result.stdout
    text = " ".join(result.output.split())  # rich wraps long lines
    assert f'{bad}: address = "localhost": expected host:port' in text
    assert f"{bad}: unknown key 'colour' (= 1)" in text
    assert "Traceback" not in result.output
    assert runner.invoke(app, ["config", "check", str(good)]).exit_code == 0
    keys = runner.invoke(app, ["config", "keys", "score-server"])
    assert keys.exit_code == 0 and "ledger-dir" in keys.stdout and "127.0.0.1:50061" in keys.stdout


def test_a_node_command_refuses_a_broken_file(tree: Path) -> None:
    bad = tree / "bad.toml"
    bad.write_text(GOOD_PLATFORM.replace("data.csv", "nope.csv"))
    result = runner.invoke(app, ["platform", "serve", "--config", str(bad)])
    assert result.exit_code == 1
    assert f'{bad}: data = "nope.csv": expected an existing file' in " ".join(
        result.output.split())
    assert "Traceback" not in result.output
    score = runner.invoke(app, ["bank", "score-server", "--config", str(tree / "gone.toml")])
    assert score.exit_code == 1 and "gone.toml: no such file" in score.output
    # a file for another command is refused by its role
    train = runner.invoke(app, ["bank", "train", "--config", str(bad)])
    assert train.exit_code == 1 and 'role = "platform": expected "bank-train"' in train.output


def test_a_good_file_starts_the_platform_node_and_a_flag_overrides_its_address(
        federation: Federation, tmp_path: Path) -> None:
    config = tmp_path / "platform.toml"
    kits = os.path.relpath(federation.kits / "platform", tmp_path)
    config.write_text(
        'role = "platform"\n'
        f'kit = "{kits}"\n'  # relative: to the file's folder
        f'data = "{federation.data.platform_features}"\n'
        f'schema = "{federation.data.platform_schema}"\n'
        'ledger-dir = "ledger"\n'
        'address = "192.0.2.1:50051"\n'  # not this machine's: the flag below must win
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedscore.cli.main", "platform", "serve", "--config",
         str(config), "--address", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd="/",
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("platform node listening on "):
                break
        assert lines and lines[-1].startswith("platform node listening on 127.0.0.1:"), lines
        address = lines[-1].split()[4]
        health = runner.invoke(app, ["health", address, "--kit",
                                     str(federation.kits / "bank-1")])
        assert health.exit_code == 0 and health.stdout.strip() == "SERVING"
        listed = runner.invoke(app, ["health", address, "--kit",
                                     str(federation.kits / "bank-1"), "--list"])
        assert "fedscore.v1.PsiService" in listed.stdout.split()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "platform node stopped" in rest
    assert (tmp_path / "ledger").is_dir()  # relative to the file, not to cwd="/"


def test_the_demo_takes_the_coordinators_run_settings_from_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal as signals

    from fedscore.cli import demo

    asked = []
    monkeypatch.setattr(demo, "run_demo", lambda out, options, console: asked.append(options))
    monkeypatch.setattr(signals, "signal", lambda *args: None)  # the demo's SIGTERM handler
    run = tmp_path / "run.toml"
    run.write_text("num-rounds = 2\nlocal-epochs = 1\nseed = 4\ndp-update-noise = 1.0\n")
    result = runner.invoke(app, ["demo", "--config", str(run), "--epochs", "2",
                                 "--run-config", "dp-embedding-noise=2.0"])
    assert result.exit_code == 0, result.output
    options = asked[-1]
    assert (options.rounds, options.epochs, options.seed) == (2, 2, 4)  # --epochs wins
    assert options.run_config == {"dp-update-noise": 1.0, "dp-embedding-noise": 2.0}
    # the keys the demo sets itself, and broken values, are refused with the file's name
    run.write_text('role = "coordinator"\nstate-dir = "s"\nlr = -1\n')
    result = runner.invoke(app, ["demo", "--config", str(run)])
    assert result.exit_code == 1
    assert f"{run}: lr = -1: expected > 0" in result.output
    run.write_text('state-dir = "s"\n')
    result = runner.invoke(app, ["demo", "--config", str(run)])
    assert result.exit_code == 1
    assert f'{run}: state-dir = "s": expected no state-dir key (the demo sets it' in result.output
