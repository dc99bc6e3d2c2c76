"""How sizes, times and numbers read in the audit report, the same in every view.

The diagram (:mod:`fedscore.audit.diagram`), the document (:mod:`fedscore.audit.document`)
and the renderers (:mod:`fedscore.audit.render`) all format through these, so a figure reads
the same in the SVG, the HTML tables and the Markdown; :func:`escape` is the one HTML escape
for everything read from a file.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

__all__ = ["escape", "fnum", "fsci", "human_bytes", "when"]


def human_bytes(n: int) -> str:
    """1,023 B, 1.5 KiB, 12.3 MiB: what a person reads at a glance (exact bytes in tables)."""
    if n < 1024:
        return f"{n:,} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:,.1f} {unit}"
    raise AssertionError("unreachable")


def when(t: float | None) -> str:
    """A time as a reader of the report sees it (UTC, to the second); ``?`` when unknown."""
    if t is None:
        return "?"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fnum(v: float | None, digits: int = 3) -> str:
    """A measured value to ``digits`` decimals; a dash when it was not measured."""
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fsci(v: float | None) -> str:
    """A small probability (a DP δ) as ``1e-05``, others as ``%g``; a dash when unknown."""
    if v is None:
        return "–"
    return f"{v:.0e}" if v and abs(v) < 1e-3 else f"{v:g}"


def escape(s: object) -> str:
    """``str(s)`` escaped for HTML text and attribute values (quotes too)."""
    return html.escape(str(s), quote=True)
