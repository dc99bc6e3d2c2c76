"""``fedscore audit report``: what crossed which boundary, rendered for a privacy reviewer.

:func:`fedscore.audit.verify.verify_ledgers` says whether the ledgers can be trusted; this module
turns the same ledgers (and, when given, the platform's refusal log, a run's privacy
accounting and the leakage benchmark's output) into one self-contained HTML page and the
same content as Markdown: parties, a data-flow diagram (inline SVG, no script, no external
font, style or image, so it opens offline and prints), traffic with its protection,
intersection sizes, online scoring per bank, the privacy budget and the leakage measured.

Everything shown from the ledgers comes from entries whose signature and chain verify
(each ledger is checked again here, per folder, so a party may have several ledgers); a
message both ends recorded is counted once. Everything read from a file is escaped.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedscore.atomic import atomic_write
from fedscore.audit.verify import AuditReport, Traffic, ledger_party
from fedscore.crypto.primitives import VerifyKey
from fedscore.ledger.entry import LEDGER_FILE, Entry, LedgerError
from fedscore.ledger.taps import PSI_RESULT_KIND
from fedscore.ledger.verify import check_chain

SHOW_FIRST = 50
"""Problems, one-sided messages, PSI runs and refusals listed before "and N more"."""
REFUSALS_FILE = "scoring-refusals.jsonl"
"""As :data:`platform_node.embedding_service.REFUSALS_FILE` (not imported: torch)."""
PRIVACY_FILE = "privacy.jsonl"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"


# --------------------------------------------------------------------------------------------
# What each kind of message is, and how it is protected (README, "What crosses the boundary")
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindInfo:
    """What a kind of message carries, its protection, and its protection class (colour)."""

    content: str
    protection: str
    level: str  # "sealed" | "secagg" | "transport" | "unknown"


KINDS: dict[str, KindInfo] = {
    "psi-blinded-ids": KindInfo(
        "X25519-blinded hashes of ids, then the peer's points blinded again", "mTLS",
        "transport"),
    PSI_RESULT_KIND: KindInfo(
        "the intersection size and a digest, closing a PSI run (rows = intersection size)",
        "mTLS", "transport"),
    "gradients": KindInfo(
        "dL/d(embedding) for a batch's aligned customers", "mTLS + AES-256-GCM", "sealed"),
    "embeddings": KindInfo(
        "the platform bottom model's embedding per aligned customer or scored applicant",
        "mTLS + AES-256-GCM", "sealed"),
    "embedding-query": KindInfo(
        "model version and PSI handles; for a consented applicant, the id and consent token",
        "mTLS + AES-256-GCM (scoring key, anti-replay window)", "sealed"),
    "control": KindInfo(
        "session id, round, seed, optimizer settings, epoch numbers", "mTLS", "transport"),
    "federation-control": KindInfo(
        "run id, round, seed; platform model versions, session and row counts",
        "mTLS, coordinator role only", "transport"),
    # Flower, bank <-> coordinator through the SuperLink (fedscore.ledger.flower names them)
    "identity-challenge": KindInfo(
        "a challenge: which bank is this SuperNode", "TLS", "transport"),
    "identity": KindInfo(
        "the bank's party name, signed with its kit's Ed25519 key", "TLS", "transport"),
    "model": KindInfo(
        "the aggregated bank-side model and the round's configuration", "TLS", "transport"),
    "model-update": KindInfo(
        "masked, quantised bank-side weights; only the sum over banks can be unmasked",
        "TLS + SecAgg+", "secagg"),
    "statistics-request": KindInfo(
        "the request for round 0's column statistics", "TLS", "transport"),
    "statistics-sums": KindInfo(
        "masked, fixed-point power sums of the bank's training columns; only the sum over "
        "banks can be unmasked", "TLS + SecAgg+", "secagg"),
    "secagg-setup": KindInfo("SecAgg+ parameters for the round", "TLS + SecAgg+", "secagg"),
    "secagg-public-keys": KindInfo(
        "SecAgg+ public keys of the banks", "TLS + SecAgg+", "secagg"),
    "secagg-key-shares": KindInfo(
        "SecAgg+ key shares, encrypted for the bank each is meant for", "TLS + SecAgg+",
        "secagg"),
    "secagg-unmask": KindInfo(
        "which banks dropped out, so the survivors' shares unmask the sum", "TLS + SecAgg+",
        "secagg"),
    "metrics": KindInfo(
        "AUC, KS, log loss, test and aligned counts, preprocessing fingerprint, PD "
        "histogram per class", "TLS", "transport"),
    "parameters-request": KindInfo(
        "the request for a seeded initial model (one bank, once per run)", "TLS",
        "transport"),
    "initial-model": KindInfo(
        "the bank-side model as initialised from the run's seed: no data in it", "TLS",
        "transport"),
    "score": KindInfo(
        "the bank's own features and the score back; only the bank's own kit may call",
        "mTLS", "transport"),
    "health": KindInfo("gRPC health checks", "mTLS", "transport"),
}
UNKNOWN_KIND = KindInfo("not a kind fedscore writes", "unknown", "unknown")

LEVELS: dict[str, tuple[str, str]] = {
    # level: (colour, legend)
    "sealed": ("#17703a", "sealed end to end (AES-256-GCM) inside mutual TLS"),
    "secagg": ("#1f55b3", "secure aggregation (SecAgg+): only the sum over banks is unmasked"),
    "transport": ("#8a5a00", "transport encryption only (mutual TLS / TLS)"),
    "unknown": ("#c00000", "unknown kind: protection not known"),
}


def kind_info(kind: str) -> KindInfo:
    return KINDS.get(kind, UNKNOWN_KIND)


# --------------------------------------------------------------------------------------------
# What the report shows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One message, from the sender's record or, when the sender's has none, the receiver's."""

    sender: str
    receiver: str
    entry: Entry
    file: Path


