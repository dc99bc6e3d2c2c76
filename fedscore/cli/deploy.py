"""A Flower Deployment Engine federation on one machine: a SuperLink and one SuperNode per bank,
each a real process, with TLS on every API, SuperNode authentication on and no runtime
dependency installation.

:func:`local_deployment` starts the SuperLink, writes the Flower CLI config (``FLWR_HOME``),
registers every SuperNode's public key, starts the SuperNodes, waits until the SuperLink
sees them online, and on exit (also on Ctrl-C or an error) stops every process group it
started. Each process logs to ``<out>/logs/<name>.log``. :meth:`Deployment.submit` runs
``flwr run`` and returns the run id.

Note: the SuperLink's Control API (``flwr run``, ``flwr supernode register``) has no user
authentication here; anyone who can reach its port and trusts the CA can submit runs and
register nodes. Keep it on loopback or behind a firewall.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import psutil

from fedscore.errors import FedscoreError

FEDERATION = "local"  # the name of the SuperLink connection in FLWR_HOME/config.toml
FLWR_TIMEOUT = 120.0  # seconds for one `flwr` CLI call
CLIENTAPP_ERROR = "ClientApp raised an exception"  # what a SuperNode logs, then the traceback
# Flower's processes send usage events and check for updates at flower.ai unless told not
# to (an update check also holds a finished process open until it times out offline).
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
# A SuperExec polls its node for work (a ServerApp or ClientApp to start) every second by
# default; a SecAgg+ round is five messages to each bank, each waiting on such a poll.
TASK_POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25"}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DeployError(FedscoreError, RuntimeError):
    """A process of the deployment failed or did not become ready; the message names it
    and ends with the tail of its log."""

    code = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class TLSFiles:
    """The SuperLink's server certificate and key, and the CA that issued it (which the
    SuperNodes and the ``flwr`` CLI trust)."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class SuperNodeSpec:
    """One SuperNode: its name, its auth key pair (OpenSSH, ECDSA P-256), the CA it
    trusts for the SuperLink, and its node config (all values strings)."""

    name: str
    auth_private_key: Path
    auth_public_key: Path
    root_ca: Path
    node_config: Mapping[str, str]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (bound to port 0 together)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


def last_lines(text: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a log, without terminal colour codes."""
    return "\n".join(_ANSI.sub("", text).rstrip().splitlines()[-lines:])


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of the log at ``path``, or a note that there is none."""
    try:
        return last_lines(path.read_text(errors="replace"), lines)
    except OSError:
        return f"(no log at {path})"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


@dataclass
class Process:
    """A process started in its own process group, with its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    _sink: IO[bytes] = field(repr=False)

    @classmethod
    def start(cls, name: str, cmd: Sequence[str], log: Path, env: Mapping[str, str]) -> Process:
        """Start ``cmd`` in a process group of its own (so :meth:`stop` reaches its children)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        sink = log.open("wb")
        popen = subprocess.Popen(
            list(cmd), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env), start_new_session=True,
        )
        return cls(name, popen, log, sink)

    def failed(self, what: str) -> DeployError:
        """A DeployError for ``what`` went wrong, with the exit state and the log's last lines."""
        code = self.popen.poll()
        state = "is still running" if code is None else f"exited with code {code}"
        return DeployError(f"{self.name} {what} ({state}); last lines of {self.log}:\n"
                           f"{tail(self.log)}")

    def check(self) -> None:
        """Raise :meth:`failed` if the process has exited."""
        if self.popen.poll() is not None:
            raise self.failed("stopped unexpectedly")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group and every descendant; SIGKILL what is left after
        ``timeout``; idempotent."""
        stop_all([self], timeout)


def stop_all(processes: Sequence[Process], timeout: float = 10.0) -> None:
    """Stop processes together: SIGTERM each one's process group and descendants (also
    those that left the group), wait up to ``timeout`` for all, then SIGKILL what is left."""
    family: list[psutil.Process] = []
    for proc in processes:
        with suppress(psutil.NoSuchProcess):
            leader = psutil.Process(proc.popen.pid)
            family += [leader, *leader.children(recursive=True)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in processes:
            with suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, sig)
        for p in family:
            with suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        _, alive = psutil.wait_procs(family, timeout=timeout)
        if not alive:
            break
    for proc in processes:
        with suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=1)  # reap (psutil may have already)
        proc._sink.close()


@dataclass
class Deployment:
    """A running local deployment; see :func:`local_deployment`."""

    out: Path
    address: str
    flwr_home: Path
    processes: list[Process] = field(default_factory=list)

    def check(self) -> None:
        """Raise DeployError if any process of the deployment has stopped."""
        for p in self.processes:
            p.check()

    def flwr(self, *args: str, timeout: float = FLWR_TIMEOUT) -> str:
        """Run a ``flwr`` CLI command against this SuperLink; return its stdout."""
        cmd = [_script("flwr"), *args]
        env = flower_env(FLWR_HOME=str(self.flwr_home))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeployError(f"`flwr {' '.join(args)}` did not finish in {timeout:.0f} s"
                              ) from None
        if done.returncode != 0:
            raise DeployError(f"`flwr {' '.join(args)}` failed (exit {done.returncode}):\n"
                              f"{(done.stdout + done.stderr).strip()}")
        return done.stdout

    def submit(self, app: Path, run_config: Mapping[str, object]) -> int:
        """``flwr run`` the Flower app in ``app`` with ``run_config``; return the run id.

        The run config is also written to ``<out>/run-config.toml`` (what was submitted).
        """
        config = self.out / "run-config.toml"
        config.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config.items()))
        reply = self.flwr("run", str(app), FEDERATION, "--run-config", str(config),
                          "--format", "json")
        try:
            return int(json.loads(reply)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise DeployError(f"`flwr run` gave no run id:\n{reply}") from None

    def run_status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` shows it, e.g. ``running`` or
        ``finished:completed`` / ``finished:failed``."""
        reply = json.loads(self.flwr("ls", FEDERATION, "--run-id", str(run_id),
                                     "--format", "json"))
        return str(reply["runs"][0]["status"])

    def clientapp_errors(self, lines: int = 20) -> dict[str, str]:
        """The first ClientApp exception each SuperNode logged (its last ``lines`` lines,
        which end with the exception), by SuperNode name."""
        errors = {}
        for p in self.processes:
            text = p.log.read_text(errors="replace") if p.log.exists() else ""
            start = text.find(CLIENTAPP_ERROR)
            if start >= 0:
                end = text.rfind("\n", start, text.find("Exit Code", start))
                errors[p.name] = last_lines(text[start:end if end > start else None], lines)
        return errors

    def run_log(self, run_id: int) -> str:
        """The ServerApp's log of a run, as ``flwr log --show`` prints it."""
        return self.flwr("log", str(run_id), FEDERATION, "--show")


