"""The audit report's data: everything it shows, read from the ledgers and the other inputs.

:func:`build_report` reads the ledger folders (and, when given, the platform's refusal log, a
run's privacy accounting and the leakage benchmark's output) into one :class:`ReportData`;
nothing here renders (:mod:`fedscore.audit.document` lays it out, :mod:`fedscore.audit.render`
writes HTML and Markdown). :data:`KINDS` says what each kind of message carries and how it is
protected, for every view.

Everything taken from the ledgers comes from entries whose signature and chain verify (each
ledger is checked again here, per folder, so a party may have several ledgers); a message
both ends recorded is counted once.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedscore.audit.findings import AuditReport, ledger_party
from fedscore.crypto.primitives import VerifyKey
from fedscore.ledger.entry import FAILED, LEDGER_FILE, Entry, LedgerError
from fedscore.ledger.taps import PSI_RESULT_KIND
from fedscore.ledger.verify import check_chain

REFUSALS_FILE = "scoring-refusals.jsonl"
"""As :data:`platform_node.embedding_service.REFUSALS_FILE` (not imported: torch)."""
PRIVACY_FILE = "privacy.jsonl"
"""The privacy accounting a run writes into its folder, one JSON line per round and mechanism."""


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
    """What ``kind`` carries and how it is protected; :data:`UNKNOWN_KIND` if not ours."""
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
    """One bank's online scoring: queries it sent, answers it got, calls refused."""

    bank: str
    queries: int
    query_bytes: int
    query_rows: int
    answers: int
    answer_bytes: int
    refused: int | None  # None: no platform state given


@dataclass(frozen=True)
class Refusal:
    """One call the platform refused, from its refusal log (no applicant id in it)."""

    time: float | None
    peer: str
    status: str
    reason: str
    token_id: str | None


@dataclass(frozen=True)
class PrivacyRow:
    """One round's privacy accounting for one mechanism, from the run's ``privacy.jsonl``."""

    round: int
    mechanism: str
    noise_multiplier: float
    clip: float
    delta: float
    releases: int
    epsilon: float | None


@dataclass(frozen=True)
class LeakageSetting:
    """One setting the leakage benchmark measured: its noise, the attacks' scores, its AUC."""

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
    """The leakage benchmark's output: its settings, the ledger's overhead, other figures."""

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
        """``party``'s role in the manifest; ``unknown`` for a party outside it."""
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
            elif e.direction == FAILED:
                continue  # about a sent message, not a message (AuditReport.failed)
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

