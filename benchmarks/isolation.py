"""One hostile bank against everyone else: bank-1's scoring p99 and the coordinator's
control calls while bank-2 runs the attacks of issue 15 item 1 at once, against the
same figures with no attack, in the same run.

Processes on loopback, every channel mutual TLS: the platform node (default limits),
bank-1's scoring server (``fedscore bank score-server``), this load generator (bank-1's
decision engine: a closed loop of ``Score`` at concurrency 8 on customers inside the
intersection, so each waits for the platform; and the coordinator: ``GetRunState``
every 50 ms with a 1 s deadline), and, in the attack phase, bank-2's attacker (its own
process, its own certificate), which keeps up at once:

* ``--quiet-streams`` PSI streams that send their hello and then nothing (one that ends
  or is refused is opened again after 0.1 s);
* ``--oversized`` threads sending ``GetEmbeddings`` on bank-2's own session with 10
  million handles (40 MB) and with 1 million (4 MB), in turn, each again at once after
  its refusal.

Figures (last stdout line, one JSON object): ``p99_under_attack_over_quiet`` (bank-1's
scoring p99 under attack over its p99 without), ``control_calls_failed`` (the
coordinator's calls that failed, both phases), ``platform_rss_growth_mb`` (the
platform's highest RSS during the attack, sampled every 20 ms, over its RSS before it)
and what the attacker got back; targets 2.0, 0 and 256 MB (issue 15).

    python benchmarks/isolation.py [--seconds 10] [--quiet-streams 20] [--oversized 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
from loadsetup import pid_of, prepare, rss_mb, score_server

from fedscore.api.v1 import (
    embedding_pb2,
    federation_pb2,
    federation_pb2_grpc,
    psi_pb2,
    psi_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)
from fedscore.cli.local import platform_process
from fedscore.crypto.psi import Hello
from fedscore.federation.provision import StartupKit, load_kit
from fedscore.wire import serde
from fedscore.wire.transport import channel_credentials, channel_options, secure_channel

CONCURRENCY = 8


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- bank-2's attacker (its own process) --------------------------------------------------


def attack(platform: str, kits: Path, data: Path, version: str, streams: int,
           oversized: int) -> None:
    """Run the attacks until stdin closes; then print what came back, as JSON."""
    from bank_node.psi_client import run_psi
    from bank_node.scoring_platform import PlatformEmbeddings
    from bank_node.trainer import BankTables

    kit = load_kit(kits / "bank-2")
    stop = threading.Event()
    got: Counter[str] = Counter()
    lock = threading.Lock()

    def note(what: str) -> None:
        with lock:
            got[what] += 1

    channel = secure_channel(platform, kit, "platform")
    psi = run_psi(channel, BankTables.load(data).train.ids, party="bank-2")
    link = PlatformEmbeddings(channel, kit, psi)

    def quiet_stream() -> None:
        stub = psi_pb2_grpc.PsiServiceStub(channel)
        while not stop.is_set():
            def hello() -> Any:
                yield serde.psi_to_pb(Hello("bank-2", 1000, os.urandom(16)),
                                      psi_pb2.IntersectRequest)
                stop.wait()
            try:
                for _ in stub.Intersect(hello()):
                    pass
                note("psi:OK")
            except grpc.RpcError as exc:
                note(f"psi:{exc.code().name}")
            stop.wait(0.1)

    def oversized_query() -> None:
        for n in [10_000_000, 1_000_000] * 1_000_000:
            if stop.is_set():
                return
            try:
                link.get(version, np.zeros(n, np.int64), [],
                         purpose=embedding_pb2.SCORING_PURPOSE_PORTFOLIO_REVIEW, timeout=10,
                         dim=1)
                note(f"get{n}:OK")
            except grpc.RpcError as exc:
                note(f"get{n}:{exc.code().name}")

    threads = [threading.Thread(target=quiet_stream, daemon=True) for _ in range(streams)]
    threads += [threading.Thread(target=oversized_query, daemon=True) for _ in range(oversized)]
    for t in threads:
        t.start()
    print("attacking", flush=True)
    sys.stdin.read()
    stop.set()
    print(json.dumps(dict(got)), flush=True)
    os._exit(0)  # the quiet streams' calls need not end politely


# -- the measuring side -------------------------------------------------------------------


def scoring_loop(address: str, kit: StartupKit, ids: list[str], seconds: float
                 ) -> dict[str, Any]:
    """bank-1's decision engine: CONCURRENCY clients back to back for ``seconds``."""

    async def run() -> tuple[list[float], Counter[str]]:
        channel = grpc.aio.secure_channel(address, channel_credentials(kit),
                                          options=channel_options(kit, "bank-1"))
        await channel.channel_ready()
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        lat: list[float] = []
        parts: Counter[str] = Counter()
        stop = time.perf_counter() + seconds

        async def client(w: int) -> None:
            k = w
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await stub.Score(scoring_pb2.ScoreRequest(
                    applicant_id=ids[k % len(ids)]), timeout=5)
                lat.append(time.perf_counter() - t0)
                parts[scoring_pb2.PlatformPart.Name(r.platform)] += 1
                k += CONCURRENCY

        await asyncio.gather(*(client(w) for w in range(CONCURRENCY)))
        await channel.close()
        return lat, parts

    lat, parts = asyncio.run(run())
    ms = np.asarray(lat) * 1000
    return {"requests": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "platform_part": dict(parts)}


