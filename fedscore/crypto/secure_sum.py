"""Exact sums of real numbers through Flower's SecAgg+, for the federation's statistics.

SecAgg+ adds integer vectors modulo 2**32 after quantising each float to one of
``quantization_range`` steps of ``2 * clipping_range / quantization_range``. A model
update tolerates that rounding; summary statistics whose magnitudes span twenty orders
(a count, a sum of squared balances) do not. With ``clipping_range = 2**21`` and
``quantization_range = 2**22`` (:data:`SECAGG_CLIPPING_RANGE`,
:data:`SECAGG_QUANTIZATION_RANGE`) the step is exactly 1, every integer in
[-2**21, 2**21] is carried without rounding, and the stochastic rounding never moves
one. Each party reports weight 1 (``num_examples == max_weight``), so nothing is
rescaled either.

On that channel a real number ``v`` travels as the fixed-point integer
``round(v * 2**FRACTION_BITS)``, offset by ``2**(BITS - 11)`` to make it non-negative
and cut into :data:`LIMBS` base-2**20 digits. Digit sums of up to
:data:`MAX_PARTIES` parties stay inside SecAgg+'s modulus and the sum is reassembled
exactly with Python integers; the only rounding is each party's own, once.

A 32-byte tag (the parties' layout digest) rides along as sixteen 16-bit digits: the
sum of identical tags is ``parties * tag``, anything else shows parties that disagree
on what the vector means.
"""

from __future__ import annotations

import math

import grpc
import numpy as np

from fedscore.errors import FedscoreError

FRACTION_BITS = 64
LIMB_BITS = 20
LIMBS = 16
BITS = LIMB_BITS * LIMBS  # 320
MAX_PARTIES = 1023  # n * 2**22 (SecAgg+'s weight factor) must stay below 2**32
_OFFSET = 1 << (BITS - 11)  # headroom for MAX_PARTIES offsets in BITS bits
LIMIT = math.ldexp(1.0, BITS - 11 - FRACTION_BITS)  # |v| must stay below: 2**245
TAG_BYTES = 32
_TAG_DIGITS = TAG_BYTES // 2

SECAGG_CLIPPING_RANGE = 2.0**21
SECAGG_QUANTIZATION_RANGE = 2**22
SECAGG_MAX_WEIGHT = 1.0


class SecureSumError(FedscoreError, ValueError):
    """A value cannot be encoded exactly, or a summed vector is not a sum of encodings."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def encoded_size(n_values: int) -> int:
    """Length of the vector :func:`encode` makes of ``n_values`` numbers (limbs and tag)."""
    return n_values * LIMBS + _TAG_DIGITS


def encode(values: np.ndarray, tag: bytes) -> np.ndarray:
    """``values`` (float64 [m]) and ``tag`` as a float64 vector of small non-negative
    integers [m * LIMBS + 16], ready to be a SecAgg+ "model update" of weight 1."""
    if len(tag) != TAG_BYTES:
        raise SecureSumError(f"tag: {len(tag)} bytes, expected {TAG_BYTES}")
    flat = np.asarray(values, np.float64).ravel()
    out = np.empty(encoded_size(flat.size), np.float64)
    mask = (1 << LIMB_BITS) - 1
    for i, v in enumerate(flat.tolist()):
        if not math.isfinite(v) or abs(v) >= LIMIT:
            raise SecureSumError(
                f"value {i} = {v!r}: a secure sum carries finite values below 2**245 only"
            )
        u = round(math.ldexp(v, FRACTION_BITS)) + _OFFSET
        for k in range(LIMBS):
            out[i * LIMBS + k] = (u >> (LIMB_BITS * k)) & mask
    out[flat.size * LIMBS :] = np.frombuffer(tag, ">u2")
    return out


def decode(summed: np.ndarray, parties: int) -> tuple[np.ndarray, bytes]:
    """The element-wise sum of ``parties`` encodings back to (float64 sums, the common
    tag). Raises :class:`SecureSumError` when the parties' tags differ."""
    if not 1 <= parties <= MAX_PARTIES:
        raise SecureSumError(f"parties = {parties}; expected 1..{MAX_PARTIES}")
    digits = np.asarray(summed, np.float64).ravel()
    n, rest = divmod(digits.size - _TAG_DIGITS, LIMBS)
    if digits.size < _TAG_DIGITS or rest:
        raise SecureSumError(f"a summed vector of {digits.size} elements is not an encoding")
    ints = [round(d) for d in digits.tolist()]
    if any(abs(d - i) > 1e-3 or i < 0 for d, i in zip(digits.tolist(), ints, strict=True)):
        raise SecureSumError("a summed vector holds non-integers: not a sum of encodings")
    tag_sums = ints[n * LIMBS :]
    if any(t % parties or t // parties > 0xFFFF for t in tag_sums):
        raise SecureSumError(
            f"the {parties} parties' tags differ: they did not encode the same layout"
        )
    tag = np.array([t // parties for t in tag_sums], ">u2").tobytes()
    sums = np.empty(n, np.float64)
    for i in range(n):
        total = sum(ints[i * LIMBS + k] << (LIMB_BITS * k) for k in range(LIMBS))
        sums[i] = math.ldexp(float(total - parties * _OFFSET), -FRACTION_BITS)
    return sums, tag
