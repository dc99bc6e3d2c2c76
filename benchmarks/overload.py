"""The scoring server at ten times the concurrency where its throughput peaks: does it
answer what it admits in time and refuse the rest early, with a reason?

Three processes on loopback, every channel mutual TLS: the platform node, bank-1's
scoring server (``fedscore bank score-server``, its default limits) and this load
generator, playing the bank's decision engine (asyncio clients). Every ``Score`` asks for
a customer inside the intersection, so each waits for the platform's embedding; every
call carries a deadline (``--deadline-ms``).

1. Closed loop at concurrency 1, 2, 4, ... 32 (``--seconds`` each): the level with the
   most answers per second is the peak (``peak``: concurrency, ``answers_per_s``,
   ``p99_ms``).
2. Ten times that many clients for ``--overload-seconds``. A client whose call is refused
   with RESOURCE_EXHAUSTED backs off as gRPC's retry policy does (full jitter, from 50 ms,
   doubling to 1 s) and tries again; an answered client sends its next call at once.

Figures (last stdout line, one JSON object): ``goodput_over_peak`` (answers per second
under overload over the peak's), ``p99_admitted_over_peak`` (p99 latency of the
answered calls over the peak's p99), ``refused_late`` (refusals that came after the
deadline, or calls that ended DEADLINE_EXCEEDED or CANCELLED instead of being refused),
``refused_without_reason``; targets 0.90, 2.0, 0 and 0 (issue 15).

    python benchmarks/overload.py [--seconds 3] [--overload-seconds 10] [--deadline-ms 250]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
from loadsetup import prepare, score_server

from fedscore.api.v1 import scoring_pb2, scoring_pb2_grpc
from fedscore.cli.local import platform_process
from fedscore.federation.provision import StartupKit, load_kit
from fedscore.wire.transport import channel_credentials, channel_options

BACKOFF_S = (0.05, 1.0)
LEVELS = (1, 2, 4, 8, 16, 32)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_load(address: str, kit: StartupKit, ids: list[str], clients: int, seconds: float,
             deadline_s: float) -> dict[str, Any]:
    """``clients`` asyncio clients for ``seconds``: answered latencies, refusals (their
    latency and whether they gave a reason), other outcomes by code."""

    async def run() -> dict[str, Any]:
        channels = [grpc.aio.secure_channel(address, channel_credentials(kit),
                                            options=channel_options(kit, "bank-1"))
                    for _ in range(min(clients, 8))]
        await asyncio.gather(*(c.channel_ready() for c in channels))
        stubs = [scoring_pb2_grpc.ScoringServiceStub(c) for c in channels]
        answered: list[float] = []
        refused: list[float] = []
        silent = 0
        other: Counter[str] = Counter()
        stop = time.perf_counter() + seconds

        async def client(w: int) -> None:
            nonlocal silent
            stub, k, backoff = stubs[w % len(stubs)], w, BACKOFF_S[0]
            while time.perf_counter() < stop:
                request = scoring_pb2.ScoreRequest(applicant_id=ids[k % len(ids)])
                k += clients
                t0 = time.perf_counter()
                try:
                    await stub.Score(request, timeout=deadline_s)
                    answered.append(time.perf_counter() - t0)
                    backoff = BACKOFF_S[0]
                except grpc.aio.AioRpcError as exc:
                    took = time.perf_counter() - t0
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        other[exc.code().name] += 1
                        continue
                    refused.append(took)
                    silent += not exc.details()
                    await asyncio.sleep(random.uniform(0, backoff))
                    backoff = min(backoff * 2, BACKOFF_S[1])

        t0 = time.perf_counter()
        await asyncio.gather(*(client(w) for w in range(clients)))
        wall = time.perf_counter() - t0
        for c in channels:
            await c.close()
        return {"answered": answered, "refused": refused, "silent": silent,
                "other": dict(other), "wall": wall}

    return asyncio.run(run())


def _p99_ms(values: list[float]) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, 99)), 3) if values else 0.0


def main() -> None:
    """The closed-loop levels, then the overload, one JSON line (see the module)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per concurrency level")
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    parser.add_argument("--deadline-ms", type=float, default=250.0)
    parser.add_argument("--people", type=int, default=20_000)
    args = parser.parse_args()
    deadline_s = args.deadline_ms / 1000
    with tempfile.TemporaryDirectory(prefix="fedscore-overload-") as tmp:
        setup = prepare(Path(tmp), people=args.people)
        kit = load_kit(setup.kits / "bank-1")
        with platform_process(setup.kits / "platform", setup.manifest.platform_features,
                              setup.manifest.platform_schema, state_dir=setup.state,
                              log=setup.root / "platform.log") as platform, \
                score_server(setup, platform) as (address, _):
            run_load(address, kit, setup.inside, 8, 1.0, deadline_s)  # warm-up
            levels = []
            for c in LEVELS:
                r = run_load(address, kit, setup.inside, c, args.seconds, deadline_s)
                level = {"concurrency": c,
                         "answers_per_s": round(len(r["answered"]) / r["wall"], 1),
                         "p50_ms": round(float(np.median(r["answered"])) * 1000, 3),
                         "p99_ms": _p99_ms(r["answered"]), "refused": len(r["refused"]),
                         "other": r["other"]}
                _say(f"  closed loop: {level}")
                levels.append(level)
            peak = max(levels, key=lambda lv: lv["answers_per_s"])
            clients = 10 * int(peak["concurrency"])
            r = run_load(address, kit, setup.inside, clients, args.overload_seconds,
                         deadline_s)
    answered, refused = r["answered"], r["refused"]
    goodput = len(answered) / r["wall"]
    overload = {
        "clients": clients, "answers_per_s": round(goodput, 1),
        "refusals_per_s": round(len(refused) / r["wall"], 1),
        "p50_admitted_ms": round(float(np.median(answered)) * 1000, 3) if answered else 0.0,
        "p99_admitted_ms": _p99_ms(answered),
        "p99_refusal_ms": _p99_ms(refused), "other": r["other"],
    }
    _say(f"  overload: {overload}")
    late = sum(t > deadline_s for t in refused) + sum(
        n for code, n in r["other"].items() if code in ("DEADLINE_EXCEEDED", "CANCELLED"))
    print(json.dumps({
        "deadline_ms": args.deadline_ms,
        "levels": levels,
        "peak": {k: peak[k] for k in ("concurrency", "answers_per_s", "p99_ms")},
        "overload": overload,
        "goodput_over_peak": round(goodput / peak["answers_per_s"], 3),
        "p99_admitted_over_peak": round(_p99_ms(answered) / peak["p99_ms"], 3),
        "refused_late": int(late),
        "refused_without_reason": int(r["silent"]),
        "errors": {k: v for k, v in r["other"].items()
                   if k not in ("DEADLINE_EXCEEDED", "CANCELLED")},
    }))


if __name__ == "__main__":
    main()
