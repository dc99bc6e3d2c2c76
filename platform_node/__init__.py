"""The platform node: PSI, split learning, round control, federated averaging and online
embeddings, served over mutual-TLS gRPC (``fedscore platform serve``).

A party package: it may import the shared package (``fedscore.*``), never ``bank_node``
or ``coordinator``. Its servers map errors to gRPC status through
:mod:`fedscore.wire.status`, so its handlers raise errors that carry their own code.
"""

__all__ = [
    "embedding_service",
    "federation",
    "federation_service",
    "model_store",
    "psi_service",
    "server",
    "sessions",
    "split_service",
]