@dataclass(frozen=True)
class PsiRun:
    """One PSI run's closing message: the intersection size the platform announced."""

    bank: str
    size: int
    time: float
    file: Path


@dataclass(frozen=True)
class ScoringRow:
    bank: str
    queries: int
    query_bytes: int
    query_rows: int
    answers: int
    answer_bytes: int
    refused: int | None  # None: no platform state given


@dataclass(frozen=True)
class Refusal:
    time: float | None
    peer: str
    status: str
    reason: str
    token_id: str | None


@dataclass(frozen=True)
class PrivacyRow:
    round: int
    mechanism: str
    noise_multiplier: float
    clip: float
    delta: float
    releases: int
    epsilon: float | None


@dataclass(frozen=True)
class LeakageSetting:
    name: str
    embedding_noise: float | None
    update_noise: float | None
    inversion_r2: dict[str, float]
    mean_r2: float | None
    norm_auc: float | None
    cosine_auc: float | None
    auc: float | None
    auc_cost: float | None
    epsilon: float | None


@dataclass(frozen=True)
class Leakage:
    settings: list[LeakageSetting]
    ledger_overhead: float | None
    other: dict[str, str]


@dataclass
class ReportData:
    """Everything the report renders; :func:`build_report` fills it."""

    federation: str
    parties: list[tuple[str, str]]  # (name, role) from the CA-signed manifest
    audit: AuditReport
    inputs: list[tuple[str, str]]
    messages: list[Message] = field(default_factory=list)
    rows: dict[tuple[str, str, str], int] = field(default_factory=dict)
    folders: list[tuple[Path, str | None, int, int]] = field(default_factory=list)
    """(folder, party, valid entries, problems), one per folder given."""
    psi_runs: list[PsiRun] = field(default_factory=list)
    scoring: list[ScoringRow] = field(default_factory=list)
    refusals: list[Refusal] | None = None
    privacy: list[PrivacyRow] | None = None
    privacy_note: str = ""
    leakage: Leakage | None = None
    leakage_note: str = ""
    warnings: list[str] = field(default_factory=list)
    generated: float = 0.0

    def role(self, party: str) -> str:
        return dict(self.parties).get(party, "unknown")


