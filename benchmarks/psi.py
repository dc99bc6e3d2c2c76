"""PSI throughput and memory: N x N ids between two node processes over mutual TLS.

    python benchmarks/psi.py [--n N] [--overlap K] [--chunk C] [--no-floor]

The bank runs in this process; the platform is a subprocess (this script with --serve).
Each generates its own ids from the seed (N each, ``overlap`` in common, shuffled), so no
id crosses a process boundary. The floor is the bare arithmetic PSI cannot avoid: 4N X25519
scalar multiplications (PsiKey.blind on precomputed points), 2N in each of two processes at
once, measured in the same run on the same cores (half before the PSI, half after, so
other load on a shared machine weighs on both alike). floor_ratio = PSI wall / floor.
``--no-floor`` skips the floor; ``--memory-only`` also swaps X25519 for the identity so the
peak-RSS figure at N = 10,000,000 takes minutes, not a quarter of an hour (its timings mean
nothing and it says so in the JSON).

The last stdout line is one JSON object: n, overlap, intersection, wall_s, floor_s,
floor_ratio, rows_per_s (ids per side per second), peak_rss_mb (max of the two processes),
bank_/platform_peak_rss_mb, bank_/platform_cpu_s, chunk, floor_cpu_s and cpu_ratio
(max PSI CPU seconds of a process / CPU seconds of a floor process: the overhead that other
load on a shared machine cannot inflate).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bank_node.psi_client import run_psi
from fedscore.crypto.primitives import POINT_SIZE, PsiKey
from fedscore.crypto.psi import PsiResult
from fedscore.federation.provision import load_kit, provision
from fedscore.wire.status import StatusInterceptor
from fedscore.wire.transport import add_secure_port, secure_channel
from platform_node.psi_service import PsiServicer, add_psi_service

BANK = "bank-1"
PLATFORM = "platform"
ID_DIGITS = 12


def make_ids(start: int, n: int, seed: int) -> np.ndarray:
    """``n`` ids "u000000000123" for numbers start..start+n-1, shuffled; fixed-width bytes."""
    numbers = np.arange(start, start + n, dtype=np.int64)
    np.random.default_rng(seed).shuffle(numbers)
    buf = np.empty((n, ID_DIGITS + 1), dtype=np.uint8)
    buf[:, 0] = ord("u")
    for k in range(ID_DIGITS):
        buf[:, ID_DIGITS - k] = 48 + numbers % 10
        numbers //= 10
    return buf.view(f"S{ID_DIGITS + 1}").ravel()


def party_ids(party: str, n: int, overlap: int, seed: int) -> np.ndarray:
    """``party``'s ids: the platform's n, the bank's n of which ``overlap`` are the platform's."""
    if party == PLATFORM:
        return make_ids(0, n, seed)
    return make_ids(n - overlap, n, seed + 1)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _identity_blind(self: PsiKey, points: bytes) -> bytes:
    return bytes(points)  # a fresh buffer of the same size, as the real blind returns


# ---- floor ----------------------------------------------------------------------------------


def _floor_worker(count: int, chunk: int, seed: int, barrier: Any, out: Any) -> None:
    raw = np.random.default_rng(seed).integers(0, 256, (count, POINT_SIZE), dtype=np.uint8)
    raw[:, -1] &= 0x7F
    points = raw.tobytes()
    del raw
    key = PsiKey.generate()
    step = chunk * POINT_SIZE
    barrier.wait()
    start, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(points), step):
        key.blind(points[i : i + step])
    out.put((start, time.perf_counter(), time.process_time() - cpu0))


def measure_floor(n: int, chunk: int) -> tuple[float, float]:
    """Wall seconds for 2 processes doing 2n blindings each at once (4n in all), and the
    larger of the two processes' CPU seconds (what one core needs for 2n, contention aside).
    """
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_floor_worker, args=(2 * n, chunk, 100 + i, barrier, out))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"floor worker exited with {p.exitcode}")
    # perf_counter is CLOCK_MONOTONIC on Linux, so spans from two processes compare.
    wall = max(e for _, e, _ in spans) - min(s for s, _, _ in spans)
    return wall, max(c for _, _, c in spans)


# ---- platform process -----------------------------------------------------------------------


def serve(kit_dir: Path, n: int, overlap: int, seed: int, chunk: int) -> None:
    """Platform node: answer one PSI session, then report its own figures on stdout."""
    kit = load_kit(kit_dir / PLATFORM)
    ids = party_ids(PLATFORM, n, overlap, seed)
    done = threading.Event()
    results: list[PsiResult] = []

    def on_complete(peer: str, result: PsiResult) -> None:
        if peer != BANK:
            raise RuntimeError(f"unexpected peer {peer!r}")
        results.append(result)
        done.set()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[StatusInterceptor()])  # as the platform's server
    add_psi_service(server, PsiServicer(ids, on_complete, chunk_size=chunk))
    port = add_secure_port(server, "127.0.0.1:0", kit)
    server.start()
    # Exit if the parent goes away (its end of stdin closes).
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(3)), daemon=True).start()
    cpu0 = cpu_s()
    print(json.dumps({"port": port}), flush=True)
    done.wait()
    server.stop(grace=5).wait()
    print(
        json.dumps(
            {
                "intersection": results[0].size,
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "cpu_s": round(cpu_s() - cpu0, 2),
            }
        ),
        flush=True,
    )


# ---- bank process (main) --------------------------------------------------------------------


def main() -> None:
    """Run the platform side (``--serve``) or the bank side with the floor; print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="ids per party")
    ap.add_argument("--overlap", type=int, default=None, help="ids in common (default n/2)")
    ap.add_argument("--chunk", type=int, default=4096, help="points per message")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-floor", action="store_true", help="skip the 4N floor measurement")
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="memory figures only: no floor, and blinding replaced by the identity (which "
        "commutes too) so N = 10,000,000 runs in minutes through the same buffers and messages",
    )
    ap.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--verbose", action="store_true", help="log each side's idle time")
    args = ap.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(process)d %(name)s: %(message)s")
    overlap = args.n // 2 if args.overlap is None else args.overlap
    if not 0 <= overlap <= args.n:
        ap.error(f"--overlap must be in 0..{args.n}")
    if args.memory_only:
        args.no_floor = True
        PsiKey.blind = _identity_blind  # type: ignore[method-assign]
    if args.serve is not None:
        serve(args.serve, args.n, overlap, args.seed, args.chunk)
        return

    # The floor is measured in two halves, before and after the PSI, so load from elsewhere
    # on the machine weighs on floor and PSI alike.
    half = args.n // 2
    floor_a = None if args.no_floor else measure_floor(half, args.chunk)
    with tempfile.TemporaryDirectory(prefix="psi-bench-") as tmp:
        kits = Path(tmp)
        provision(kits, parties=[PLATFORM, BANK])
        kit = load_kit(kits / BANK)
        command = [
            sys.executable, __file__, "--serve", str(kits), "--n", str(args.n),
            "--overlap", str(overlap), "--seed", str(args.seed), "--chunk", str(args.chunk),
        ]  # fmt: skip
        command += ["--verbose"] if args.verbose else []
        command += ["--memory-only"] if args.memory_only else []
        platform = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert platform.stdout is not None
            ids = party_ids(BANK, args.n, overlap, args.seed)
            line = platform.stdout.readline()
            if not line:
                raise RuntimeError("platform process exited before listening")
            port = json.loads(line)["port"]
            with secure_channel(f"127.0.0.1:{port}", kit, PLATFORM) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                cpu0 = cpu_s()
                start = time.perf_counter()
                result = run_psi(channel, ids, BANK, chunk_size=args.chunk)
                wall = time.perf_counter() - start
                bank_cpu = cpu_s() - cpu0
            plat = json.loads(platform.stdout.readline())
            platform.wait(timeout=60)
        finally:
            if platform.poll() is None:
                platform.kill()
                platform.wait()
    floor_s = floor_cpu = None
    if floor_a is not None:
        floor_b = measure_floor(args.n - half, args.chunk)
        floor_s, floor_cpu = floor_a[0] + floor_b[0], floor_a[1] + floor_b[1]
    if result.size != overlap or plat["intersection"] != overlap:
        raise SystemExit(
            f"wrong intersection: bank {result.size}, platform {plat['intersection']}, "
            f"expected {overlap}"
        )
    bank_rss = round(peak_rss_mb(), 1)
    report = {
        "n": args.n,
        "overlap": overlap,
        "intersection": result.size,
        "chunk": args.chunk,
        "wall_s": round(wall, 2),
        "floor_s": None if floor_s is None else round(floor_s, 2),
        "floor_ratio": None if floor_s is None else round(wall / floor_s, 3),
        "floor_cpu_s": None if floor_cpu is None else round(floor_cpu, 2),
        # CPU-time version of the ratio: insensitive to other load on the machine.
        "cpu_ratio": None
        if floor_cpu is None
        else round(max(bank_cpu, plat["cpu_s"]) / floor_cpu, 3),
        "rows_per_s": round(args.n / wall, 1),
        "peak_rss_mb": max(bank_rss, plat["peak_rss_mb"]),
        "bank_peak_rss_mb": bank_rss,
        "platform_peak_rss_mb": plat["peak_rss_mb"],
        "bank_cpu_s": round(bank_cpu, 2),
        "platform_cpu_s": plat["cpu_s"],
        "tls": "mutual",
        "crypto": "identity (memory-only run)" if args.memory_only else "x25519",
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
