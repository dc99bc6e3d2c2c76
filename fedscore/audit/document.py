"""The audit report as a document: a small block model, and the blocks the report shows.

:func:`document` turns a :class:`fedscore.audit.data.ReportData` into headings, paragraphs,
lists, tables, the verdict banner and the diagram, in order; both renderers
(:mod:`fedscore.audit.render`) show exactly these blocks, so the HTML page and the Markdown
file say the same. Nothing here escapes or formats markup; the renderers do.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from fedscore.audit.data import REFUSALS_FILE, PrivacyRow, PsiRun, ReportData, kind_info
from fedscore.audit.diagram import diagram_mermaid, diagram_svg, edges
from fedscore.audit.findings import AuditReport
from fedscore.audit.formatting import fnum, fsci, human_bytes, when
from fedscore.ledger.taps import PSI_RESULT_KIND

__all__ = ["Banner", "Block", "Bullets", "Cell", "Diagram", "Heading", "Inline", "Para",
           "Styled", "Table", "document"]

SHOW_FIRST = 50
"""Problems, one-sided messages, PSI runs and refusals listed before "and N more"."""


# --------------------------------------------------------------------------------------------
# A small document model, so HTML and Markdown show the same content
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Styled:
    """Text with a style: ok, bad, warn, muted, strong, code."""

    text: str
    style: str


Inline = str | Styled
"""A run of text: plain, or with a style."""
Cell = Inline | Sequence[Inline]
"""A table cell: one inline part or several."""


@dataclass(frozen=True)
class Heading:
    """A heading of ``level`` (1 = the title); ``anchor`` is its HTML id."""

    level: int
    text: str
    anchor: str = ""


@dataclass(frozen=True)
class Para:
    """A paragraph of inline parts."""

    parts: Sequence[Inline]


@dataclass(frozen=True)
class Bullets:
    """A bulleted list; each item a sequence of inline parts."""

    items: Sequence[Sequence[Inline]]


@dataclass(frozen=True)
class Table:
    """A table; columns in ``numeric`` are right-aligned, ``css`` is its HTML class."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    numeric: frozenset[int] = frozenset()
    css: str = ""


@dataclass(frozen=True)
class Banner:
    """The verdict at the top: verified (``ok``) or failed, with a one-line detail."""

    ok: bool
    title: str
    detail: str


@dataclass(frozen=True)
class Diagram:
    """The data-flow diagram: the SVG for HTML, the mermaid source for Markdown."""

    svg: str
    mermaid: str


Block = Heading | Para | Bullets | Table | Banner | Diagram
"""Any block the renderers know."""


# --------------------------------------------------------------------------------------------
# The content
# --------------------------------------------------------------------------------------------


def document(data: ReportData) -> list[Block]:
    """The report's blocks, in order; both renderers show exactly these."""
    a = data.audit
    blocks: list[Block] = [Heading(1, f"Audit report: federation {data.federation}")]
    total = sum(n for _, _, n, _ in data.folders)
    if a.ok:
        blocks.append(Banner(True, "Ledgers verified", (
            f"{len(data.folders):,} ledger(s), {total:,} entries: every chain and signature "
            "is valid and every message between the given ledgers was recorded by both ends."
        )))
    else:
        blocks.append(Banner(False, "Verification FAILED", (
            f"{len(a.problems):,} problem(s) and {len(a.unmatched):,} message(s) recorded by "
            "one end only. The figures below count only entries whose signature verifies; "
            "they cannot be relied on until the problems are explained."
        )))
    blocks.append(Para([f"Generated {when(data.generated)} by fedscore audit report. ",
                        "Inputs:"]))
    blocks.append(Bullets([[f"{k}: ", Styled(v, "code")] for k, v in data.inputs]))
    for w in data.warnings:
        blocks.append(Para([Styled("warning: ", "warn"), w]))

    blocks += [
        Heading(2, "Parties", "parties"),
        Para(["From the federation manifest signed by the federation CA (in the startup "
              "kit); the verify keys used below come from it, never from the ledgers."]),
        Table(["party", "role", "ledger folders given", "verified entries"], [
            [p, r, f"{sum(1 for _, q, _, _ in data.folders if q == p):,}",
             f"{sum(n for _, q, n, _ in data.folders if q == p):,}"]
            for p, r in data.parties
        ], frozenset({2, 3})),
        Heading(2, "Ledgers", "ledgers"),
        Para(["Each node signs and hash-chains one entry per message crossing its boundary. "
              "A chain is ok when every entry's Ed25519 signature verifies, every entry "
              "points to the previous one and nothing after the signed head is missing."]),
        Table(["folder", "party", "verified entries", "chain"], [
            [Styled(str(f), "code"), q or Styled("unknown", "bad"), f"{n:,}",
             Styled("ok", "ok") if bad == 0 else Styled(f"{bad:,} problem(s)", "bad")]
            for f, q, n, bad in data.folders
        ], frozenset({2})),
    ]
    blocks += _problems(a)
    blocks += _outages(a)
    blocks += _flow(data)
    blocks += _intersections(data)
    blocks += _scoring_blocks(data)
    blocks += _privacy_blocks(data)
    blocks += _leakage_blocks(data)
    return blocks


