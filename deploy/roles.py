"""The container roles that are more than one command (see deploy/entrypoint.sh).

Run by the image's own Python with only the standard library, gRPC and the ``fedscore``
and ``flwr`` commands of the image:

- ``provision``: once per federation, a CA and one startup kit per party, each party's kit
  copied into that party's own volume (``/kits/<party>``), the banks' SuperNode public keys
  into ``/supernode-keys`` (what the SuperLink's operator registers), and, for a
  demonstration, the scenario's data into each party's data volume (``/datasets/<party>``).
  Nothing is replaced once there, so a restarted federation keeps its keys.
- ``register``: register every bank's SuperNode key with the SuperLink (once; a key already
  registered is left as it is).
- ``submit``: ``flwr run`` the coordinator's run with ``/config/run.toml``, follow it, and
  when it has released its model publish the release into ``/release/current``, the
  banks' scoring servers' read-only volume. A resubmitted run id resumes after its last
  checkpoint (the coordinator's own behaviour).
- ``health ADDRESS``: Flower's plaintext health service on the container's loopback.
- ``party KIT`` / ``wait-release DIR``: helpers of the entrypoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

FEDERATION = "fedscore"  # the SuperLink connection's name in FLWR_HOME/config.toml
OWNER = 10001  # the image's user: provisioning (as root) hands every file to it
WAIT_S = float(os.environ.get("FEDSCORE_WAIT_S", "300"))


def say(message: str) -> None:
    """One line to the container's log."""
    print(f"[{sys.argv[1] if len(sys.argv) > 1 else 'roles'}] {message}", flush=True)


def fail(message: str) -> None:
    """Stop the role with a message and exit code 1."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _chown(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, OWNER, OWNER)


def _fill(src: Path, dst: Path) -> None:
    """Copy ``src``'s contents into the (mounted) folder ``dst`` and hand them to the user."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    if os.geteuid() == 0:
        _chown(dst)


def provision() -> None:
    """Kits into each party's volume, bank keys for registration, a scenario's data."""
    parties = os.environ.get("PARTIES", "platform bank-1 bank-2 bank-3 coordinator").split()
    hosts = os.environ.get("HOSTS", "localhost 127.0.0.1").split()
    kits, keys, ca = Path("/kits"), Path("/supernode-keys"), Path("/ca")
    if all((kits / p / "federation.json").exists() for p in parties):
        say(f"kits of {', '.join(parties)} already there; nothing replaced")
    else:
        if any((kits / p / "federation.json").exists() for p in parties):
            fail("some parties have kits and some not; remove every kit volume to provision "
                 "the federation again")
        work = Path("/tmp/provision")
        cmd = ["fedscore", "provision", "--out", str(work), "--supernode-keys",
               "--federation", os.environ.get("FEDERATION", "fedscore-compose")]
        for p in parties:
            cmd += ["--party", p]
        for h in hosts:
            cmd += ["--host", h]
        subprocess.run(cmd, check=True)
        for p in parties:
            if not (kits / p).is_dir():
                fail(f"no volume mounted at {kits / p} for {p}'s kit")
            _fill(work / p, kits / p)
            pub = work / p / "supernode.pub"
            if pub.exists():
                keys.mkdir(exist_ok=True)
                shutil.copy(pub, keys / f"{p}.pub")
        if ca.is_dir():
            _fill(work / "ca", ca)
            say(f"the CA is in the volume at {ca}: keep it offline")
        else:
            say("no volume at /ca: the CA key is discarded (no new kit can be issued)")
        if keys.is_dir() and os.geteuid() == 0:
            _chown(keys)
        shutil.rmtree(work)
        say(f"provisioned {', '.join(parties)}")
    dataset = os.environ.get("DATASET", "")
    if not dataset:
        return
    datasets = Path("/datasets")
    todo = [p for p in parties if (datasets / p).is_dir() and not any((datasets / p).iterdir())]
    if not todo:
        say("every mounted data volume holds data already")
        return
    scratch = Path("/tmp/dataset")
    subprocess.run(["fedscore", "data", "prepare", dataset, "--out", str(scratch)], check=True)
    for p in todo:
        if not (scratch / p).is_dir():
            fail(f"the {dataset} scenario has no data for {p}")
        _fill(scratch / p, datasets / p)
    shutil.rmtree(scratch)
    say(f"{dataset} data written for {', '.join(todo)}")


def _flwr_home() -> dict[str, str]:
    """A Flower CLI config that reaches the SuperLink and trusts the federation's CA."""
    home = Path(os.environ.get("FLWR_CLI_HOME", "/tmp/flwr-cli"))
    home.mkdir(parents=True, exist_ok=True)
    address = os.environ.get("SUPERLINK", "coordinator:9092")
    ca = Path(os.environ.get("FEDSCORE_KIT", "/kit")) / "ca.crt"
    if not ca.exists():
        fail(f"missing file {ca} (mount the coordinator's startup kit at /kit)")
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
        f'address = "{address}"\nroot-certificates = "{ca}"\n')
    return {**os.environ, "FLWR_HOME": str(home)}


