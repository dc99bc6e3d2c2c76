"""``fedscore audit report``: real kits, real signed ledgers, rendered and read back as a
reviewer's browser would (html.parser), for a verified federation and a tampered one."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedscore.api.v1 import psi_pb2
from fedscore.audit.data import PRIVACY_FILE, REFUSALS_FILE, build_report, collect_messages
from fedscore.audit.formatting import human_bytes
from fedscore.audit.render import render_html
from fedscore.audit.verify import verify_ledgers
from fedscore.cli.audit import audit_app
from fedscore.cli.main import app
from fedscore.federation.provision import StartupKit, load_kit, provision
from fedscore.ledger.entry import LEDGER_FILE
from fedscore.ledger.taps import default_rows, message_kind
from fedscore.ledger.writer import Ledger

PARTIES = ("platform", "bank-1", "bank-2", "coordinator")
HOSTILE = "<script>alert(1)</script>"


@dataclass(frozen=True)
class Kits:
    root: Path
    by_party: dict[str, StartupKit]

    def ledger(self, folder: Path, party: str) -> Ledger:
        return Ledger(folder, self.by_party[party].signing_key, party)


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Kits:
    root = tmp_path_factory.mktemp("report") / "kits"
    provision(root, parties=PARTIES)
    return Kits(root, {p: load_kit(root / p) for p in PARTIES})


def exchange(a: Ledger, b: Ledger, kind: str, payload: bytes, *, purpose: str,
             rows: int = 0, round_: int = 0, receiver_records: bool = True) -> None:
    """One message a -> b, as both ends record it (or the sender only)."""
    a.record(b.party, "sent", kind, payload, rows=rows, round=round_, purpose=purpose)
    if receiver_records:
        b.record(a.party, "received", kind, payload, rows=rows, round=round_, purpose=purpose)


def build_federation(kits: Kits, root: Path, hostile: bool = False) -> list[Path]:
    """A small run: PSI (sizes 700 and 450), training, Flower rounds, online scoring."""
    folders = [root / p for p in PARTIES]
    with (kits.ledger(folders[0], "platform") as plat, kits.ledger(folders[1], "bank-1") as b1,
          kits.ledger(folders[2], "bank-2") as b2,
          kits.ledger(folders[3], "coordinator") as coord):
        for bank, n, size in ((b1, 1000, 700), (b2, 600, 450)):
            exchange(bank, plat, "psi-blinded-ids", b"h" * 40, purpose="alignment")
            exchange(plat, bank, "psi-blinded-ids", b"H" * 40, purpose="alignment")
            exchange(bank, plat, "psi-blinded-ids", bytes(32 * n), purpose="alignment", rows=n)
            exchange(plat, bank, "psi-blinded-ids", bytes(32 * 2000), purpose="alignment",
                     rows=2000)
            exchange(bank, plat, "psi-result", b"d%d" % size, purpose="alignment", rows=size)
            exchange(plat, bank, "psi-result", b"D%d" % size, purpose="alignment", rows=size)
            for r in range(1, 3):
                exchange(bank, plat, "control", b"open%d" % r, purpose="training", round_=r)
                for batch in range(3):
                    exchange(plat, bank, "embeddings", b"e" * 4000 + bytes([r, batch]),
                             purpose="training", round_=r)
                    exchange(bank, plat, "gradients", b"g" * 4000 + bytes([r, batch]),
                             purpose="training", round_=r)
                exchange(coord, bank, "model", b"fit%d" % r, purpose="federation",
                         round_=r)
                exchange(bank, coord, "model-update", b"u" * 2500 + bytes([r]),
                         purpose="federation", round_=r)
            exchange(bank, coord, "metrics", b"metrics", purpose="federation", round_=2)
        for r in range(1, 3):
            exchange(coord, plat, "federation-control", b"start%d" % r, purpose="federation",
                     round_=r)
            exchange(plat, coord, "federation-control", b"ok%d" % r, purpose="federation",
                     round_=r)
        for q in range(5):  # bank-1 scores 5 requests; the platform answers 4
            exchange(b1, plat, "embedding-query", b"q" * 300 + bytes([q]), purpose="scoring")
            if q != 3:
                exchange(plat, b1, "embeddings", b"a" * 200 + bytes([q]), purpose="scoring")
        if hostile:
            exchange(b2, plat, HOSTILE, b"evil", purpose=HOSTILE)
    return folders


class Page(HTMLParser):
    """Tags, the SVG's edge groups with their label text, and every table's cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.edges: list[dict[str, str | None]] = []
        self.edge_text: list[list[str]] = []
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._in_edge = 0
        self._cell: list[str] | None = None
        self.svg_open = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "svg":
            self.svg_open += 1
        if tag == "g" and "edge" in (a.get("class") or "").split():
            self.edges.append(a)
            self.edge_text.append([])
            self._in_edge += 1
        elif tag == "g" and self._in_edge:
            self._in_edge += 1
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "g" and self._in_edge:
            self._in_edge -= 1
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        if tag == "svg":
            self.svg_open -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_edge:
            self.edge_text[-1].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table_with(self, header: str) -> list[list[str]]:
        return next(t for t in self.tables if t and header in t[0])

    def rows_by(self, header: str) -> dict[str, list[str]]:
        """A table's rows keyed by their first cell."""
        return {r[0]: r for r in self.table_with(header)[1:]}


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def run_report(kits: Kits, folders: list[Path], out: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(audit_app, [
        "report", *map(str, folders), "--kit", str(kits.root / "bank-2"), "--out", str(out),
        *extra])
    return result.exit_code, result.output


def test_a_verified_federation_renders_every_boundary(kits: Kits, tmp_path: Path) -> None:
    folders = build_federation(kits, tmp_path / "ledgers")
    code, output = run_report(kits, folders, tmp_path / "out")
    assert code == 0, output
    html_path, md_path = tmp_path / "out" / "report.html", tmp_path / "out" / "report.md"
    assert output.split() == [str(html_path), str(md_path)]
    page = parse(html_path)
    text = " ".join(page.text)
    assert "Ledgers verified" in text and "FAILED" not in text
    # no script, nothing fetched: the page opens offline from a file
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    assert page.tags.count("svg") == 1 and page.svg_open == 0
    assert not re.search(r"(src|href)=\"?https?:", html_path.read_text())

    # one arrow per (sender, receiver) that carried traffic, and nothing else
    report = verify_ledgers(folders, {n: p.verify_key
                                      for n, p in kits.by_party["platform"].peers.items()})
    pairs = {(s, r) for s, r, _ in report.traffic}
    assert len(pairs) == 2 * 2 + 2 * 2 + 2  # platform<->banks, banks<->coordinator, top band
    drawn = [(e["data-from"], e["data-to"]) for e in page.edges]
    assert sorted(drawn) == sorted(pairs)
    labels = {(e["data-from"], e["data-to"]): " ".join(t)
              for e, t in zip(page.edges, page.edge_text, strict=True)}
    p_b1 = labels[("platform", "bank-1")]
    # 6 training + 4 scoring answers of (4002 | 201) bytes
    assert f"embeddings: 10 msg, {human_bytes(6 * 4002 + 4 * 201)}" in p_b1
    assert "psi-blinded-ids: 2 msg" in p_b1 and "2,000 rows" in p_b1
    assert "psi-result: 1 msg" in p_b1 and "700 rows" in p_b1
    assert "mTLS + AES-256-GCM" in p_b1
    assert "embedding-query: 5 msg" in labels[("bank-1", "platform")]
    assert "TLS + SecAgg+" in labels[("bank-2", "coordinator")]
    assert "model-update: 2 msg" in labels[("bank-2", "coordinator")]
    assert "federation-control: 2 msg" in labels[("coordinator", "platform")]

    traffic = [r for r in page.table_with("protection")[1:]]
    row = next(r for r in traffic if r[:3] == ["bank-1", "platform", "gradients"])
    assert row[3] == "6" and row[5] == f"{6 * 4002:,}" and row[7] == "mTLS + AES-256-GCM"
    row = next(r for r in traffic if r[:3] == ["bank-1", "platform", "psi-blinded-ids"])
    assert row[4] == "1,000" and row[5] == f"{40 + 32_000:,}"
    kinds = page.rows_by("what it carries")
    assert kinds["model-update"][2] == "TLS + SecAgg+" and "psi-result" in kinds
    assert len(kinds) == len({k for _, _, k in report.traffic})

    parties = page.rows_by("role")
    assert parties["bank-1"][1] == "bank" and parties["coordinator"][1] == "coordinator"
    psi = page.rows_by("latest intersection")
    assert psi["bank-1"][1:3] == ["1", "700"] and psi["bank-2"][1:3] == ["1", "450"]
    scoring = page.rows_by("answers")
    assert scoring["bank-1"][1] == "5" and scoring["bank-1"][4] == "4"
    assert scoring["bank-1"][6] == "not known" and scoring["bank-2"][1] == "0"
    assert "Differential privacy off" in text and "Not measured here" in text

    md = md_path.read_text()
    assert "```mermaid" in md and "flowchart LR" in md and "Ledgers verified" in md
    assert "| bank-1 | platform | psi-blinded-ids, gradients, embedding-query, control, " \
           "psi-result | 16 |" in md
    assert "| bank-1 | 1 | 700 | 700 | 700 |" in md


def test_a_tampered_ledger_fails_in_red_and_exits_1(kits: Kits, tmp_path: Path) -> None:
    folders = build_federation(kits, tmp_path / "ledgers")
    path = folders[1] / LEDGER_FILE
    data = bytearray(path.read_bytes())
    at = data.index(b'"bytes":') + len(b'"bytes":')
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    path.write_bytes(bytes(data))
    code, output = run_report(kits, folders, tmp_path / "out")
    assert code == 1
    assert "FAILED" in output and str(tmp_path / "out" / "report.html") in output
    page = parse(tmp_path / "out" / "report.html")
    html_text = (tmp_path / "out" / "report.html").read_text()
    # the banner is the first thing after the title, and red
    assert re.search(r'</h1>\s*<div class="banner bad"[^>]*><strong>Verification FAILED',
                     html_text)
    text = " ".join(page.text)
    assert f"{path}:1 seq 0: signature does not verify" in text
    assert "recorded by the receiver only" in text  # what bank-1 sent is now one-sided
    ledgers = page.rows_by("chain")
    assert ledgers[str(folders[1])][3] == "1 problem(s)"
    assert ledgers[str(folders[0])][3] == "ok"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Verification FAILED" in md.split("\n\n")[1]


def test_refusals_privacy_and_leakage_are_shown(kits: Kits, tmp_path: Path) -> None:
    folders = build_federation(kits, tmp_path / "ledgers")
    state = tmp_path / "platform-state"
    state.mkdir()
    refusals = [
        {"time": 1.7e9, "peer": "bank-1", "status": "PERMISSION_DENIED", "reason": "expired",
         "token_id": "tok-1"},
        {"time": 1.7e9 + 5, "peer": "bank-1", "status": "PERMISSION_DENIED",
         "reason": "expired", "token_id": "tok-2"},
        {"time": 1.7e9 + 9, "peer": "bank-2", "status": "INVALID_ARGUMENT",
         "reason": "malformed: bad seq", "token_id": None},
    ]
    (state / REFUSALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in refusals)
                                       + "not json\n")
    run = tmp_path / "run"
    run.mkdir()
    privacy = [{"round": r, "mechanism": m, "noise_multiplier": 1.1, "clip": 1.0,
                "delta": 1e-5, "releases": 3 * r, "epsilon": 0.5 * r + (m == "bank-updates")}
               for r in (1, 2) for m in ("bank-updates", "platform-embeddings")]
    (run / PRIVACY_FILE).write_text("".join(json.dumps(p) + "\n" for p in privacy))
    leak = {"settings": [
        {"name": "no DP", "embedding_noise": 0.0, "update_noise": 0.0,
         "inversion_r2": {"income": 0.81, "age": 0.12, "mean_r2": 0.465},
         "label_attack_auc": {"norm_auc": 0.93, "cosine_auc": 0.99}, "auc": 0.7712,
         "auc_cost": 0.0, "epsilon": None},
        {"name": "σ=1.1", "embedding_noise": 1.1, "update_noise": 1.1,
         "inversion_r2": {"income": 0.05, "age": -0.02, "mean_r2": 0.015},
         "label_attack_auc": {"norm_auc": 0.55, "cosine_auc": 0.51}, "auc": 0.7411,
         "auc_cost": 0.0301, "epsilon": 3.2},
    ], "ledger_overhead": 0.021, "seed": 7}
    leakage = tmp_path / "privacy.out"
    leakage.write_text("training... epoch 1\nsome log line\n" + json.dumps(leak) + "\n")
    code, output = run_report(kits, folders, tmp_path / "out", "--platform-state", str(state),
                              "--run-dir", str(run), "--leakage", str(leakage))
    assert code == 0, output
    assert "1 line(s) are not refusal records" in output
    page = parse(tmp_path / "out" / "report.html")
    text = " ".join(page.text)
    scoring = page.rows_by("answers")
    assert scoring["bank-1"][6] == "2" and scoring["bank-2"][6] == "1"
    reasons = page.table_with("reason")
    assert ["bank-1", "PERMISSION_DENIED", "expired", "2"] in reasons
    assert ["bank-2", "INVALID_ARGUMENT", "malformed: bad seq", "1"] in reasons
    latest = page.table_with("consent token")
    assert latest[1][1] == "bank-2" and latest[-1][4] == "tok-1"

    assert "Differential privacy off" not in text
    budget = page.table_with("noise multiplier")
    assert ["2", "bank-updates", "1.100", "1.000", "1e-05", "6", "2.00"] in budget
    assert len(budget) == 1 + 4
    assert "ε = 2.00 at δ = 1e-05 after round 2" in text  # bank-updates, last round

    settings = page.rows_by("inversion R² (mean)")
    assert settings["no DP"][6:9] == ["0.465", "0.930", "0.990"]
    assert settings["no DP"][3] == "∞ (no DP)" and settings["σ=1.1"][3] == "3.20"
    assert settings["σ=1.1"][5] == "0.0301"
    per_feature = page.rows_by("feature")
    assert per_feature["income"][1:] == ["0.810", "0.050"]
    assert per_feature["age"][1:] == ["0.120", "-0.020"]
    assert "out-of-sample" in text and "0.5 = no leakage" in text
    assert "ledger overhead: +2.1% of run time" in text and "seed: 7" in text


