"""The audit report's data-flow diagram: one inline SVG, and the same edges in mermaid.

Platform left, banks stacked in the middle, coordinator right, one arrow per boundary and
direction, each labelled with the kinds that crossed it, their volume and their protection
(coloured by :data:`fedscore.audit.data.LEVELS`). The SVG has no script, no external font,
style or image, so the page opens offline and prints; every label is escaped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from fedscore.audit.data import LEVELS, ReportData, kind_info
from fedscore.audit.findings import Traffic
from fedscore.audit.formatting import escape, human_bytes

__all__ = ["Edge", "diagram_mermaid", "diagram_svg", "edges"]


CHAR_W = 7.3  # px per character of 12 px DejaVu Sans Mono (monospace: widths are known)
LH = 16
"""Line height of the labels, px."""
MARGIN = 20
"""Space around the drawing, px."""
FONT = "DejaVu Sans Mono, Menlo, Consolas, Liberation Mono, monospace"
"""Monospace first, so :data:`CHAR_W` holds and the gaps fit the labels."""


@dataclass(frozen=True)
class Edge:
    """One boundary in one direction: the kinds that crossed it, largest first."""

    sender: str
    receiver: str
    kinds: list[tuple[str, Traffic, int]]  # kind, messages/bytes, rows

    @property
    def messages(self) -> int:
        """Messages over every kind on this edge."""
        return sum(t.messages for _, t, _ in self.kinds)

    @property
    def bytes(self) -> int:
        """Bytes over every kind on this edge."""
        return sum(t.bytes for _, t, _ in self.kinds)


def edges(data: ReportData) -> list[Edge]:
    """One edge per (sender, receiver) that carried traffic, from the verified report."""
    by: dict[tuple[str, str], list[tuple[str, Traffic, int]]] = defaultdict(list)
    for (s, r, k), t in data.audit.traffic.items():
        by[(s, r)].append((k, t, data.rows.get((s, r, k), 0)))
    return [Edge(s, r, sorted(ks, key=lambda x: (-x[1].bytes, x[0])))
            for (s, r), ks in sorted(by.items())]


def _edge_label(edge: Edge | None) -> list[tuple[str, str]]:
    """(text, colour) lines: per kind, volume, then its protection."""
    if edge is None:
        return []
    out: list[tuple[str, str]] = []
    for kind, t, rows in edge.kinds:
        info = kind_info(kind)
        vol = f"{kind}: {t.messages:,} msg, {human_bytes(t.bytes)}"
        if rows:
            vol += f", {rows:,} rows"
        out.append((vol, "#111111"))
        # the short form ("mTLS + AES-256-GCM"); the tables give the details in brackets
        out.append(("  " + info.protection.split(" (")[0], LEVELS[info.level][0]))
    return out


def _width(lines: Iterable[tuple[str, str]]) -> float:
    """Width in px of the widest label line."""
    return max((len(t) for t, _ in lines), default=0) * CHAR_W


def _text(x: float, y: float, s: str, *, fill: str = "#111111", anchor: str = "start",
          size: int = 12, weight: str = "normal") -> str:
    """One escaped SVG text element (whitespace kept)."""
    return (f'<text x="{x:.1f}" y="{y:.1f}" fill="{fill}" font-size="{size}" '
            f'font-weight="{weight}" text-anchor="{anchor}" xml:space="preserve">'
            f'{escape(s)}</text>')


def _edge_group(edge: Edge, x1: float, y: float, x2: float, texts: list[str]) -> str:
    """One arrow and its label, grouped and tagged with its two ends."""
    return (
        f'<g class="edge" data-from="{escape(edge.sender)}" data-to="{escape(edge.receiver)}">'
        f'<line x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y:.1f}" stroke="#333333" '
        'stroke-width="1.6" marker-end="url(#arrowhead)"/>' + "".join(texts) + "</g>"
    )


def _label_texts(lines: list[tuple[str, str]], x: float, y_arrow: float, above: bool,
                 anchor: str = "start") -> list[str]:
    """Label lines stacked just above (ending at) or just below the arrow at ``y_arrow``."""
    n = len(lines)
    return [
        _text(x, y_arrow - 7 - (n - 1 - i) * LH if above else y_arrow + 3 + (i + 1) * LH,
              t, fill=colour, anchor=anchor)
        for i, (t, colour) in enumerate(lines)
    ]


def diagram_svg(data: ReportData) -> str:
    """Platform left, banks stacked in the middle, coordinator right; one arrow per
    boundary and direction, each labelled with its kinds, volumes and protection.

    Platform <-> coordinator runs across the top, above the banks; any other boundary
    (a party outside the manifest, bank to bank) is listed under the diagram in red.
    Labels are monospace so their widths are known and the gaps are sized to fit them.
    """
    roles = dict(data.parties)
    all_edges = {(e.sender, e.receiver): e for e in edges(data)}
    platform = next((p for p, r in data.parties if r == "platform"), None)
    coordinator = next((p for p, r in data.parties if r == "coordinator"), None)
    banks = [p for p, r in data.parties if r == "bank"]
    entries = Counter[str]()
    for _, party, n, _ in data.folders:
        if party is not None:
            entries[party] += n
    given = {party for _, party, _, _ in data.folders if party is not None}

    def box_lines(p: str) -> list[str]:
        ledger = f"ledger: {entries[p]:,} entries" if p in given else "no ledger given"
        return [p, roles.get(p, "unknown"), ledger]

    def box_w(p: str) -> float:
        name, _, ledger = box_lines(p)
        return max(150.0, len(name) * 8.6 + 24, len(ledger) * CHAR_W + 20)

    used: set[tuple[str, str]] = set()
    Side = tuple[Edge, list[tuple[str, str]]] | None

    def take(s: str | None, r: str | None) -> Side:
        edge = all_edges.get((s, r)) if s is not None and r is not None else None
        if edge is None:
            return None
        used.add((edge.sender, edge.receiver))
        return edge, _edge_label(edge)

    def lines(side: Side) -> list[tuple[str, str]]:
        return side[1] if side else []

    top_up, top_down = take(platform, coordinator), take(coordinator, platform)
    rows = [(b, take(platform, b), take(b, platform), take(b, coordinator),
             take(coordinator, b)) for b in banks]
    pw = box_w(platform) if platform else 0.0
    bw = max((box_w(b) for b in banks), default=0.0)
    cw = box_w(coordinator) if coordinator else 0.0
    gap1 = max([_width(lines(r[1]) + lines(r[2])) + 24 for r in rows] + [170.0])
    gap2 = (max([_width(lines(r[3]) + lines(r[4])) + 24 for r in rows] + [170.0])
            if coordinator else 0.0)
    span_needed = _width(lines(top_up) + lines(top_down)) + 40
    if coordinator and gap1 + bw + gap2 < span_needed:
        extra = (span_needed - gap1 - bw - gap2) / 2
        gap1, gap2 = gap1 + extra, gap2 + extra
    px = float(MARGIN)
    bx = px + pw + gap1
    cx = bx + bw + gap2
    width = (cx + cw if coordinator else bx + bw) + MARGIN

    out: list[str] = []
    y = float(MARGIN)
    if platform and coordinator and (top_up or top_down):  # the top band
        mid = (px + pw + cx) / 2
        ya = y + max(LH * len(lines(top_up)) + 8, 24)
        yb = ya + 16
        if top_up:
            out.append(_edge_group(top_up[0], px + pw, ya, cx - 2,
                                   _label_texts(top_up[1], mid, ya, True, "middle")))
        if top_down:
            out.append(_edge_group(top_down[0], cx, yb, px + pw + 2,
                                   _label_texts(top_down[1], mid, yb, False, "middle")))
        y = yb + 6 + len(lines(top_down)) * LH + 22
    for bank, p_b, b_p, b_c, c_b in rows:  # one row per bank
        up = max(len(lines(p_b)), len(lines(b_c)))
        down = max(len(lines(b_p)), len(lines(c_b)))
        y1 = y + max(up * LH + 8, 24)
        y2 = y1 + 16
        top = y1 - 24
        out.append(_box(bx, top, bw, 64, box_lines(bank)))
        for side, x, y_arrow, x_end, above in (
            (p_b, px + pw, y1, bx - 2, True), (b_p, bx, y2, px + pw + 2, False),
            (b_c, bx + bw, y1, cx - 2, True), (c_b, cx, y2, bx + bw + 2, False),
        ):
            if side is not None:
                out.append(_edge_group(side[0], x, y_arrow, x_end,
                                       _label_texts(side[1], min(x, x_end) + 12, y_arrow,
                                                    above)))
        y = max(top + 64, y2 + 6 + down * LH) + 20
    if not banks:
        y = max(y, MARGIN + 84.0)
    bottom = y - 10
    if coordinator:
        out.insert(0, _box(cx, MARGIN, cw, bottom - MARGIN, box_lines(coordinator)))
    if platform:
        out.insert(0, _box(px, MARGIN, pw, bottom - MARGIN, box_lines(platform)))
    y = bottom + 28
    for key, e in all_edges.items():  # boundaries the layout has no place for
        if key in used:
            continue
        kinds = ", ".join(f"{k} {t.messages:,} msg {human_bytes(t.bytes)}" for k, t, _ in e.kinds)
        line = (f"also: {e.sender} ({roles.get(e.sender, 'not in the manifest')}) -> "
                f"{e.receiver} ({roles.get(e.receiver, 'not in the manifest')}): {kinds}")
        out.append(f'<g class="edge other" data-from="{escape(e.sender)}" '
                   f'data-to="{escape(e.receiver)}">'
                   + _text(MARGIN, y, line, fill=LEVELS["unknown"][0]) + "</g>")
        width = max(width, MARGIN * 2 + len(line) * CHAR_W)
        y += LH
    y += 8
    for level in ("sealed", "secagg", "transport", "unknown"):  # the legend
        colour, legend = LEVELS[level]
        out.append(f'<rect x="{MARGIN}" y="{y - 10:.1f}" width="12" height="12" '
                   f'fill="{colour}"/>')
        out.append(_text(MARGIN + 18, y, legend, fill="#333333"))
        y += LH + 2
    height = y + MARGIN - 8
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="{FONT}" font-size="12" '
        'role="img" aria-labelledby="dataflow-title">'
        f'<title id="dataflow-title">Data flow of federation {escape(data.federation)}: '
        f'{len(all_edges)} boundary direction(s) with traffic</title>'
        '<defs><marker id="arrowhead" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#333333"/></marker></defs>'
        f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>'
    )
    return head + "".join(out) + "</svg>"


def _box(x: float, y: float, w: float, h: float, lines: list[str]) -> str:
    """A party's box: name, role and ledger line, filled by role (red: not in the manifest)."""
    name, role, ledger = lines
    fill = {"platform": "#eef3fb", "bank": "#eef8f0", "coordinator": "#f6f0fb"}.get(
        role, "#fdeaea")
    cy = y + min(h / 2, 60.0) - 18 if h > 64 else y + 14
    return (
        f'<g class="party"><rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
        f'rx="6" fill="{fill}" stroke="#444444" stroke-width="1.2"/>'
        + _text(x + w / 2, cy + 8, name, anchor="middle", size=14, weight="bold")
        + _text(x + w / 2, cy + 25, role, anchor="middle", fill="#444444")
        + _text(x + w / 2, cy + 41, ledger, anchor="middle", fill="#666666", size=11)
        + "</g>"
    )


