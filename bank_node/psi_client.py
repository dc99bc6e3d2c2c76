"""The bank's side of PSI: opens the ``Intersect`` stream and runs the engine against it.

gRPC's own threads send the engine's messages and deliver the platform's, while the calling
thread does the blinding; failures reach the caller as PsiError with the platform's message,
never as a raw RpcError.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import grpc
import numpy as np

from fedscore.api.v1 import psi_pb2, psi_pb2_grpc
from fedscore.psi import (
    DEFAULT_CHUNK_SIZE,
    Blinded,
    Done,
    DoubleBlinded,
    Hello,
    PsiError,
    PsiMessage,
    PsiParty,
    PsiProtocolError,
    PsiResult,
)


def message_to_request(msg: PsiMessage) -> psi_pb2.IntersectRequest:
    if isinstance(msg, Hello):
        return psi_pb2.IntersectRequest(
            hello=psi_pb2.PsiHello(
                party=msg.party,
                set_size=msg.set_size,
                nonce=msg.nonce,
                protocol_version=msg.protocol_version,
            )
        )
    if isinstance(msg, Blinded):
        return psi_pb2.IntersectRequest(
            blinded=psi_pb2.PsiPoints(offset=msg.offset, points=msg.points)
        )
    if isinstance(msg, DoubleBlinded):
        return psi_pb2.IntersectRequest(
            double_blinded=psi_pb2.PsiPoints(offset=msg.offset, points=msg.points)
        )
    return psi_pb2.IntersectRequest(
        done=psi_pb2.PsiDone(
            intersection_size=msg.intersection_size, intersection_digest=msg.intersection_digest
        )
    )


def message_from_response(resp: psi_pb2.IntersectResponse) -> PsiMessage:
    step = resp.WhichOneof("step")
    if step == "hello":
        h = resp.hello
        return Hello(h.party, h.set_size, h.nonce, h.protocol_version)
    if step == "blinded":
        return Blinded(resp.blinded.offset, resp.blinded.points)
    if step == "double_blinded":
        return DoubleBlinded(resp.double_blinded.offset, resp.double_blinded.points)
    if step == "done":
        return Done(resp.done.intersection_size, resp.done.intersection_digest)
    raise PsiProtocolError("IntersectResponse has no step set")


def _requests(messages: Iterable[PsiMessage]) -> Iterator[psi_pb2.IntersectRequest]:
    for msg in messages:
        yield message_to_request(msg)


def _responses(call: Iterable[psi_pb2.IntersectResponse]) -> Iterator[PsiMessage]:
    for resp in call:
        yield message_from_response(resp)


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
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        raise PsiError(f"PSI with the platform failed ({name}): {details}") from None
    finally:
        call.cancel()  # a no-op once the stream ended; otherwise tells the platform to stop