def flwr(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One ``flwr`` CLI call against the SuperLink."""
    done = subprocess.run(["flwr", *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    # With --format json a refusal still exits 0: its answer says success false.
    refused = "--format" in args and _json(done.stdout).get("success") is False
    if check and (done.returncode != 0 or refused):
        fail(f"`flwr {' '.join(args)}` failed (exit {done.returncode}):\n"
             f"{(done.stdout + done.stderr).strip()}")
    return done


def wait_superlink(env: dict[str, str]) -> None:
    """Wait until the SuperLink answers the Control API (compose starts it first)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        done = flwr(env, "supernode", "list", FEDERATION, "--format", "json", check=False)
        if done.returncode == 0 and "nodes" in _json(done.stdout):
            return
        if time.monotonic() > deadline:
            fail(f"the SuperLink at {env.get('SUPERLINK', 'coordinator:9092')} did not answer "
                 f"in {WAIT_S:.0f} s:\n{(done.stdout + done.stderr).strip()[-800:]}")
        time.sleep(2)


def wait_online(env: dict[str, str], count: int) -> None:
    """Wait until ``count`` SuperNodes are online (a run starts with those there)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        nodes = _json(flwr(env, "supernode", "list", FEDERATION, "--format", "json",
                           check=False).stdout).get("nodes", [])  # a missed call: try again
        online = sorted(str(n.get("name", n["node-id"])) for n in nodes
                        if n["status"] == "online")
        if len(online) >= count:
            say(f"{len(online)} SuperNodes online: {', '.join(online)}")
            return
        if time.monotonic() > deadline:
            fail(f"only {len(online)} of {count} SuperNodes came online in {WAIT_S:.0f} s")
        time.sleep(2)


def register() -> None:
    """Register each bank's SuperNode public key (``/supernode-keys/<bank>.pub``) once the
    provision service has written them (waited for: this service has no dependency, since
    Podman 4.3 cannot start a chain of them)."""
    expected = int(os.environ.get("EXPECT_BANKS", "3"))
    deadline = time.monotonic() + WAIT_S
    while len(keys := sorted(Path("/supernode-keys").glob("*.pub"))) < expected:
        if time.monotonic() > deadline:
            fail(f"{len(keys)} of {expected} SuperNode public keys in /supernode-keys after "
                 f"{WAIT_S:.0f} s (is the provision service done?)")
        time.sleep(1)
    env = _flwr_home()
    wait_superlink(env)
    for pub in keys:
        done = flwr(env, "supernode", "register", str(pub), FEDERATION, "--name", pub.stem,
                    "--format", "json", check=False)
        answer = _json(done.stdout)
        message = str(answer.get("error-message", done.stdout + done.stderr))
        if answer.get("success"):
            say(f"registered {pub.stem}")
        elif "already in use" in message:
            say(f"{pub.stem} was registered already")
        else:
            fail(f"registering {pub.stem}: {message.strip()}")


def _json(text: str) -> dict[str, Any]:
    try:
        answer = json.loads(text)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def submit() -> None:
    """Submit the run, follow it until released, publish the release for the banks."""
    config = Path(os.environ.get("RUN_CONFIG", "/config/run.toml"))
    if not config.exists():
        fail(f"missing file {config} (the coordinator's run config)")
    settings = tomllib.loads(config.read_text())
    run_dir = Path(settings["state-dir"]) / settings["run-id"]
    env = _flwr_home()
    wait_superlink(env)
    wait_online(env, int(settings.get("min-banks", 2)))
    reply = flwr(env, "run", os.environ.get("FEDSCORE_APP", "/app"), FEDERATION,
                 "--run-config", str(config), "--format", "json").stdout
    run_id = int(json.loads(reply)["run-id"])
    say(f"run {run_id} submitted ({settings['run-id']}, {settings.get('num-rounds')} rounds)")
    progress, seen, status, misses = run_dir / "progress.jsonl", 0, "pending", 0
    deadline = time.monotonic() + float(os.environ.get("RUN_TIMEOUT_S", "3600"))
    while time.monotonic() < deadline:
        lines = progress.read_text().splitlines() if progress.exists() else []
        for line in lines[seen:]:
            say(f"progress {line}")
        seen = len(lines)
        if any('"released"' in line for line in lines):
            break
        # A loaded SuperLink may miss a status call: only many misses in a row fail.
        answer = _json(flwr(env, "ls", FEDERATION, "--run-id", str(run_id), "--format", "json",
                            check=False).stdout)
        if not answer.get("runs"):
            misses += 1
            if misses > 20:
                fail(f"the SuperLink did not answer for run {run_id} {misses} times in a row: "
                     f"{answer.get('error-message', '')}")
            time.sleep(3)
            continue
        misses = 0
        status = str(answer["runs"][0]["status"])
        if status.startswith("finished") and not (
                progress.exists() and '"released"' in progress.read_text()):
            log = flwr(env, "log", str(run_id), FEDERATION, "--show", check=False).stdout
            fail(f"run {run_id} ended ({status}) without a release; its log ends:\n"
                 + "\n".join(log.splitlines()[-20:]))
        time.sleep(3)
    else:
        fail(f"run {run_id} did not release a model in time (last status {status})")
    release = Path("/release")
    incoming, current = release / ".incoming", release / "current"
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.copytree(run_dir / "release", incoming)
    shutil.rmtree(current, ignore_errors=True)
    incoming.rename(current)
    say(f"run {run_id} released its model; published to {current}")


def health(address: str) -> None:
    """Exit 0 when Flower's health service at ``address`` (plaintext, loopback) serves."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            fail(f"{address}: {exc.code().name}")
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(name)
    raise SystemExit(0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1)


def wait_release(folder: str) -> None:
    """Wait for the coordinator's release to be published into ``folder``."""
    current = Path(folder) / "current"
    if not (current / "manifest.json").exists():
        say(f"waiting for the coordinator's release in {current}")
    while not (current / "manifest.json").exists():
        time.sleep(2)


def main() -> None:
    """Dispatch on the role named by the first argument."""
    role, args = sys.argv[1], sys.argv[2:]
    if role == "party":
        print(json.loads((Path(args[0]) / "kit.json").read_text())["party"])
    elif role == "health":
        health(args[0])
    elif role == "wait-release":
        wait_release(args[0])
    else:
        {"provision": provision, "register": register, "submit": submit}[role]()


if __name__ == "__main__":
    main()
