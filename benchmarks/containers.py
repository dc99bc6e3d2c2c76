"""The federation as containers (compose.yaml) against the same run as processes.

* ``image_mb``: the image's size as the engine reports it (target <= 1,500).
* ``cold_start_s``: per role, from ``podman start`` of the role's stopped container to its
  first passing health check (the image's HEALTHCHECK, run by the engine): a new
  interpreter loading its kit, data and model; the scoring server's includes PSI of the
  bank's store with the platform and loading the release. Measured once the run has
  released its model (target <= 15 s each). ``compose_up_to_healthy_s``: from
  ``compose up`` to every node of the federation healthy, provisioning included.
* ``round_s_containers`` / ``round_s_processes``: the same run (``deploy/config/run.toml``:
  default-credit, 3 banks, ``--rounds`` x ``--epochs``) in containers and as
  ``fedscore demo`` processes on this machine, back to back; a round's time is the run's
  federated time, from the coordinator's ``started`` event to its last ``evaluated`` one
  (round 0's pooled statistics, PSI, training, SecAgg+, evaluation), divided by the
  rounds; ``round_ratio`` is containers over processes (target <= 1.2).

Needs root, podman, the image (``make image``) and podman-compose (the dev extra);
``CONTAINERS_CONF`` defaults to deploy/containers.conf.

    python benchmarks/containers.py [--rounds 2] [--epochs 1]

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "fedscore-bench"
IMAGE = os.environ.get("FEDSCORE_IMAGE", "localhost/fedscore:latest")
ROLES = ("platform", "superlink", "supernode-bank-1", "scoring-bank-1")
NODES = ("platform", "superlink", "supernode-bank-1", "supernode-bank-2", "supernode-bank-3")


def sh(*cmd: str, check: bool = True, timeout: float = 600) -> str:
    """Run a command; its stdout."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def container(service: str) -> str:
    """The container of a compose service of the benchmark's project."""
    return sh("podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}",
              "--filter", f"label=com.docker.compose.service={service}",
              "--format", "{{.Names}}").splitlines()[0]


def wait_healthy(service: str, timeout: float = 300.0) -> float:
    """Seconds until the service's health check passes (polled every 0.25 s)."""
    name, start = container(service), time.monotonic()
    while subprocess.run(["podman", "healthcheck", "run", name],
                         capture_output=True).returncode != 0:
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{service} not healthy after {timeout:.0f} s")
        time.sleep(0.25)
    return time.monotonic() - start


def round_s(progress: list[dict[str, Any]], rounds: int) -> float:
    """The run's federated time per round (module docstring)."""
    started = next(float(e["time"]) for e in progress if e["event"] in ("started", "resumed"))
    last = max(float(e["time"]) for e in progress if e["event"] == "evaluated")
    return (last - started) / rounds


def read_progress(text: str) -> list[dict[str, Any]]:
    """The events of a progress.jsonl."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def processes(rounds: int, epochs: int) -> float:
    """``fedscore demo`` with the same rounds and epochs; its round time."""
    out = Path(tempfile.mkdtemp(prefix="fedscore-bench-processes-"))
    try:
        sh(str(Path(sys.executable).parent / "fedscore"), "demo", "--out", str(out),
           "--rounds", str(rounds), "--epochs", str(epochs), timeout=1800)
        text = (out / "state" / "coordinator" / "demo" / "progress.jsonl").read_text()
        return round_s(read_progress(text), rounds)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def containers(rounds: int, epochs: int) -> dict[str, Any]:
    """compose up the federation with the run's rounds and epochs; the figures."""
    run = Path(tempfile.mkdtemp(prefix="fedscore-bench-run-")) / "run.toml"
    text = (ROOT / "deploy" / "config" / "run.toml").read_text()
    text = text.replace("num-rounds = 2", f"num-rounds = {rounds}")
    text = text.replace("local-epochs = 1", f"local-epochs = {epochs}")
    run.write_text(text)
    os.chmod(run.parent, 0o755)
    os.chmod(run, 0o644)
    compose_file = Path(tempfile.mkdtemp(prefix="fedscore-bench-compose-")) / "compose.yaml"
    compose_file.write_text((ROOT / "compose.yaml").read_text()
                            .replace("name: fedscore\n", f"name: {PROJECT}\n")
                            .replace("./deploy/config/run.toml", str(run))
                            .replace("./deploy/", f"{ROOT}/deploy/"))
    compose = [str(Path(sys.executable).parent / "podman-compose"), "-f", str(compose_file)]
    sh(*compose, "down", "-v", "-t", "5", check=False)
    try:
        start = time.monotonic()
        sh(*compose, "up", "-d")
        for service in NODES:
            wait_healthy(service)
        up_s = time.monotonic() - start
        code = sh("podman", "wait", container("submit"), timeout=3600)
        if code != "0":
            raise SystemExit("the run failed:\n" + sh("podman", "logs", container("submit"),
                                                        check=False)[-3000:])
        wait_healthy("scoring-bank-1")
        volume = sh("podman", "volume", "inspect", f"{PROJECT}_state-coordinator",
                    "--format", "{{.Mountpoint}}")
        progress = read_progress((Path(volume) / "coordinator" / "compose" /
                                  "progress.jsonl").read_text())
        cold = {}
        for role in ROLES:
            sh("podman", "stop", "-t", "10", container(role))
            t0 = time.monotonic()
            sh("podman", "start", container(role))
            wait_healthy(role)
            cold[role] = round(time.monotonic() - t0, 2)
        return {"cold_start_s": cold, "compose_up_to_healthy_s": round(up_s, 1),
                "round_s_containers": round(round_s(progress, rounds), 2)}
    finally:
        sh(*compose, "down", "-v", "-t", "10", check=False)
        shutil.rmtree(run.parent, ignore_errors=True)
        shutil.rmtree(compose_file.parent, ignore_errors=True)


def main() -> None:
    """Measure and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "deploy" / "containers.conf"))
    image_mb = int(sh("podman", "image", "inspect", IMAGE, "--format", "{{.Size}}")) / 1e6
    in_containers = containers(args.rounds, args.epochs)
    round_processes = processes(args.rounds, args.epochs)
    result = {
        "image_mb": round(image_mb, 1), **in_containers,
        "round_s_processes": round(round_processes, 2),
        "round_ratio": round(in_containers["round_s_containers"] / round_processes, 3),
        "rounds": args.rounds, "epochs": args.epochs,
        "targets": {"image_mb": 1500, "cold_start_s": 15, "round_ratio": 1.2},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
