"""The platform's PSI endpoint runs PSI with banks only (over real mTLS)."""

from __future__ import annotations

import grpc
import pytest

from bank_node.psi_client import run_psi
from fedscore.crypto.psi import PsiError
from fedscore.wire.transport import secure_channel
from platform_node.server import PlatformNode
from tests.conftest import Federation, LivePlatform


@pytest.mark.parametrize("party", ["coordinator", "platform"])
def test_only_a_bank_may_run_psi_with_the_platform(
    federation: Federation, live_platform: LivePlatform, party: str
) -> None:
    """The intersection is what PSI reveals: a party of the federation that is not a bank
    (the coordinator, the platform's own certificate) learns nothing and opens no session;
    the same ids from a bank are aligned."""
    node = live_platform.node
    assert isinstance(node, PlatformNode)
    ids = node.table.ids[:50]
    with (
        secure_channel(live_platform.address, federation.kit(party), "platform") as channel,
        pytest.raises(PsiError) as refused,
    ):
        run_psi(channel, ids, party=party)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert f"{party!r} has role" in refused.value.message
    assert len(node.sessions) == 0
    with secure_channel(live_platform.address, federation.kit("bank-1"), "platform") as channel:
        assert run_psi(channel, ids, party="bank-1").size == 50
    assert len(node.sessions) == 1
