"""fedscore's shared package: the code every party runs, in rooms by concern.

Rooms, top to bottom (the layers contract in pyproject.toml); a room may import only
rooms below it, rooms on one line are independent of each other, and none imports a
party package (``platform_node``, ``bank_node``, ``coordinator``) except ``cli``,
which sits above them:

1. ``cli``: the ``fedscore`` command and its sub-apps, the demo and the launchers.
2. the party packages (outside this package) | ``research``: baselines and leakage
   attacks that no node runs, beside the parties so that no node can import them.
3. ``audit`` (verifying the nodes' ledgers, the reviewer's report) | ``wire``
   (protobuf <-> domain, mTLS gRPC transport, asyncio, status mapping, batching).
4. ``ledger``: the signed audit ledger, its writer and its gRPC and Flower taps.
5. ``federation``: run settings, provisioning and kits, releases, pooled statistics.
6. ``ml``: the split model, its torch-free forward pass, training, metrics.
7. ``data`` (schemas, tables, preprocessing, scenarios) | ``crypto`` (primitives, the
   only importer of ``cryptography.hazmat``, and the private protocols: PSI, secure
   sums, differential privacy, consent).
8. ``api`` (generated wire types) | ``errors`` (:class:`~fedscore.errors.FedscoreError`)
   | ``atomic`` (crash-safe writes): import nothing of fedscore.

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
