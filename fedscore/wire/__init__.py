"""How the nodes talk: protobuf <-> domain conversion, the mTLS gRPC transport, asyncio
helpers, error-to-status mapping and request batching. The generated wire types stay in
``fedscore.api.v1`` (``make proto``).

``serde`` converts between protobuf messages and fedscore's own types, ``transport``
builds mTLS servers and channels from a startup kit, ``aio`` the ``grpc.aio`` channel
(ledgered like the sync one), ``status`` maps :class:`~fedscore.errors.FedscoreError`
to a gRPC status on every server, ``health`` gives every server the health service,
reflection and the gate that keeps its services closed until its node has loaded,
``batching`` lets concurrent callers share one call
(threads or asyncio), ``observe`` counts and times every call a server serves (metrics,
DEBUG log lines), ``limits`` bounds what one request and one peer may cost a server
(size bounds, per-peer work classes, stream deadlines, admission).

May import: ``fedscore.ledger``, ``fedscore.federation``, ``fedscore.ml``,
``fedscore.data``, ``fedscore.crypto`` and the bottom layer (``fedscore.api``,
``fedscore.errors``, ``fedscore.atomic``, ``fedscore.ops``); never ``fedscore.audit``,
its independent neighbour, nor a room above or a party package.

New gRPC plumbing shared by the nodes (a channel option, an interceptor, a conversion)
goes here; a new message goes into ``proto/`` first. This package imports nothing:
import from the submodule.
"""

__all__ = ["aio", "batching", "health", "limits", "observe", "serde", "status", "transport"]
