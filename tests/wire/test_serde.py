"""fedscore.wire.serde's checks of what a peer sends: handles, sealed boxes, PSI steps.

The servers' use of them is tested through the real servers
(tests/platform_node/test_handles.py); these pin the conversions' own refusals.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedscore.api.v1 import common_pb2, psi_pb2
from fedscore.crypto.psi import PsiProtocolError
from fedscore.wire import serde


def test_handles_must_lie_below_the_intersection_size() -> None:
    data = serde.handles_to_bytes(np.array([0, 6, 2]))
    assert serde.handles_from_bytes(data, limit=7).tolist() == [0, 6, 2]
    assert serde.handles_from_bytes(b"", limit=0).size == 0
    for limit in (6, 0):
        with pytest.raises(serde.WireError, match=f"handle 6 is outside the intersection "
                                                  rf"\(size {limit}\)"):
            serde.handles_from_bytes(data, limit=limit)
    with pytest.raises(serde.WireError, match="handle 4294967295 is outside"):
        serde.handles_from_bytes(b"\xff" * 4, limit=7)
    with pytest.raises(serde.WireError, match="not a multiple of 4"):
        serde.handles_from_bytes(data[:-1], limit=7)


def test_a_sealed_box_of_no_known_direction_is_refused() -> None:
    msg = common_pb2.Sealed(session_id=b"s" * 16, direction=common_pb2.Direction.ValueType(3))
    with pytest.raises(serde.WireError, match="unknown direction 3"):
        serde.sealed_from_pb(msg)


def test_a_psi_message_without_a_step_is_a_protocol_error() -> None:
    for empty in (psi_pb2.IntersectRequest(), psi_pb2.IntersectResponse()):
        with pytest.raises(PsiProtocolError, match="has no step set"):
            serde.psi_from_pb(empty)
