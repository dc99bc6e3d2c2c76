"""The scoring server's own-party check, on the branches mutual TLS makes unreachable.

Through the real server (tests/bank_node/test_scoring.py) another bank's certificate is
refused with PERMISSION_DENIED; here the check is driven without TLS, so a connection
with no single verified certificate name must be UNAUTHENTICATED whatever else it says.
"""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import pytest

from bank_node.scoring_service import ScoringServicer


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth
        self.status: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise _Aborted(details)


def _check(auth: dict[str, list[bytes]]) -> tuple[grpc.StatusCode, str] | None:
    servicer = ScoringServicer(scorer=None, party="bank-1",  # type: ignore[arg-type]
                               pool=futures.ThreadPoolExecutor(1))
    context = _Context(auth)
    try:
        asyncio.run(servicer._only_own_party(context))
    except _Aborted:
        assert context.status is not None
    return context.status


def _ssl(*names: bytes) -> dict[str, list[bytes]]:
    return {"transport_security_type": [b"ssl"], "x509_common_name": list(names)}


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        ({}, grpc.StatusCode.UNAUTHENTICATED),
        ({"transport_security_type": [b"insecure"], "x509_common_name": [b"bank-1"]},
         grpc.StatusCode.UNAUTHENTICATED),
        (_ssl(), grpc.StatusCode.UNAUTHENTICATED),
        (_ssl(b"bank-1", b"bank-2"), grpc.StatusCode.UNAUTHENTICATED),
        (_ssl(b"bank-2"), grpc.StatusCode.PERMISSION_DENIED),
        (_ssl(b"platform"), grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=["nothing", "plaintext", "no-name", "two-names", "another-bank", "the-platform"],
)
def test_only_the_banks_own_verified_certificate_passes(
    auth: dict[str, list[bytes]], code: grpc.StatusCode
) -> None:
    status = _check(auth)
    assert status is not None and status[0] == code
    assert _check(_ssl(b"bank-1")) is None