# --------------------------------------------------------------------------------------------
# Reading the inputs
# --------------------------------------------------------------------------------------------


def collect_messages(
    folders: Sequence[Path], keys: Mapping[str, VerifyKey]
) -> tuple[list[Message], list[tuple[Path, str | None, int, int]]]:
    """Every verified message once, and per folder (party, valid entries, problems).

    A party may have several folders. Per boundary and direction, the sender's records are
    taken and the receiver's only for messages (same SHA-256 and size) the sender's lack.
    """
    sent: dict[tuple[str, str], list[Message]] = defaultdict(list)
    received: dict[tuple[str, str], list[Message]] = defaultdict(list)
    summary: list[tuple[Path, str | None, int, int]] = []
    for folder in folders:
        folder = Path(folder)
        path = folder / LEDGER_FILE
        party = ledger_party(folder) if path.is_file() else None
        if party is None or party not in keys:
            summary.append((folder, party, 0, 1))
            continue
        try:
            found = check_chain(path, keys[party], party)
        except LedgerError:
            summary.append((folder, party, 0, 1))
            continue
        summary.append((folder, party, len(found.entries), len(found.problems)))
        for e in found.entries:
            if e.peer == party:
                continue
            if e.direction == "sent":
                sent[(party, e.peer)].append(Message(party, e.peer, e, path))
            else:
                received[(e.peer, party)].append(Message(e.peer, party, e, path))
    messages: list[Message] = []
    for pair in sorted(set(sent) | set(received)):
        mine = sent.get(pair, [])
        messages.extend(mine)
        have = Counter((m.entry.payload_sha256, m.entry.bytes) for m in mine)
        for m in received.get(pair, []):
            key = (m.entry.payload_sha256, m.entry.bytes)
            if have[key] > 0:
                have[key] -= 1
            else:
                messages.append(m)
    messages.sort(key=lambda m: (m.entry.time, m.sender, m.receiver, m.entry.seq))
    return messages, summary


def _psi_runs(messages: Iterable[Message], roles: Mapping[str, str]) -> list[PsiRun]:
    """One run per PSI result the platform sent a bank (the bank's, where the platform's
    is missing): both ends announce the same size, so one direction counts each run once."""
    by_dir: dict[tuple[str, str], list[Message]] = defaultdict(list)
    for m in messages:
        if m.entry.kind == PSI_RESULT_KIND:
            by_dir[(m.sender, m.receiver)].append(m)
    runs: list[PsiRun] = []
    banks = {b for pair in by_dir for b in pair if roles.get(b) != "platform"}
    for bank in sorted(banks):
        for platform in sorted(p for p in roles if roles[p] == "platform"):
            chosen = by_dir.get((platform, bank)) or by_dir.get((bank, platform)) or []
            runs.extend(PsiRun(bank, m.entry.rows, m.entry.time, m.file) for m in chosen)
    runs.sort(key=lambda r: (r.bank, r.time))
    return runs


def _scoring(messages: Sequence[Message], roles: Mapping[str, str],
             refusals: list[Refusal] | None) -> list[ScoringRow]:
    """Per bank: embedding queries the platform got, scoring answers it sent, refusals."""
    platforms = {p for p, r in roles.items() if r == "platform"}
    q: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    a: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for m in messages:
        e = m.entry
        if e.kind == "embedding-query" and m.receiver in platforms:
            t = q[m.sender]
            t[0] += 1
            t[1] += e.bytes
            t[2] += e.rows
        elif e.kind == "embeddings" and e.purpose == "scoring" and m.sender in platforms:
            t = a[m.receiver]
            t[0] += 1
            t[1] += e.bytes
    refused = Counter(r.peer for r in refusals or [])
    banks = sorted({p for p, r in roles.items() if r == "bank"} | set(q) | set(a)
                   | set(refused))
    return [ScoringRow(b, q[b][0], q[b][1], q[b][2], a[b][0], a[b][1],
                       None if refusals is None else refused[b]) for b in banks]


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if ln.strip()]


