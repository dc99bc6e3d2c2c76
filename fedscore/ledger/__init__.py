"""The audit ledger: every message that crosses a node's boundary, signed and hash-chained.

All ledger code lives here: the format (:mod:`~fedscore.ledger.entry`), reading and
verifying a chain (:mod:`~fedscore.ledger.verify`), the writer
(:mod:`~fedscore.ledger.writer`), the gRPC taps that feed it
(:mod:`~fedscore.ledger.taps`), and Flower's side: entries for Flower messages
(:mod:`~fedscore.ledger.flower`), the bank's ClientApp mod
(:mod:`~fedscore.ledger.client_mod`) and the coordinator's recording Grid
(:mod:`~fedscore.ledger.grid`). How it works and what it costs: ``docs/ledger.md``.

May import the rooms below it (:mod:`fedscore.federation`, :mod:`fedscore.ml`,
:mod:`fedscore.data`, :mod:`fedscore.crypto`, :mod:`fedscore.api`, :mod:`fedscore.errors`,
:mod:`fedscore.atomic`), never :mod:`fedscore.wire` or anything above it, nor a party
package. Import from the submodules; this package imports nothing.
"""

__all__ = ["client_mod", "entry", "flower", "grid", "taps", "verify", "writer"]
