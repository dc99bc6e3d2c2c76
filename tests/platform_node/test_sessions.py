"""The platform's session registry: a session is made for a bank of the manifest only."""

from __future__ import annotations

import numpy as np
import pytest

from fedscore.crypto.psi import PsiResult
from platform_node.sessions import SessionError, SessionRegistry
from tests.conftest import Federation


@pytest.mark.parametrize("peer", ["coordinator", "platform", "bank-9"])
def test_a_session_is_stored_for_a_bank_of_the_manifest_only(
    federation: Federation, peer: str
) -> None:
    """The second line behind the PSI servicer's role check: what finished PSI with a
    party that is not a bank of the manifest opens no session."""
    registry = SessionRegistry(federation.kit("platform"))
    result = PsiResult(session_id=bytes(range(16)), rows=np.arange(3), other_size=3)
    with pytest.raises(SessionError, match=f"{peer!r} is not a bank") as refused:
        registry.on_psi_complete(peer, result)
    assert refused.value.code.name == "PERMISSION_DENIED"
    assert len(registry) == 0
    registry.on_psi_complete("bank-1", result)
    assert registry.get(result.session_id, "bank-1").psi is result