def _num(obj: Mapping[str, Any], key: str) -> float | None:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def read_refusals(state_dir: Path, warnings: list[str]) -> list[Refusal]:
    """The platform's ``scoring-refusals.jsonl``; none when it does not exist (none refused)."""
    path = state_dir / REFUSALS_FILE
    if not path.is_file():
        return []
    out: list[Refusal] = []
    bad = 0
    for ln in _lines(path):
        try:
            obj = json.loads(ln)
        except ValueError:
            bad += 1
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("peer"), str):
            bad += 1
            continue
        token = obj.get("token_id")
        out.append(Refusal(_num(obj, "time"), obj["peer"], str(obj.get("status", "")),
                           str(obj.get("reason", "")),
                           token if isinstance(token, str) else None))
    if bad:
        warnings.append(f"{path}: {bad:,} line(s) are not refusal records; left out")
    return out


def read_privacy(run_dir: Path, warnings: list[str]) -> list[PrivacyRow]:
    """The run's ``privacy.jsonl``, one row per round and mechanism; [] when absent."""
    path = run_dir / PRIVACY_FILE
    if not path.is_file():
        return []
    out: list[PrivacyRow] = []
    bad = 0
    for ln in _lines(path):
        try:
            obj = json.loads(ln)
        except ValueError:
            bad += 1
            continue
        if not isinstance(obj, dict):
            bad += 1
            continue
        rnd, releases = obj.get("round"), obj.get("releases", 0)
        noise, clip, delta = (_num(obj, k) for k in ("noise_multiplier", "clip", "delta"))
        if (not isinstance(rnd, int) or not isinstance(releases, int) or noise is None
                or not isinstance(obj.get("mechanism"), str)):
            bad += 1
            continue
        out.append(PrivacyRow(rnd, obj["mechanism"], noise, clip or 0.0, delta or 0.0,
                              releases, _num(obj, "epsilon")))
    if bad:
        warnings.append(f"{path}: {bad:,} line(s) are not privacy records; left out")
    out.sort(key=lambda r: (r.round, r.mechanism))
    return out