def flower_env(**extra: str) -> dict[str, str]:
    """The environment of every Flower process and CLI call: quiet, and with this
    environment's scripts first on PATH (the SuperLink and SuperNode start their
    ``flower-superexec`` helpers by name, also when the venv is not activated)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **QUIET, "PATH": path, **extra}


def _script(name: str) -> str:
    """A console script of this environment (the venv's ``flwr``, not one on PATH)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _wait(ready: Callable[[], Process | None], watch: Sequence[Process], timeout: float,
          interval: float = 0.5) -> None:
    """Poll ``ready()``, which returns None when ready or else the process it waits for;
    fail as soon as a watched process stops, or after ``timeout`` naming that process."""
    deadline = time.monotonic() + timeout
    while (waiting := ready()) is not None:
        for p in watch:
            p.check()
        if time.monotonic() > deadline:
            raise waiting.failed(f"is not ready after {timeout:.0f} s")
        time.sleep(interval)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def local_deployment(
    out: Path, tls: TLSFiles, supernodes: Sequence[SuperNodeSpec], *,
    host: str = "127.0.0.1", timeout: float = 90.0, env: Mapping[str, str] | None = None,
) -> Iterator[Deployment]:
    """Start a SuperLink and ``supernodes`` on ``host``; yield the deployment once every
    SuperNode is online; stop everything on exit.

    ``out`` gets ``logs/<process>.log``, ``flwr-home/`` (the CLI config),
    ``flwr/<process>/`` (each process's Flower home: installed apps) and ``superlink.db``
    (replaced: every deployment starts with no registered node and no run).
    ``env``: extra environment variables for every process.
    """
    out = Path(out).resolve()
    logs = out / "logs"
    port, *node_ports = free_ports(1 + len(supernodes), host)
    home = out / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
        f'address = "{host}:{port}"\nroot-certificates = {_toml_value(tls.ca.resolve())}\n'
    )
    deployment = Deployment(out, f"{host}:{port}", home)
    (out / "superlink.db").unlink(missing_ok=True)
    with ExitStack() as stack:

        def launch(name: str, cmd: list[str]) -> Process:
            penv = {**flower_env(FLWR_HOME=str(out / "flwr" / name)), **TASK_POLL,
                    **(env or {})}
            proc = Process.start(name, cmd, logs / f"{name}.log", penv)
            deployment.processes.append(proc)
            return proc

        stack.callback(lambda: stop_all(deployment.processes))

        superlink = launch("superlink", [
            _script("flower-superlink"),
            "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key),
            "--ssl-ca-certfile", str(tls.ca),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--database", str(out / "superlink.db"), "--host", host, "--port", str(port),
        ])
        _wait(lambda: None if _accepts(host, port) else superlink, [superlink], timeout)

        node_ids: dict[str, Process] = {}
        for node, node_port in zip(supernodes, node_ports, strict=True):
            reply = deployment.flwr("supernode", "register", str(node.auth_public_key),
                                    FEDERATION, "--name", node.name, "--format", "json")
            config = " ".join(f"{k}={_toml_value(v)}" for k, v in node.node_config.items())
            node_ids[str(json.loads(reply)["node-id"])] = launch(node.name, [
                _script("flower-supernode"), "--superlink", f"{host}:{port}",
                "--root-certificates", str(node.root_ca),
                "--auth-supernode-private-key", str(node.auth_private_key),
                "--node-config", config, "--host", host, "--port", str(node_port),
                "--max-retries", "3",
            ])

        def first_offline() -> Process | None:
            reply = json.loads(deployment.flwr("supernode", "list", FEDERATION,
                                               "--format", "json"))
            online = {str(n["node-id"]) for n in reply["nodes"] if n["status"] == "online"}
            return next((p for i, p in node_ids.items() if i not in online), None)

        _wait(first_offline, deployment.processes, timeout, interval=1.0)
        yield deployment