def test_zero_noise_or_no_privacy_file_is_dp_off(kits: Kits, tmp_path: Path) -> None:
    folders = build_federation(kits, tmp_path / "ledgers")
    run = tmp_path / "run"
    run.mkdir()
    code, _ = run_report(kits, folders, tmp_path / "a", "--run-dir", str(run))
    assert code == 0
    text = " ".join(parse(tmp_path / "a" / "report.html").text)
    assert "Differential privacy off" in text and f"no {PRIVACY_FILE} in {run}" in text
    (run / PRIVACY_FILE).write_text(json.dumps(
        {"round": 1, "mechanism": "bank-updates", "noise_multiplier": 0.0, "clip": 1.0,
         "delta": 1e-5, "releases": 0, "epsilon": 0.0}) + "\n")
    code, _ = run_report(kits, folders, tmp_path / "b", "--run-dir", str(run))
    assert code == 0
    text = " ".join(parse(tmp_path / "b" / "report.html").text)
    assert "Differential privacy off" in text and "every noise multiplier is 0" in text


def test_hostile_strings_from_files_are_escaped(kits: Kits, tmp_path: Path) -> None:
    folders = build_federation(kits, tmp_path / "ledgers", hostile=True)
    state = tmp_path / "state"
    state.mkdir()
    (state / REFUSALS_FILE).write_text(json.dumps(
        {"time": 1.7e9, "peer": "bank-2", "status": "<b>X</b>",
         "reason": '"><img src=x onerror=alert(1)>', "token_id": HOSTILE}) + "\n")
    leakage = tmp_path / "leak.json"
    leakage.write_text(json.dumps({"settings": [
        {"name": HOSTILE, "embedding_noise": 0, "update_noise": 0,
         "inversion_r2": {HOSTILE: 0.1, "mean_r2": 0.1},
         "label_attack_auc": {"norm_auc": 0.5, "cosine_auc": 0.5}, "auc": 0.7,
         "auc_cost": 0, "epsilon": None}]}))
    code, output = run_report(kits, folders, tmp_path / "out", "--platform-state", str(state),
                              "--leakage", str(leakage))
    assert code == 0, output
    raw = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in raw and "<img" not in raw and "<b>X" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    page = parse(tmp_path / "out" / "report.html")
    assert not {"script", "img", "b"} & set(page.tags)
    # the hostile kind is drawn as what it is: an unknown kind, in the traffic and the SVG
    row = next(r for r in page.table_with("protection")[1:] if r[2] == HOSTILE)
    assert row[7] == "unknown"
    assert any(HOSTILE in " ".join(t) for t in page.edge_text)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "<script" not in md and "<img" not in md and "&lt;script&gt;" in md
    mermaid = md.split("```mermaid")[1].split("```")[0]
    assert "<" not in mermaid and "#lt;script#gt;" in mermaid


