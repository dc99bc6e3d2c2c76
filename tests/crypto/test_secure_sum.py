import hashlib

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from fedscore.crypto.secure_sum import (
    LIMIT,
    SECAGG_CLIPPING_RANGE,
    SECAGG_QUANTIZATION_RANGE,
    SecureSumError,
    decode,
    encode,
)

TAG = hashlib.sha256(b"layout").digest()


def through_secagg_quantisation(vectors: list[np.ndarray]) -> np.ndarray:
    """What SecAgg+ does to weight-1 vectors: quantise (stochastically), add mod 2**32,
    dequantise and divide by the summed weights (as its workflow does)."""
    q = [quantize([v], SECAGG_CLIPPING_RANGE, SECAGG_QUANTIZATION_RANGE)[0] for v in vectors]
    total = sum(x.astype(np.int64) for x in q) % 2**32
    deq = dequantize([total], SECAGG_CLIPPING_RANGE, SECAGG_QUANTIZATION_RANGE)[0]
    deq += -(len(vectors) - 1) * SECAGG_CLIPPING_RANGE
    return deq / len(vectors) * len(vectors)  # the workflow's mean, times the parties


def test_sums_are_exact_across_twenty_orders_of_magnitude() -> None:
    rng = np.random.default_rng(0)
    parties = [np.array([3.0, 1e-9, -2.5e14, 7.1e19, -1e-3]) * rng.uniform(0.5, 2, 5)
               for _ in range(5)]
    sums, tag = decode(through_secagg_quantisation([encode(p, TAG) for p in parties]), 5)
    assert tag == TAG
    want = np.sum(parties, axis=0)
    np.testing.assert_allclose(sums, want, rtol=1e-15, atol=2**-60)


def test_disagreeing_tags_and_bad_values_are_refused() -> None:
    a = encode(np.ones(3), TAG)
    b = encode(np.ones(3), hashlib.sha256(b"other").digest())
    with pytest.raises(SecureSumError, match="tags differ"):
        decode(a + b, 2)
    with pytest.raises(SecureSumError, match="value 1"):
        encode(np.array([0.0, np.nan]), TAG)
    with pytest.raises(SecureSumError, match="value 0"):
        encode(np.array([LIMIT]), TAG)
    with pytest.raises(SecureSumError, match="not an encoding"):
        decode(a[:-1], 1)
    with pytest.raises(SecureSumError, match="non-integers"):
        decode(a + 0.5, 1)


def test_each_digit_stays_inside_secaggs_range() -> None:
    v = encode(np.array([-(LIMIT * 0.999), LIMIT * 0.999, 0.0]), TAG)
    assert v.min() >= 0 and v.max() < 2**20
    assert np.array_equal(v, np.round(v))
