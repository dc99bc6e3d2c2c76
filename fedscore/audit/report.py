"""``fedscore audit report``: what crossed which boundary, rendered for a privacy reviewer.

:func:`fedscore.audit.verify.verify_ledgers` says whether the ledgers can be trusted; the
report turns the same ledgers (and, when given, the platform's refusal log, a run's privacy
accounting and the leakage benchmark's output) into one self-contained HTML page and the
same content as Markdown: parties, a data-flow diagram (inline SVG, no script, no external
font, style or image, so it opens offline and prints), traffic with its protection,
intersection sizes, online scoring per bank, the privacy budget and the leakage measured.

This module runs the steps in order: verify (:mod:`fedscore.audit.verify`), read the inputs
(:mod:`fedscore.audit.data`), lay out the blocks (:mod:`fedscore.audit.document`, with
:mod:`fedscore.audit.diagram`), render (:mod:`fedscore.audit.render`) and write both files.
The command is :mod:`fedscore.cli.audit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedscore.atomic import atomic_write
from fedscore.audit.data import ReportData, build_report
from fedscore.audit.findings import AuditReport
from fedscore.audit.render import render_html, render_markdown
from fedscore.audit.verify import verify_ledgers
from fedscore.federation.provision import load_kit

__all__ = ["HTML_FILE", "MARKDOWN_FILE", "audit_and_report", "write_report"]

HTML_FILE = "report.html"
"""The HTML page's name under the output folder."""
MARKDOWN_FILE = "report.md"
"""The Markdown file's name under the output folder."""


def write_report(data: ReportData, out: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` under ``out`` (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / HTML_FILE, out / MARKDOWN_FILE
    atomic_write(html_path, render_html(data).encode("utf-8"))
    atomic_write(md_path, render_markdown(data).encode("utf-8"))
    return html_path, md_path


def audit_and_report(
    folders: Sequence[Path], kit: Path, out: Path, *, platform_state: Path | None = None,
    run_dir: Path | None = None, leakage: Path | None = None,
) -> tuple[AuditReport, list[str], tuple[Path, Path]]:
    """Verify ``folders`` with the keys of ``kit``'s manifest and write the reviewer's
    report (HTML, Markdown) under ``out``: (what verification found, warnings, paths)."""
    loaded = load_kit(kit)
    peers = loaded.peers
    keys = {name: p.verify_key for name, p in peers.items()}
    report = verify_ledgers(folders, loaded.ledger_keys())
    data = build_report(
        federation=loaded.federation, parties={n: p.role for n, p in peers.items()},
        keys=keys, folders=folders, audit=report, kit=kit, platform_state=platform_state,
        run_dir=run_dir, leakage=leakage,
    )
    return report, list(data.warnings), write_report(data, out)