def test_unknown_peers_are_listed_and_several_folders_per_party_count(
    kits: Kits, tmp_path: Path
) -> None:
    """A bank's scoring server keeps its own ledger (same party, another folder); a peer
    outside the manifest has no place in the layout and is listed in red."""
    folders = build_federation(kits, tmp_path / "ledgers")
    scoring = tmp_path / "ledgers" / "bank-2-scoring"
    with kits.ledger(scoring, "bank-2") as b2s:
        for q in range(3):
            b2s.record("platform", "sent", "embedding-query", b"s%d" % q, purpose="scoring")
        b2s.record("unauthenticated(ipv4:10.0.0.9:4711)", "received", "score", b"x",
                   purpose="scoring")
    peers = kits.by_party["platform"].peers
    keys = {n: p.verify_key for n, p in peers.items()}
    every = [*folders, scoring]
    messages, summary = collect_messages(every, keys)
    assert [(p, n, bad) for _, p, n, bad in summary][-1] == ("bank-2", 4, 0)
    queries = [m for m in messages if m.entry.kind == "embedding-query"]
    assert sum(m.sender == "bank-2" for m in queries) == 3  # sender-only: still counted
    assert sum(m.sender == "bank-1" for m in queries) == 5  # both ends recorded: once
    data = build_report(federation="f", parties={n: p.role for n, p in peers.items()},
                        keys=keys, folders=every, audit=verify_ledgers(every, keys))
    by_bank = {s.bank: s for s in data.scoring}
    assert by_bank["bank-2"].queries == 3 and by_bank["bank-1"].queries == 5
    page = Page()
    page.feed(render_html(data))
    other = [e for e in page.edges if "other" in (e.get("class") or "")]
    assert [(e["data-from"], e["data-to"]) for e in other] == [
        ("unauthenticated(ipv4:10.0.0.9:4711)", "bank-2")]
    assert any("not in the manifest" in " ".join(t) for t in page.edge_text)


def test_the_psi_done_message_is_a_psi_result_with_the_intersection_size() -> None:
    done = psi_pb2.IntersectResponse(done=psi_pb2.PsiDone(intersection_size=1234,
                                                          intersection_digest=bytes(32)))
    assert default_rows(done) == 1234
    assert message_kind("psi-blinded-ids", done) == "psi-result"
    points = psi_pb2.IntersectRequest(blinded=psi_pb2.PsiPoints(points=bytes(64)))
    assert message_kind("psi-blinded-ids", points) == "psi-blinded-ids"
    assert message_kind("echo-request", done) == "echo-request"  # a custom kind_of stands


def test_the_command_is_registered_and_refusals_file_name_matches() -> None:
    from platform_node.embedding_service import REFUSALS_FILE as PLATFORM_REFUSALS

    assert REFUSALS_FILE == PLATFORM_REFUSALS
    result = CliRunner().invoke(app, ["audit", "report", "--help"])
    assert result.exit_code == 0
    for option in ("--kit", "--out", "--platform-state", "--run-dir", "--leakage"):
        assert option in result.output
