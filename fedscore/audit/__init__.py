"""The audit room: checking the nodes' signed ledgers against each other, and the report.

``verify`` checks every chain and signature and pairs both ends of every message; ``report``
turns the same ledgers (and the platform's refusals, a run's privacy accounting, the
leakage measurements) into an HTML and a Markdown report for a privacy reviewer, through
``data`` (what the report shows), ``document`` (its blocks), ``diagram`` (the data-flow SVG)
and ``render`` (HTML and Markdown). ``findings`` holds the types verification and report
share; ``formatting`` how figures read in every view.

Layer: below the command line (:mod:`fedscore.cli.audit` is ``fedscore audit``), the party
packages and :mod:`fedscore.research`; beside :mod:`fedscore.wire`, which it never imports
(a reviewer's tool needs no transport); above the rooms it may import:
:mod:`fedscore.ledger`, :mod:`fedscore.federation`, :mod:`fedscore.ml`,
:mod:`fedscore.data`, :mod:`fedscore.crypto` and the bottom (:mod:`fedscore.errors`,
:mod:`fedscore.atomic`). Inside the room, from the bottom: findings, formatting; verify,
data; diagram; document; render; report. Nothing here imports typer.
"""

__all__ = [
    "data",
    "diagram",
    "document",
    "findings",
    "formatting",
    "render",
    "report",
    "verify",
]
