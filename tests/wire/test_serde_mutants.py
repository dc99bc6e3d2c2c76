"""serde's tensor checks that mutation testing (benchmarks/mutation.py) found no test for:
each test fails when one of them is bent."""

from __future__ import annotations

import numpy as np
import pytest

from fedscore.api.v1 import common_pb2
from fedscore.wire import serde


def test_a_tensor_of_no_dimensions_is_empty_and_needs_no_bytes() -> None:
    empty = serde.tensor_from_pb(common_pb2.Tensor(shape=[], data=b""))
    assert empty.shape == (0,) and empty.dtype == np.float32
    with pytest.raises(serde.WireError, match="needs 0 bytes, got 4"):
        serde.tensor_from_pb(common_pb2.Tensor(shape=[], data=b"\0" * 4))


@pytest.mark.parametrize("rows", [2, 4])
def test_a_tensor_must_have_exactly_the_expected_rows(rows: int) -> None:
    msg = serde.tensor_to_pb(np.ones((3, 2), np.float32))
    assert serde.tensor_from_pb(msg, rows=3).shape == (3, 2)
    with pytest.raises(serde.WireError, match=rf"shape \(3, 2\), expected {rows} rows"):
        serde.tensor_from_pb(msg, rows=rows)
    with pytest.raises(serde.WireError, match="expected 3 rows"):
        serde.tensor_from_pb(common_pb2.Tensor(shape=[], data=b""), rows=3)
