"""The scoring topology with nothing in it: gRPC Python's floor for ``benchmarks/scoring.py``.

Three processes on loopback, mutual TLS with the run's own kits and fedscore's channel
options, shaped as the real run: the load generator, an aio "bank" server, and a sync
"platform" server on a thread pool (as ``fedscore platform serve``). The bank answers
each call after one call to the platform, its platform calls shared with
:class:`fedscore.wire.batching.Gathered` exactly as the scoring server shares them, and the
messages are about the real ones' size. There is no model, sealing, ledger or policy.
What is left is the per-call work of gRPC and asyncio and the OS scheduler's share, on
the same cores in the same minutes. ``scoring.py`` reports its figures next to fedscore's
(``floor`` and ``p99_over_floor_at_8``): a noisy machine moves both together.

    python benchmarks/grpc_floor.py platform KIT_DIR
    python benchmarks/grpc_floor.py bank KIT_DIR PLATFORM_ADDRESS

Each prints its port on its first stdout line and serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import grpc.aio

from fedscore.federation.provision import load_kit
from fedscore.wire.batching import Gathered
from fedscore.wire.transport import (
    GRPC_OPTIONS,
    add_secure_port,
    channel_credentials,
    channel_options,
)

SCORE = "/floor.Bank/Score"
EMBED = "/floor.Platform/Embed"
ANSWER = bytes(400)  # a ScoreResponse with four reasons: about 400 bytes
QUERY = bytes(150)  # a sealed EmbeddingQuery's fixed part; 8 bytes more per handle
ROW = bytes(64)  # one 16-float embedding row (and the answer's fixed part)


def _serve_platform(kit_dir: Path) -> None:
    def embed(query: bytes, context: grpc.ServicerContext) -> bytes:
        return ROW * (1 + (len(query) - len(QUERY)) // 8)

    server = grpc.server(futures.ThreadPoolExecutor(16), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "floor.Platform", {"Embed": grpc.unary_unary_rpc_method_handler(embed)}),))
    port = add_secure_port(server, "127.0.0.1:0", load_kit(kit_dir))
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


async def _serve_bank(kit_dir: Path, platform: str) -> None:
    kit = load_kit(kit_dir)
    channel = grpc.aio.secure_channel(platform, channel_credentials(kit),
                                      options=channel_options(kit, "platform"))
    embed = channel.unary_unary(EMBED)

    async def embed_many(handles: list[bytes]) -> list[bytes]:
        answer: bytes = await embed(QUERY + b"".join(handles), timeout=5)
        return [answer[k * len(ROW):(k + 1) * len(ROW)] for k in range(len(handles))]

    joined: Gathered[bytes, bytes] = Gathered(embed_many)

    async def score(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await joined(request[:8].ljust(8, b"\0"))
        return ANSWER

    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "floor.Bank", {"Score": grpc.unary_unary_rpc_method_handler(score)}),))
    port = add_secure_port(server, "127.0.0.1:0", kit)
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)
    await channel.close()


@contextmanager
def _child(*args: str) -> Iterator[tuple[str, int]]:
    """This script as a child process; yields (its address, its pid)."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"grpc_floor {args[0]} did not start: {line!r}")
        yield f"127.0.0.1:{line.strip()}", proc.pid
    finally:
        proc.stdin.close()
        proc.wait(10)


@contextmanager
def floor_servers(kits: Path, bank: str) -> Iterator[tuple[str, dict[str, int]]]:
    """The floor's platform and bank (``bank``'s kit) servers; yields the bank's address
    and both pids."""
    with _child("platform", str(kits / "platform")) as (platform, platform_pid), \
            _child("bank", str(kits / bank), platform) as (address, bank_pid):
        yield address, {"bank": bank_pid, "platform": platform_pid}


if __name__ == "__main__":
    if sys.argv[1:2] == ["platform"] and len(sys.argv) == 3:
        _serve_platform(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["bank"] and len(sys.argv) == 4:
        asyncio.run(_serve_bank(Path(sys.argv[2]), sys.argv[3]))
    else:
        sys.exit(__doc__)