class RssWatch(threading.Thread):
    """The highest RSS of a process, sampled every 20 ms until ``stop``."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self.stop = threading.Event()
        self.peak = rss_mb(pid)

    def run(self) -> None:
        """Sample until stopped."""
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self._pid))


class Control(threading.Thread):
    """The coordinator: GetRunState every 50 ms, 1 s deadline; counts what fails."""

    def __init__(self, platform: str, kit: StartupKit) -> None:
        super().__init__(daemon=True)
        self._channel = secure_channel(platform, kit, "platform")
        self._stub = federation_pb2_grpc.FederationServiceStub(self._channel)
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failed: Counter[str] = Counter()

    def run(self) -> None:
        """Call until stopped."""
        while not self.stop.wait(0.05):
            t0 = time.perf_counter()
            try:
                self._stub.GetRunState(federation_pb2.GetRunStateRequest(run_id="bench"),
                                       timeout=1.0)
                self.latencies.append(time.perf_counter() - t0)
            except grpc.RpcError as exc:
                self.failed[exc.code().name] += 1
        self._channel.close()


def main() -> None:
    """Quiet phase, attack phase, one JSON line (see the module)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--quiet-streams", type=int, default=20)
    parser.add_argument("--oversized", type=int, default=16)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--attack", nargs=4, metavar=("PLATFORM", "KITS", "DATA", "VERSION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        attack(args.attack[0], Path(args.attack[1]), Path(args.attack[2]), args.attack[3],
               args.quiet_streams, args.oversized)
        return
    with tempfile.TemporaryDirectory(prefix="fedscore-isolation-") as tmp:
        setup = prepare(Path(tmp), people=args.people)
        kit = load_kit(setup.kits / "bank-1")
        with platform_process(setup.kits / "platform", setup.manifest.platform_features,
                              setup.manifest.platform_schema, state_dir=setup.state,
                              log=setup.root / "platform.log") as platform, \
                score_server(setup, platform) as (address, _):
            platform_pid = pid_of("platform", "serve", str(setup.kits / "platform"))
            control = Control(platform, load_kit(setup.kits / "coordinator"))
            control.start()
            scoring_loop(address, kit, setup.inside, 1.0)  # warm-up
            quiet = scoring_loop(address, kit, setup.inside, args.seconds)
            _say(f"  quiet: {quiet}")
            quiet_control = list(control.latencies)
            rss_before = rss_mb(platform_pid)
            watch = RssWatch(platform_pid)
            watch.start()
            attacker = subprocess.Popen(
                [sys.executable, __file__, "--attack", platform, str(setup.kits),
                 str(setup.manifest.bank_dirs["bank-2"]), setup.version,
                 "--quiet-streams", str(args.quiet_streams),
                 "--oversized", str(args.oversized)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert attacker.stdout is not None and attacker.stdin is not None
            if attacker.stdout.readline().strip() != "attacking":
                raise RuntimeError("the attacker did not start")
            time.sleep(2.0)  # every attack under way
            n_control = len(control.latencies)
            attacked = scoring_loop(address, kit, setup.inside, args.seconds)
            _say(f"  under attack: {attacked}")
            attack_control = control.latencies[n_control:]
            watch.stop.set()
            watch.join(5)
            rss_peak = watch.peak
            rss_after = rss_mb(platform_pid)
            attacker.stdin.close()
            got = json.loads(attacker.stdout.readline())
            attacker.wait(30)
            control.stop.set()
            control.join(5)
    print(json.dumps({
        "quiet": quiet,
        "under_attack": attacked,
        "p99_under_attack_over_quiet": round(attacked["p99_ms"] / quiet["p99_ms"], 3),
        "control_calls": len(control.latencies) + sum(control.failed.values()),
        "control_calls_failed": sum(control.failed.values()),
        "control_failed_by_code": dict(control.failed),
        "control_p99_ms": {
            "quiet": round(float(np.percentile(quiet_control, 99)) * 1000, 3),
            "under_attack": round(float(np.percentile(attack_control, 99)) * 1000, 3)},
        "platform_rss_mb": {"before": round(rss_before), "peak": round(rss_peak),
                            "after": round(rss_after)},
        "platform_rss_growth_mb": round(rss_peak - rss_before, 1),
        "attacker_got": got,
    }))


if __name__ == "__main__":
    main()