def read_leakage(path: Path, warnings: list[str]) -> Leakage | None:
    """benchmarks/privacy.py's JSON: the whole file, or its last line (the script's output)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    obj: Any = None
    for candidate in (text, (text.strip().splitlines() or [""])[-1]):
        try:
            obj = json.loads(candidate)
            break
        except ValueError:
            continue
    if not isinstance(obj, dict) or not isinstance(obj.get("settings"), list):
        warnings.append(f"{path}: not the leakage benchmark's JSON (no \"settings\" list)")
        return None
    settings: list[LeakageSetting] = []
    for s in obj["settings"]:
        if not isinstance(s, dict):
            continue
        inv = s.get("inversion_r2") if isinstance(s.get("inversion_r2"), dict) else {}
        lab = s.get("label_attack_auc") if isinstance(s.get("label_attack_auc"), dict) else {}
        assert isinstance(inv, dict) and isinstance(lab, dict)
        per = {str(k): float(v) for k, v in inv.items() if k != "mean_r2"
               and isinstance(v, int | float) and not isinstance(v, bool)}
        settings.append(LeakageSetting(
            str(s.get("name", "?")), _num(s, "embedding_noise"), _num(s, "update_noise"),
            per, _num(inv, "mean_r2"), _num(lab, "norm_auc"), _num(lab, "cosine_auc"),
            _num(s, "auc"), _num(s, "auc_cost"), _num(s, "epsilon")))
    other = {str(k): str(v) for k, v in obj.items()
             if k not in ("settings", "ledger_overhead") and isinstance(v, int | float | str)
             and not isinstance(v, bool)}
    return Leakage(settings, _num(obj, "ledger_overhead"), other)


def build_report(
    *,
    federation: str,
    parties: Mapping[str, str],
    keys: Mapping[str, VerifyKey],
    folders: Sequence[Path],
    audit: AuditReport,
    kit: Path | None = None,
    platform_state: Path | None = None,
    run_dir: Path | None = None,
    leakage: Path | None = None,
    now: float | None = None,
) -> ReportData:
    """Read every input; nothing here renders. ``parties`` maps name -> role (manifest)."""
    import time

    inputs = [("ledger folder", str(f)) for f in folders]
    for name, value in (("startup kit (manifest)", kit), ("platform state", platform_state),
                        ("run folder", run_dir), ("leakage measurements", leakage)):
        inputs.append((name, str(value) if value is not None else "not given"))
    data = ReportData(federation, sorted(parties.items(), key=_party_order), audit, inputs,
                      generated=time.time() if now is None else now)
    data.messages, data.folders = collect_messages(folders, keys)
    rows: dict[tuple[str, str, str], int] = defaultdict(int)
    for m in data.messages:
        rows[(m.sender, m.receiver, m.entry.kind)] += m.entry.rows
    data.rows = dict(rows)
    roles = dict(parties)
    data.psi_runs = _psi_runs(data.messages, roles)
    if platform_state is not None:
        data.refusals = read_refusals(platform_state, data.warnings)
    data.scoring = _scoring(data.messages, roles, data.refusals)
    if run_dir is None:
        data.privacy_note = "no run folder given (--run-dir), so no privacy accounting"
    else:
        data.privacy = read_privacy(run_dir, data.warnings)
        if not data.privacy:
            data.privacy_note = f"no {PRIVACY_FILE} in {run_dir}"
        elif all(r.noise_multiplier == 0 for r in data.privacy):
            data.privacy_note = f"{run_dir / PRIVACY_FILE}: every noise multiplier is 0"
    if leakage is None:
        data.leakage_note = "no leakage measurements given (--leakage)"
    else:
        data.leakage = read_leakage(leakage, data.warnings)
        if data.leakage is None:
            data.leakage_note = f"{leakage} could not be read as leakage measurements"
    return data


def _party_order(item: tuple[str, str]) -> tuple[int, str]:
    order = {"platform": 0, "bank": 1, "coordinator": 2}
    return (order.get(item[1], 3), item[0])


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


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
    if t is None:
        return "?"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fnum(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fsci(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.0e}" if v and abs(v) < 1e-3 else f"{v:g}"


# --------------------------------------------------------------------------------------------
# A small document model, so HTML and Markdown show the same content
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Styled:
    """Text with a style: ok, bad, warn, muted, strong, code."""

    text: str
    style: str


Inline = str | Styled
Cell = Inline | Sequence[Inline]


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass(frozen=True)
class Para:
    parts: Sequence[Inline]


@dataclass(frozen=True)
class Bullets:
    items: Sequence[Sequence[Inline]]


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    numeric: frozenset[int] = frozenset()
    css: str = ""


@dataclass(frozen=True)
class Banner:
    ok: bool
    title: str
    detail: str


@dataclass(frozen=True)
class Diagram:
    svg: str
    mermaid: str


Block = Heading | Para | Bullets | Table | Banner | Diagram


# --------------------------------------------------------------------------------------------
# The data-flow diagram (SVG)
# --------------------------------------------------------------------------------------------

CHAR_W = 7.3  # px per character of 12 px DejaVu Sans Mono (monospace: widths are known)
LH = 16
MARGIN = 20
FONT = "DejaVu Sans Mono, Menlo, Consolas, Liberation Mono, monospace"


@dataclass(frozen=True)
class Edge:
    """One boundary in one direction: the kinds that crossed it, largest first."""

    sender: str
    receiver: str
    kinds: list[tuple[str, Traffic, int]]  # kind, messages/bytes, rows

    @property
    def messages(self) -> int:
        return sum(t.messages for _, t, _ in self.kinds)

    @property
    def bytes(self) -> int:
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
    return max((len(t) for t, _ in lines), default=0) * CHAR_W


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _text(x: float, y: float, s: str, *, fill: str = "#111111", anchor: str = "start",
          size: int = 12, weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" fill="{fill}" font-size="{size}" '
            f'font-weight="{weight}" text-anchor="{anchor}" xml:space="preserve">{_e(s)}</text>')


def _edge_group(edge: Edge, x1: float, y: float, x2: float, texts: list[str]) -> str:
    """One arrow and its label, grouped and tagged with its two ends."""
    return (
        f'<g class="edge" data-from="{_e(edge.sender)}" data-to="{_e(edge.receiver)}">'
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
        out.append(f'<g class="edge other" data-from="{_e(e.sender)}" '
                   f'data-to="{_e(e.receiver)}">'
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
        f'<title id="dataflow-title">Data flow of federation {_e(data.federation)}: '
        f'{len(all_edges)} boundary direction(s) with traffic</title>'
        '<defs><marker id="arrowhead" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#333333"/></marker></defs>'
        f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>'
    )
    return head + "".join(out) + "</svg>"


def _box(x: float, y: float, w: float, h: float, lines: list[str]) -> str:
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
    blocks += _flow(data)
    blocks += _intersections(data)
    blocks += _scoring_blocks(data)
    blocks += _privacy_blocks(data)
    blocks += _leakage_blocks(data)
    return blocks


def _problems(a: AuditReport) -> list[Block]:
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
    return f" (the first {SHOW_FIRST:,} shown)" if n > SHOW_FIRST else ""


def _flow(data: ReportData) -> list[Block]:
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


def _html_inline(part: Inline) -> str:
    if isinstance(part, str):
        return _e(part)
    if part.style == "code":
        return f"<code>{_e(part.text)}</code>"
    if part.style == "strong":
        return f"<strong>{_e(part.text)}</strong>"
    if not part.style:
        return _e(part.text)
    return f'<span class="{part.style}">{_e(part.text)}</span>'


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, str | Styled):
        return _html_inline(cell)
    return "".join(_html_inline(p) for p in cell)


def render_html(data: ReportData) -> str:
    """One self-contained page: inline CSS and SVG, no script, nothing fetched."""
    body: list[str] = []
    for b in document(data):
        if isinstance(b, Heading):
            anchor = f' id="{_e(b.anchor)}"' if b.anchor else ""
            body.append(f"<h{b.level}{anchor}>{_e(b.text)}</h{b.level}>")
        elif isinstance(b, Banner):
            cls = "ok" if b.ok else "bad"
            body.append(f'<div class="banner {cls}" role="status"><strong>{_e(b.title)}'
                        f"</strong><span>{_e(b.detail)}</span></div>")
        elif isinstance(b, Para):
            body.append("<p>" + "".join(_html_inline(p) for p in b.parts) + "</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(
                "<li>" + "".join(_html_inline(p) for p in item) + "</li>" for item in b.items
            ) + "</ul>")
        elif isinstance(b, Table):
            cls = f' class="{_e(b.css)}"' if b.css else ""
            head = "".join(
                f'<th{" class=" + chr(34) + "num" + chr(34) if i in b.numeric else ""}>'
                f"{_e(h)}</th>" for i, h in enumerate(b.headers))
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
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n"
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
    if isinstance(part, str):
        return _md_text(part)
    if part.style == "code":
        text = html.escape(part.text, quote=False).replace("|", "&#124;").replace("`", "'")
        return f"<code>{text}</code>" if "&" in text else f"`{text}`"
    if part.style in ("bad", "strong", "warn"):
        return f"**{_md_text(part.text)}**"
    return _md_text(part.text)


def _md_cell(cell: Cell) -> str:
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


def write_report(data: ReportData, out: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` under ``out`` (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / HTML_FILE, out / MARKDOWN_FILE
    atomic_write(html_path, render_html(data).encode("utf-8"))
    atomic_write(md_path, render_markdown(data).encode("utf-8"))
    return html_path, md_path