def _mermaid_text(s: str) -> str:
    """Mermaid label text: entity codes for what could end the label or become HTML."""
    return (s.replace("#", "#35;").replace("&", "#amp;").replace('"', "#quot;")
            .replace("<", "#lt;").replace(">", "#gt;").replace("|", "#124;")
            .replace("`", "#96;").replace("\n", " "))


def diagram_mermaid(data: ReportData) -> str:
    """The same edges as a mermaid flowchart, for the Markdown report (labels entity-coded)."""
    ids = {p: f"p{i}" for i, (p, _) in enumerate(data.parties)}
    lines = ["flowchart LR"]
    es = edges(data)
    for e in es:
        for p in (e.sender, e.receiver):
            if p not in ids:
                ids[p] = f"p{len(ids)}"
    roles = dict(data.parties)
    for p, node in ids.items():
        lines.append(f'  {node}["{_mermaid_text(p)} ({_mermaid_text(roles.get(p, "unknown"))})"]')
    for e in es:
        label = "; ".join(f"{k}: {t.messages:,} msg, {human_bytes(t.bytes)}, "
                          f"{kind_info(k).protection}" for k, t, _ in e.kinds)
        lines.append(f'  {ids[e.sender]} -- "{_mermaid_text(label)}" --> {ids[e.receiver]}')
    return "\n".join(lines)