def _outages(a: AuditReport) -> list[Block]:
    """Sends that failed (an outage, not a mismatch) and answers sent after their caller
    gave up: how many, between which boundary, with which status, and when."""
    out: list[Block] = [Heading(2, "Failed sends and outages", "outages")]
    lines = a.outages
    if not lines:
        out.append(Para(["None: no node recorded a send as failed."]))
        return out
    out.append(Para([
        "A node records a message as sent when it hands it to gRPC and, when the call then "
        "fails, a second entry with the call's status. A failed send the receiver never "
        "recorded is an outage, not a hidden message; an answer only its sender recorded "
        "counts here when its receiver recorded giving up on the call it answers."]))
    out.append(Bullets([[Styled(line, "code")] for line in lines]))
    return out


def _problems(a: AuditReport) -> list[Block]:
    """What did not verify: problems, then messages one end recorded."""
    out: list[Block] = [Heading(2, "Verification problems", "problems")]
    if not a.problems and not a.unmatched:
        out.append(Para([Styled("None.", "ok"), " Every entry verifies and every message "
                         "between two given ledgers was recorded by both ends."]))
        return out
    if a.problems:
        out.append(Para([Styled(f"{len(a.problems):,} problem(s)", "bad"),
                         f"{_first(len(a.problems))}:"]))
        out.append(Bullets([[Styled(p, "code")] for p in a.problems[:SHOW_FIRST]]))
    if a.unmatched:
        out.append(Para([Styled(f"{len(a.unmatched):,} message(s) recorded by one end only",
                                "bad"), f"{_first(len(a.unmatched))}:"]))
        out.append(Bullets([[Styled(str(u), "code")] for u in a.unmatched[:SHOW_FIRST]]))
    return out


def _first(n: int) -> str:
    """Says that a list of ``n`` is cut at :data:`SHOW_FIRST`, when it is."""
    return f" (the first {SHOW_FIRST:,} shown)" if n > SHOW_FIRST else ""


def _flow(data: ReportData) -> list[Block]:
    """The diagram, the traffic per boundary and kind, and what each kind carries."""
    es = edges(data)
    rows: list[list[Cell]] = []
    for e in es:
        for kind, t, r in e.kinds:
            info = kind_info(kind)
            style = "bad" if info.level == "unknown" else ""
            rows.append([e.sender, e.receiver, Styled(kind, style or "code"),
                         f"{t.messages:,}", f"{r:,}" if r else "–", f"{t.bytes:,}",
                         human_bytes(t.bytes), Styled(info.protection, style or "strong")])
    seen = sorted({k for e in es for k, _, _ in e.kinds})
    glossary: list[list[Cell]] = [
        [Styled(k, "bad" if kind_info(k).level == "unknown" else "code"),
         kind_info(k).content, kind_info(k).protection] for k in seen]
    return [
        Heading(2, "Data flow", "flow"),
        Para(["Which kinds of data crossed which boundary, how much, and under which "
              "protection. One arrow per boundary and direction that carried traffic; each "
              "message is counted once even when both ends recorded it. Rows are ids (PSI), "
              "the intersection size (psi-result); sealed payloads do not show theirs."]),
        Diagram(diagram_svg(data), diagram_mermaid(data)),
        Heading(3, "Traffic", "traffic"),
        Table(["from", "to", "kind", "messages", "rows", "bytes", "size", "protection"], rows,
              frozenset({3, 4, 5, 6}), "traffic")
        if rows else Para([Styled("No traffic in the given ledgers.", "warn")]),
        Heading(3, "What each kind carries", "kinds"),
        Para(["As documented in the README (\"What crosses the boundary\"); no kind carries a "
              "raw feature value. A kind fedscore does not write is shown in red."]),
        Table(["kind", "what it carries", "protection"], glossary),
    ]


