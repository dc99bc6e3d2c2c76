"""Run a whole federation on one machine: the platform node as its own process, banks here.

Used by ``fedscore vertical``, the benchmarks and the integration tests, so all of
them exercise the same real processes, mutual TLS and gRPC as a deployment does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from fedscore.errors import FedscoreError

_READY = "platform node listening on "


class LaunchError(FedscoreError, RuntimeError):
    """A node process failed to start; the message carries the tail of its output."""

    code = grpc.StatusCode.UNAVAILABLE


@contextmanager
def platform_process(
    kit: Path, data: Path, schema: Path, *, host: str = "127.0.0.1", timeout: float = 120.0,
    log: Path | None = None, state_dir: Path | None = None, ledger_dir: Path | None = None,
) -> Iterator[str]:
    """Start ``fedscore platform serve`` on a free port; yield its address; stop it on exit.

    ``state_dir``: where the node keeps committed federated models (None: memory only).
    ``ledger_dir``: its audit ledger (default ``state_dir/ledger``; with neither, a
    temporary folder removed on exit: for benchmarks and tests that do not audit).
    """
    scratch = None
    if ledger_dir is None and state_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="fedscore-ledger-")
        ledger_dir = Path(scratch.name)
    cmd = [sys.executable, "-m", "fedscore.cli.main", "platform", "serve",
           "--kit", str(kit), "--data", str(data), "--schema", str(schema),
           "--address", f"{host}:0"]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    if ledger_dir is not None:
        cmd += ["--ledger-dir", str(ledger_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    lines: list[str] = []
    ready = threading.Event()
    address: list[str] = []

    def _drain() -> None:
        assert proc.stdout is not None
        sink = log.open("a") if log else None
        for line in proc.stdout:
            lines.append(line)
            if sink:
                sink.write(line)
                sink.flush()
            if line.startswith(_READY) and not ready.is_set():
                address.append(line[len(_READY):].split()[0])
                ready.set()
        ready.set()
        if sink:
            sink.close()

    drainer = threading.Thread(target=_drain, daemon=True)
    drainer.start()
    try:
        if not ready.wait(timeout) or not address:
            tail = "".join(lines[-20:])
            raise LaunchError(f"platform node did not start (exit {proc.poll()}):\n{tail}")
        yield address[0]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        drainer.join(timeout=5)
        if scratch is not None:
            scratch.cleanup()
