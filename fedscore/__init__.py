"""fedscore's shared package: the code every party runs, in rooms by concern.

Rooms, top to bottom; a room may import only rooms below it, and none imports a
party package (``platform_node``, ``bank_node``, ``coordinator``) except ``cli``,
which sits above them:

1. ``cli``: the ``fedscore`` command and its sub-apps.
2. (the party packages, outside this package)
3. ``research``: baselines and leakage attacks that no node runs.
4. ``audit``: verifying the nodes' ledgers and the reviewer's report.
5. ``wire``: protobuf <-> domain conversion, mTLS gRPC transport, asyncio helpers.
6. ``ledger``: the signed audit ledger, its writer and its gRPC and Flower taps.
7. ``federation``: run settings, provisioning and kits, releases, federated statistics.
8. ``ml`` (model, training, metrics) and ``data`` (schemas, tables, preprocessing,
   scenarios); ``ml`` builds on ``data``, never the reverse.
9. ``crypto``: primitives (the only importer of ``cryptography.hazmat``) and the
   private protocols (PSI, secure sums, differential privacy, consent).
10. ``api`` (generated wire types), ``errors`` (:class:`~fedscore.errors.FedscoreError`)
    and ``atomic`` (crash-safe writes): import nothing of fedscore.

Code two parties share moves down into the room of its concern; code one party runs
stays in that party's package. Each room's ``__init__`` says what goes in it, and
imports nothing: callers import from the submodule. See docs/architecture.md.
"""

__all__ = [
    "api",
    "atomic",
    "audit",
    "cli",
    "crypto",
    "data",
    "errors",
    "federation",
    "ledger",
    "ml",
    "research",
    "wire",
]
