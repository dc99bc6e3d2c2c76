"""``grpc.aio`` plumbing: a mutual-TLS aio channel, recorded in the audit ledger.

The bank's scoring server calls the platform from an event loop (a sync channel costs
several times the CPU per call). Its messages must reach the ledger exactly as a sync
channel's do through :class:`fedscore.ledger.LedgerClientTap`: same kinds, purposes,
rounds, rows and bytes (``message.SerializeToString()``), so ``fedscore audit verify``
matches them with the platform's :class:`fedscore.ledger.LedgerTap` entries.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import grpc
import grpc.aio

from fedscore.interceptors import Flow
from fedscore.ledger import (
    HEALTH_METHODS,
    KindOf,
    Ledger,
    PurposeOf,
    _Describer,
    _serialized,
    default_kind,
    default_purpose,
    default_round,
    default_rows,
)
from fedscore.provision import StartupKit
from fedscore.transport import channel_credentials, channel_options


class AioLedgerClientTap(grpc.aio.UnaryUnaryClientInterceptor):
    """Records what an aio client sends to and receives from ``peer`` (the server's party).

    Unary-unary calls only (the only shape the scoring path uses); use
    :func:`secure_aio_channel` for channels meant for them. The request is recorded before
    it is handed to gRPC, the response when it arrived (a failed call records only its
    request, as the sync tap does). ``wait`` as for :class:`fedscore.ledger.LedgerTap`.
    """

    def __init__(
        self,
        ledger: Ledger,
        peer: str,
        kind_of: KindOf = default_kind,
        purpose_of: PurposeOf = default_purpose,
        *,
        round_of: Callable[[object], int] = default_round,
        rows_of: Callable[[object], int] = default_rows,
        ignore: Collection[str] = (),
        wait: bool = False,
    ) -> None:
        self._d = _Describer(ledger, kind_of, purpose_of, round_of, rows_of, wait)
        self.peer = peer
        self._ignore = frozenset(ignore)

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else str(method)
        if method in self._ignore:
            return await continuation(client_call_details, request)
        self._d.record(self.peer, method, Flow.RECEIVED, True, _serialized(request), request)
        call = await continuation(client_call_details, request)
        response = await call  # raises the call's AioRpcError: nothing was received
        self._d.record(self.peer, method, Flow.SENT, False, _serialized(response), response)
        return call


def secure_aio_channel(
    target: str,
    kit: StartupKit,
    server_party: str,
    options: Sequence[tuple[str, Any]] = (),
    *,
    ledger: Ledger | None = None,
) -> grpc.aio.Channel:
    """:func:`fedscore.transport.secure_channel` for ``grpc.aio``: create it on the event
    loop that will use it. With ``ledger``, unary-unary calls are recorded (health probes
    aside)."""
    interceptors = ([AioLedgerClientTap(ledger, server_party, ignore=HEALTH_METHODS)]
                    if ledger is not None else None)
    return grpc.aio.secure_channel(
        target, channel_credentials(kit), options=channel_options(kit, server_party, options),
        interceptors=interceptors,
    )
