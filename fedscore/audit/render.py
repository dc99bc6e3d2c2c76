"""The audit report's two renderings: one self-contained HTML page, and Markdown.

Both walk the same blocks (:func:`fedscore.audit.document.document`), so they show the same
content. The HTML page has inline CSS and the inline SVG diagram, no script, nothing fetched
(a Content-Security-Policy says so), so it opens offline and prints; the Markdown shows the
diagram as a mermaid block and a table of edges. Everything read from a file is escaped, for
HTML and for Markdown (and for the HTML that Markdown lets through).
"""

from __future__ import annotations

import html

from fedscore.audit.data import ReportData, kind_info
from fedscore.audit.diagram import edges
from fedscore.audit.document import (
    Banner,
    Bullets,
    Cell,
    Diagram,
    Heading,
    Inline,
    Para,
    Styled,
    Table,
    document,
)
from fedscore.audit.formatting import escape, human_bytes

__all__ = ["CSS", "render_html", "render_markdown"]


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
  color: #111; margin: 2rem auto; max-width: 1200px; padding: 0 1.5rem; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .5rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem;
  margin-top: 2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
.banner { border-radius: 6px; padding: .8rem 1.1rem; margin: 1rem 0; border: 2px solid; }
.banner.ok { background: #e9f6ec; border-color: #17703a; color: #0d4a25; }
.banner.bad { background: #fde8e8; border-color: #c00000; color: #8b0000; }
.banner strong { font-size: 1.25rem; display: block; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
th, td { border: 1px solid #c8c8c8; padding: .25rem .5rem; vertical-align: top;
  text-align: left; }
th { background: #f0f0f0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.traffic td:nth-child(3) { white-space: nowrap; }
.banner span { font-weight: normal; }
tr:nth-child(even) td { background: #fafafa; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .85em;
  overflow-wrap: anywhere; }
.ok { color: #17703a; font-weight: 600; }
.bad { color: #c00000; font-weight: 600; }
.warn { color: #a35200; font-weight: 600; }
.muted { color: #666; }
.diagram { overflow-x: auto; border: 1px solid #ddd; padding: .5rem; margin: .6rem 0; }
.diagram svg { max-width: 100%; height: auto; display: block; }
ul { padding-left: 1.4rem; }
li { margin: .15rem 0; }
@media print {
  body { margin: 0; max-width: none; font-size: 10pt; }
  .diagram { overflow: visible; border: none; }
  h2 { break-after: avoid; }
  table, .diagram, .banner { break-inside: avoid; }
  tr:nth-child(even) td { background: none; }
}
"""
"""The page's only style, inline (nothing fetched); print rules keep tables whole."""


def _html_inline(part: Inline) -> str:
    """One inline part as escaped HTML; a style becomes a tag or a CSS class."""
    if isinstance(part, str):
        return escape(part)
    if part.style == "code":
        return f"<code>{escape(part.text)}</code>"
    if part.style == "strong":
        return f"<strong>{escape(part.text)}</strong>"
    if not part.style:
        return escape(part.text)
    return f'<span class="{part.style}">{escape(part.text)}</span>'


def _html_cell(cell: Cell) -> str:
    """A table cell's parts as HTML."""
    if isinstance(cell, str | Styled):
        return _html_inline(cell)
    return "".join(_html_inline(p) for p in cell)


def render_html(data: ReportData) -> str:
    """One self-contained page: inline CSS and SVG, no script, nothing fetched."""
    body: list[str] = []
    for b in document(data):
        if isinstance(b, Heading):
            anchor = f' id="{escape(b.anchor)}"' if b.anchor else ""
            body.append(f"<h{b.level}{anchor}>{escape(b.text)}</h{b.level}>")
        elif isinstance(b, Banner):
            cls = "ok" if b.ok else "bad"
            body.append(f'<div class="banner {cls}" role="status"><strong>{escape(b.title)}'
                        f"</strong><span>{escape(b.detail)}</span></div>")
        elif isinstance(b, Para):
            body.append("<p>" + "".join(_html_inline(p) for p in b.parts) + "</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(
                "<li>" + "".join(_html_inline(p) for p in item) + "</li>" for item in b.items
            ) + "</ul>")
        elif isinstance(b, Table):
            cls = f' class="{escape(b.css)}"' if b.css else ""
            head = "".join(
                f'<th{" class=" + chr(34) + "num" + chr(34) if i in b.numeric else ""}>'
                f"{escape(h)}</th>" for i, h in enumerate(b.headers))
            rows = "".join(
                "<tr>" + "".join(
                    f'<td{" class=" + chr(34) + "num" + chr(34) if i in b.numeric else ""}>'
                    f"{_html_cell(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                for r in b.rows)
            body.append(f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{rows}"
                        "</tbody></table>")
        elif isinstance(b, Diagram):
            body.append(f'<div class="diagram">{b.svg}</div>')
    title = f"fedscore audit report: {data.federation}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]#|"})


def _md_text(s: str) -> str:
    """Escaped for Markdown, and for the HTML that Markdown lets through."""
    return html.escape(s, quote=False).translate(_MD_SPECIAL).replace("\n", " ")


def _md_inline(part: Inline) -> str:
    """One inline part as Markdown; bad, warn and strong become bold."""
    if isinstance(part, str):
        return _md_text(part)
    if part.style == "code":
        text = html.escape(part.text, quote=False).replace("|", "&#124;").replace("`", "'")
        return f"<code>{text}</code>" if "&" in text else f"`{text}`"
    if part.style in ("bad", "strong", "warn"):
        return f"**{_md_text(part.text)}**"
    return _md_text(part.text)


def _md_cell(cell: Cell) -> str:
    """A table cell's parts as Markdown."""
    if isinstance(cell, str | Styled):
        return _md_inline(cell)
    return "".join(_md_inline(p) for p in cell)


def render_markdown(data: ReportData) -> str:
    """The same blocks as the HTML; the diagram as a mermaid block and a table of edges."""
    out: list[str] = []
    for b in document(data):
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + _md_text(b.text))
        elif isinstance(b, Banner):
            mark = "✅" if b.ok else "❌"
            out.append(f"> {mark} **{_md_text(b.title)}**: {_md_text(b.detail)}")
        elif isinstance(b, Para):
            out.append("".join(_md_inline(p) for p in b.parts))
        elif isinstance(b, Bullets):
            out.append("\n".join("- " + "".join(_md_inline(p) for p in item)
                                 for item in b.items))
        elif isinstance(b, Table):
            align = ["---:" if i in b.numeric else "---" for i in range(len(b.headers))]
            lines = ["| " + " | ".join(_md_text(h) for h in b.headers) + " |",
                     "| " + " | ".join(align) + " |"]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Diagram):
            out.append("```mermaid\n" + b.mermaid + "\n```")
            rows = [[e.sender, e.receiver, ", ".join(k for k, _, _ in e.kinds),
                     f"{e.messages:,}", human_bytes(e.bytes),
                     "; ".join(sorted({kind_info(k).protection for k, _, _ in e.kinds}))]
                    for e in edges(data)]
            out.append("\n".join(
                ["| from | to | kinds | messages | size | protection |",
                 "| --- | --- | --- | ---: | ---: | --- |"]
                + ["| " + " | ".join(_md_text(c) for c in r) + " |" for r in rows]))
    return "\n\n".join(out) + "\n"
