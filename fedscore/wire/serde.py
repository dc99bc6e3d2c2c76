"""The one place where protobuf messages become domain objects and back.

Servicers and clients hand pb2 messages here and get numpy arrays and crypto
dataclasses out, with shapes and lengths validated, so a malformed message fails
with a message that says what was wrong instead of deep inside numpy or torch.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
import numpy as np

from fedscore.api.v1 import common_pb2, psi_pb2
from fedscore.crypto.primitives import Direction, SealedBox
from fedscore.crypto.psi import Blinded, Done, DoubleBlinded, Hello, PsiMessage, PsiProtocolError
from fedscore.errors import FedscoreError

PsiStep = TypeVar("PsiStep", psi_pb2.IntersectRequest, psi_pb2.IntersectResponse)

_F32 = np.dtype("<f4")
_U32 = np.dtype("<u4")


class WireError(FedscoreError, ValueError):
    """A message from a peer that does not have the expected shape."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def tensor_to_pb(array: np.ndarray) -> common_pb2.Tensor:
    """A float32 tensor message of ``array`` (little-endian, C order)."""
    data = np.ascontiguousarray(array, dtype=_F32)
    return common_pb2.Tensor(shape=list(data.shape), data=data.tobytes())


def tensor_from_pb(msg: common_pb2.Tensor, *, rows: int | None = None,
                   name: str = "tensor") -> np.ndarray:
    """Decode a float32 tensor; ``rows`` is the expected first dimension, if known.

    Every value must be finite: a NaN or infinite gradient or embedding from a peer
    would be stepped on, committed and averaged into everyone's model (issue 15), so it
    is refused here, where every received tensor passes, with ``name`` in the error."""
    shape = tuple(int(s) for s in msg.shape)
    expected = int(np.prod(shape)) * _F32.itemsize if shape else 0
    if len(msg.data) != expected:
        raise WireError(f"{name} of shape {shape} needs {expected} bytes, got {len(msg.data)}")
    if rows is not None and (not shape or shape[0] != rows):
        raise WireError(f"{name} has shape {shape}, expected {rows} rows")
    if not shape:
        return np.zeros(0, _F32)
    out = np.frombuffer(msg.data, dtype=_F32).reshape(shape)
    if not np.isfinite(out).all():
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        raise WireError(f"{name} has {bad} NaN or infinite values of {out.size}; every "
                        "tensor must be finite")
    return out


def handles_to_bytes(handles: np.ndarray) -> bytes:
    """Per-session handles as little-endian uint32 bytes."""
    return np.ascontiguousarray(handles, dtype=_U32).tobytes()


def handles_from_bytes(data: bytes, *, limit: int) -> np.ndarray:
    """Decode per-session handles and check each is below ``limit`` (the intersection size)."""
    if len(data) % _U32.itemsize:
        raise WireError(f"handles field has {len(data)} bytes, not a multiple of 4")
    handles = np.frombuffer(data, dtype=_U32).astype(np.int64)
    if handles.size and int(handles.max()) >= limit:
        raise WireError(f"handle {int(handles.max())} is outside the intersection (size {limit})")
    return handles


def sealed_to_pb(box: SealedBox) -> common_pb2.Sealed:
    """A sealed box as its wire message."""
    return common_pb2.Sealed(
        session_id=box.session_id,
        round=box.round,
        batch=box.batch,
        direction=common_pb2.Direction.ValueType(int(box.direction)),
        seq=box.seq,
        ciphertext=box.ciphertext,
    )


def sealed_from_pb(msg: common_pb2.Sealed) -> SealedBox:
    """The sealed box of a wire message; WireError when a field is out of range."""
    try:
        direction = Direction(int(msg.direction))
    except ValueError:
        raise WireError(f"sealed payload has unknown direction {int(msg.direction)}") from None
    return SealedBox(
        session_id=msg.session_id,
        round=msg.round,
        batch=msg.batch,
        direction=direction,
        seq=msg.seq,
        ciphertext=msg.ciphertext,
    )


def psi_to_pb(msg: PsiMessage, cls: type[PsiStep]) -> PsiStep:
    """Wrap a PSI engine message in a request or a response (their oneofs are the same)."""
    if isinstance(msg, Hello):
        return cls(hello=psi_pb2.PsiHello(party=msg.party, set_size=msg.set_size,
                                          nonce=msg.nonce, protocol_version=msg.protocol_version))
    if isinstance(msg, Blinded):
        return cls(blinded=psi_pb2.PsiPoints(offset=msg.offset, points=msg.points))
    if isinstance(msg, DoubleBlinded):
        return cls(double_blinded=psi_pb2.PsiPoints(offset=msg.offset, points=msg.points))
    return cls(done=psi_pb2.PsiDone(intersection_size=msg.intersection_size,
                                    intersection_digest=msg.intersection_digest))


def psi_from_pb(msg: psi_pb2.IntersectRequest | psi_pb2.IntersectResponse) -> PsiMessage:
    """The PSI engine message a request or response carries; PsiProtocolError if none."""
    step = msg.WhichOneof("step")
    if step == "hello":
        h = msg.hello
        return Hello(h.party, h.set_size, h.nonce, h.protocol_version)
    if step == "blinded":
        return Blinded(msg.blinded.offset, msg.blinded.points)
    if step == "double_blinded":
        return DoubleBlinded(msg.double_blinded.offset, msg.double_blinded.points)
    if step == "done":
        return Done(msg.done.intersection_size, msg.done.intersection_digest)
    raise PsiProtocolError(f"{type(msg).__name__} has no step set")