def _intersections(data: ReportData) -> list[Block]:
    """Intersection sizes per bank, then the PSI runs one by one."""
    out: list[Block] = [
        Heading(2, "Intersection sizes", "psi"),
        Para(["Each PSI run ends with both sides announcing the size of the intersection "
              f"(the {PSI_RESULT_KIND} message; the ledger records it as the message's rows). "
              "One row per run: a bank's training run and each of its scoring sessions."]),
    ]
    if not data.psi_runs:
        out.append(Para([Styled("No PSI result in the given ledgers", "warn"),
                         " (no PSI ran, or the ledgers predate psi-result entries)."]))
        return out
    by_bank: dict[str, list[PsiRun]] = defaultdict(list)
    for r in data.psi_runs:
        by_bank[r.bank].append(r)
    out.append(Table(["bank", "PSI runs", "latest intersection", "smallest", "largest"], [
        [b, f"{len(rs):,}", f"{rs[-1].size:,}", f"{min(r.size for r in rs):,}",
         f"{max(r.size for r in rs):,}"] for b, rs in sorted(by_bank.items())
    ], frozenset({1, 2, 3, 4})))
    runs = data.psi_runs[:SHOW_FIRST]
    out.append(Para([f"The runs{_first(len(data.psi_runs))}:"]))
    out.append(Table(["bank", "time", "intersection size", "recorded in"], [
        [r.bank, when(r.time), f"{r.size:,}", Styled(str(r.file), "code")] for r in runs
    ], frozenset({2})))
    return out


def _scoring_blocks(data: ReportData) -> list[Block]:
    """Online scoring per bank, and the platform's refusals when its state was given."""
    out: list[Block] = [
        Heading(2, "Online scoring", "scoring"),
        Para(["Embedding queries each bank's scoring server sent the platform, the scoring "
              "answers the platform sent back, and the calls it refused (a handle outside "
              "the bank's intersection, a consent token that does not verify or has expired, "
              "a query that does not open). A refused call is answered with an error only. "
              "Rows of sealed queries are not visible to the ledger."]),
    ]
    rows: list[list[Cell]] = []
    for s in data.scoring:
        refused: Cell = "not known" if s.refused is None else (
            Styled(f"{s.refused:,}", "bad") if s.refused else "0")
        rows.append([s.bank, f"{s.queries:,}", f"{s.query_rows:,}" if s.query_rows else "–",
                     human_bytes(s.query_bytes), f"{s.answers:,}",
                     human_bytes(s.answer_bytes), refused])
    out.append(Table(["bank", "requests", "rows", "request bytes", "answers", "answer bytes",
                      "refused"], rows, frozenset({1, 2, 3, 4, 5, 6})))
    if data.refusals is None:
        out.append(Para([Styled("Refusals not known: ", "warn"), "no platform state folder "
                         f"given (--platform-state, where the platform writes {REFUSALS_FILE})."]))
        return out
    if not data.refusals:
        out.append(Para([Styled("No refused requests", "ok"), f" ({REFUSALS_FILE} has none)."]))
        return out
    reasons = Counter((r.peer, r.status, r.reason) for r in data.refusals)
    out.append(Heading(3, "Refused requests by reason", "refusals"))
    out.append(Table(["bank", "status", "reason", "count"], [
        [p, Styled(st, "code"), reason, f"{n:,}"]
        for (p, st, reason), n in sorted(reasons.items(), key=lambda x: (-x[1], x[0]))
    ], frozenset({3})))
    latest = sorted(data.refusals, key=lambda r: r.time or 0.0, reverse=True)[:SHOW_FIRST]
    out.append(Para([f"The latest refusals{_first(len(data.refusals))} (the platform logs "
                     "no applicant id):"]))
    out.append(Table(["time", "bank", "status", "reason", "consent token"], [
        [when(r.time), r.peer, Styled(r.status, "code"), r.reason,
         Styled(r.token_id, "code") if r.token_id else "–"] for r in latest
    ]))
    return out


