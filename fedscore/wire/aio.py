"""``grpc.aio`` plumbing: a mutual-TLS aio channel, recorded in the audit ledger.

The bank's scoring server calls the platform from an event loop (a sync channel costs
several times the CPU per call). Its messages reach the ledger exactly as a sync
channel's do, through the same :class:`fedscore.ledger.taps.SerializerTap`: same kinds,
purposes, rounds, rows and bytes, so ``fedscore audit verify`` matches them with the
platform's :class:`fedscore.ledger.taps.LedgerTap` entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from fedscore.federation.provision import StartupKit
from fedscore.ledger.taps import HEALTH_METHODS, SerializerTap, TappedFactories
from fedscore.ledger.writer import Ledger
from fedscore.wire.transport import channel_credentials, channel_options


class AioLedgerChannel(TappedFactories, grpc.aio.Channel):
    """An aio ``channel`` with every message recorded by ``tap``."""

    def __init__(self, channel: grpc.aio.Channel, tap: SerializerTap) -> None:
        self._channel = channel
        self.tap = tap

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The wrapped channel's connectivity."""
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity
                                    ) -> None:
        """Wait until the wrapped channel leaves ``last_observed_state``."""
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Wait until the wrapped channel is ready."""
        await self._channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Close the wrapped channel (``grace`` seconds for calls in flight)."""
        await self._channel.close(grace)

    async def __aenter__(self) -> AioLedgerChannel:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


def secure_aio_channel(
    target: str,
    kit: StartupKit,
    server_party: str,
    options: Sequence[tuple[str, Any]] = (),
    *,
    ledger: Ledger | None = None,
) -> grpc.aio.Channel:
    """:func:`fedscore.wire.transport.secure_channel` for ``grpc.aio``: create it on the event
    loop that will use it. With ``ledger``, every message is recorded (health probes
    aside)."""
    channel = grpc.aio.secure_channel(
        target, channel_credentials(kit), options=channel_options(kit, server_party, options))
    if ledger is None:
        return channel
    return AioLedgerChannel(channel, SerializerTap(ledger, server_party,
                                                   ignore=HEALTH_METHODS))
