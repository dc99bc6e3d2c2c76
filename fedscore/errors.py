"""One error base for all of fedscore.

Every error a node raises on purpose derives from :class:`FedscoreError`, which carries
the gRPC status code a server answers with when the error ends a call. Servers map
errors to status in one place (:mod:`fedscore.wire.status`), and clients that retry
decide on that code, never on the text of a message. The message of a
``FedscoreError`` is written to be safe to send to the peer: it names files, keys,
fields and counts, never a raw customer id or feature value.

Domain errors keep their older builtin base as a second base (``class DataError
(FedscoreError, ValueError)``) so ``except ValueError`` in callers still holds.
"""

from __future__ import annotations

import grpc

__all__ = ["FedscoreError"]


class FedscoreError(Exception):
    """Base of every deliberate fedscore error; ``code`` is the gRPC status it maps to.

    A subclass sets a class-level ``code`` for its usual meaning; one raise may pass
    ``code=`` to be more precise (the platform's unknown session is UNAUTHENTICATED where
    its class says PERMISSION_DENIED).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str = "", *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The text a server sends with the status: safe for the peer to read."""
        return str(self)