def _privacy_blocks(data: ReportData) -> list[Block]:
    """The privacy budget per mechanism and round, or why there is none."""
    out: list[Block] = [Heading(2, "Privacy budget", "privacy")]
    rows = data.privacy or []
    if not rows or all(r.noise_multiplier == 0 for r in rows):
        out.append(Para([Styled("Differential privacy off", "warn"), f": {data.privacy_note}. "
                         "Without it, nothing bounds what the embeddings, gradients and "
                         "model updates reveal beyond the measurements below."]))
        return out
    out.append(Para([
        "(ε, δ)-differential privacy bounds how much one customer's record can change what "
        "another party sees: smaller ε is more private (ε ≤ 1 is strong, above 10 is weak); "
        "δ is the small probability the bound does not hold. Noise multiplier = Gaussian "
        "noise σ relative to the clipping norm; releases = noisy releases accounted so far."
    ]))
    final: dict[str, PrivacyRow] = {}
    for r in rows:
        final[r.mechanism] = r
    out.append(Bullets([
        [Styled(m, "strong"), ": " + (
            f"ε = {fnum(r.epsilon, 2)} at δ = {fsci(r.delta)} after round {r.round:,}"
            if r.noise_multiplier > 0 else "off (noise multiplier 0)")]
        for m, r in sorted(final.items())
    ]))
    out.append(Table(["round", "mechanism", "noise multiplier", "clip", "δ", "releases", "ε"], [
        [f"{r.round:,}", r.mechanism, fnum(r.noise_multiplier, 3), fnum(r.clip, 3),
         fsci(r.delta), f"{r.releases:,}",
         fnum(r.epsilon, 2) if r.noise_multiplier > 0 else Styled("off", "warn")]
        for r in rows
    ], frozenset({0, 2, 3, 4, 5, 6})))
    return out


def _leakage_blocks(data: ReportData) -> list[Block]:
    """The leakage benchmark's measurements, with what each attack means."""
    out: list[Block] = [Heading(2, "Leakage measurements", "leakage")]
    lk = data.leakage
    if lk is None:
        out.append(Para([Styled("Not measured here", "warn"), f": {data.leakage_note}."]))
        return out
    out.append(Para([
        Styled("Embedding inversion R²", "strong"), ": a bank that also holds some of the "
        "platform's raw features for a slice of customers trains a regressor embedding → "
        "feature and applies it to the rest; R² is its out-of-sample fit. 1 = the embedding "
        "reveals the feature, 0 = no better than guessing the mean, below 0 = worse."]))
    out.append(Para([
        Styled("Label attack AUC", "strong"), ": the platform ranks customers by the norm "
        "or the direction (cosine) of the gradients it receives; AUC against the true "
        "default labels. 0.5 = no leakage, 1 = the labels in the clear. ",
        Styled("Test AUC", "strong"), " is the model's quality; AUC cost is what the noise "
        "costs in test AUC. Highlighted: mean R² ≥ 0.5 or attack AUC ≥ 0.75."]))

    def flag(v: float | None, limit: float, digits: int = 3) -> Cell:
        """``v`` highlighted when it reaches ``limit`` (an attack that works)."""
        return Styled(fnum(v, digits), "warn") if v is not None and v >= limit else fnum(v,
                                                                                        digits)

    out.append(Table(
        ["setting", "embedding noise", "update noise", "ε", "test AUC", "AUC cost",
         "inversion R² (mean)", "label AUC (norm)", "label AUC (cosine)"],
        [[s.name, fnum(s.embedding_noise, 2), fnum(s.update_noise, 2),
          fnum(s.epsilon, 2) if s.epsilon is not None else "∞ (no DP)",
          fnum(s.auc, 4), fnum(s.auc_cost, 4), flag(s.mean_r2, 0.5), flag(s.norm_auc, 0.75),
          flag(s.cosine_auc, 0.75)] for s in lk.settings],
        frozenset(range(1, 9))))
    features = sorted({f for s in lk.settings for f in s.inversion_r2})
    if features:
        out.append(Heading(3, "Inversion R² per platform feature", "inversion"))
        out.append(Table(["feature", *[s.name for s in lk.settings]], [
            [f, *[flag(s.inversion_r2.get(f), 0.5) for s in lk.settings]] for f in features
        ], frozenset(range(1, len(lk.settings) + 1))))
    extra: list[Sequence[Inline]] = []
    if lk.ledger_overhead is not None:
        extra.append([f"ledger overhead: {lk.ledger_overhead:+.1%} of run time"])
    extra += [[f"{k}: {v}"] for k, v in sorted(lk.other.items())]
    if extra:
        out.append(Bullets(extra))
    return out
