"""The bank's side of PSI: opens the ``Intersect`` stream and runs the engine against it.

gRPC's own threads send the engine's messages and deliver the platform's, while the calling
thread does the blinding; failures reach the caller as PsiError with the platform's status
code (``.code``, what a caller decides on) and message, never as a raw RpcError.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import grpc
import numpy as np

from fedscore.api.v1 import psi_pb2, psi_pb2_grpc
from fedscore.crypto.psi import (
    DEFAULT_CHUNK_SIZE,
    PsiError,
    PsiMessage,
    PsiParty,
    PsiResult,
)
from fedscore.wire import serde


def _requests(messages: Iterable[PsiMessage]) -> Iterator[psi_pb2.IntersectRequest]:
    for msg in messages:
        yield serde.psi_to_pb(msg, psi_pb2.IntersectRequest)


def _responses(call: Iterable[psi_pb2.IntersectResponse]) -> Iterator[PsiMessage]:
    for resp in call:
        yield serde.psi_from_pb(resp)


def run_psi(
    channel: grpc.Channel,
    ids: np.ndarray | Sequence[str],
    party: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> PsiResult:
    """Intersect ``ids`` with the platform's; ``result.rows[h]`` is the row of handle h.

    Input problems (duplicates, empty set) raise PsiError before anything is sent.
    """
    engine = PsiParty(ids, party=party, role="bank", chunk_size=chunk_size)
    stub = psi_pb2_grpc.PsiServiceStub(channel)
    call = stub.Intersect(_requests(engine.outgoing()))
    try:
        return engine.run(_responses(call))
    except grpc.RpcError as exc:
        code = (exc.code() if isinstance(exc, grpc.Call) else None) or grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        raise PsiError(f"PSI with the platform failed ({code.name}): {details}",
                       code=code) from None
    finally:
        call.cancel()  # a no-op once the stream ended; otherwise tells the platform to stop
