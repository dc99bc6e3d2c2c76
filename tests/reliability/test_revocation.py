"""Revocation, rotation and expiry warnings (issue 15, item 7), through the real servers.

A bank revoked with ``fedscore provision revoke`` is refused by the platform on every call
once the platform reloads (PSI, its open scoring session, round control), by its own
scoring path (the platform no longer answers it: the policy's fallback), and by the
coordinator's identity check behind the SuperLink; its ledger, written before, still
verifies with the key kept in the manifest's history. A bank rotated with ``fedscore
provision rotate`` works with its new kit at once and is refused with its old one, while
no other party is re-keyed. An older manifest or revocation list never replaces a newer
one. Nodes warn ahead of their certificates' expiry (log and health answer), tested with
an injected clock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import typer
from flwr.app import ArrayRecord, RecordDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from bank_node.policy import Policy
from bank_node.psi_client import run_psi
from bank_node.scoring_platform import SCORING_ROUND
from bank_node.scoring_service import build_scorer
from bank_node.scoring_service import create_server as create_scoring_server
from bank_node.scoring_store import CustomerStore
from fedscore.api.v1 import (
    embedding_pb2,
    embedding_pb2_grpc,
    round_control_pb2,
    round_control_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)
from fedscore.audit.verify import verify_ledgers
from fedscore.crypto.primitives import (
    Direction,
    Sealer,
    WindowOpener,
    derive_session_key,
)
from fedscore.crypto.psi import PsiError
from fedscore.federation.provision import (
    CA_DIR,
    CRL,
    MANIFEST,
    MANIFEST_SIG,
    KitError,
    ProvisionError,
    StartupKit,
    expiry_warnings,
    load_kit,
    log_expiry,
    provision,
    reload_trust,
    revoke,
    rotate,
)
from fedscore.ledger.grid import IdentityError, LedgeredGrid
from fedscore.ledger.writer import Ledger
from fedscore.wire import serde
from fedscore.wire.health import DETAIL_KEY, Readiness
from fedscore.wire.transport import GRPC_OPTIONS, add_secure_port, secure_channel
from platform_node.server import PlatformNode
from platform_node.server import create_server as create_platform_server
from tests.conftest import Federation, seeded_release
from tests.ledger.test_grid import FakeGrid, bank_node

TRUST_FILES = (MANIFEST, MANIFEST_SIG, CRL)


@dataclass
class Fed:
    """A copy of the session federation's kits (so revoking here touches no other test)
    and a platform node on them, with one committed bottom-model version."""

    federation: Federation
    kits: Path
    platform: StartupKit
    node: PlatformNode
    address: str
    version: str

    def kit(self, party: str) -> StartupKit:
        return load_kit(self.kits / party)


@pytest.fixture()
def fed(federation: Federation, tmp_path: Path) -> Iterator[Fed]:
    kits = tmp_path / "kits"
    shutil.copytree(federation.kits, kits)
    platform = load_kit(kits / "platform")
    node = PlatformNode(platform, federation.platform_table(), state_dir=tmp_path / "state")
    version = node.federation.store.save("scoring", 1, node.initial_weights(seed=11))
    server, port = create_platform_server("127.0.0.1:0", node)
    server.start()
    try:
        yield Fed(federation, kits, platform, node, f"127.0.0.1:{port}", version)
    finally:
        server.stop(grace=None)


def _psi(fed: Fed, kit: StartupKit) -> bytes:
    """A scoring session of ``kit``'s bank with the platform: its id."""
    return _psi_at(fed.federation, fed.address, kit)


def _psi_at(federation: Federation, address: str, kit: StartupKit) -> bytes:
    ids = CustomerStore.load_table(federation.data.bank_dirs[kit.party]).ids
    with secure_channel(address, kit, "platform") as channel:
        return run_psi(channel, ids, party=kit.party).session_id


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    details: str


def _refused(call: Callable[[], Any]) -> Refusal:
    """How ``call`` was refused: a gRPC error, or PSI's error carrying the call's code."""
    with pytest.raises((grpc.RpcError, PsiError)) as err:
        call()
    if isinstance(err.value, PsiError):
        return Refusal(err.value.code, str(err.value))
    assert isinstance(err.value, grpc.Call)
    return Refusal(err.value.code(), err.value.details() or "")


def _embeddings(fed: Fed, kit: StartupKit, session_id: bytes) -> np.ndarray:
    """Three rows of embeddings in ``session_id``, sealed and opened under the session key
    derived from ``kit``'s sealing key and the platform's: the platform must know the
    bank's current sealing key to answer."""
    key = derive_session_key(kit.sealing_key, kit.peer("platform").sealing_public,
                             session_id).for_scoring()
    sealer = Sealer(key, session_id, Direction.BANK_TO_PLATFORM)
    handles = np.arange(3)
    query = embedding_pb2.EmbeddingQuery(
        platform_model_version=fed.version, handles=serde.handles_to_bytes(handles),
        purpose=embedding_pb2.SCORING_PURPOSE_APPLICATION)
    box = sealer.seal(query.SerializeToString(), round=SCORING_ROUND, batch=sealer.next_seq)
    with secure_channel(fed.address, kit, "platform") as channel:
        reply = embedding_pb2_grpc.EmbeddingServiceStub(channel).GetEmbeddings(
            embedding_pb2.GetEmbeddingsRequest(sealed=serde.sealed_to_pb(box)), timeout=10)
    opened = WindowOpener(key, session_id, Direction.PLATFORM_TO_BANK).open(
        serde.sealed_from_pb(reply.sealed), round=SCORING_ROUND)
    answer = embedding_pb2.EmbeddingAnswer.FromString(opened)
    return serde.tensor_from_pb(answer.embeddings, rows=handles.size)


def test_a_revoked_bank_is_refused_by_the_platform_on_every_call(fed: Fed) -> None:
    """transport.refuse_revoked (via peer_party and authorize_peer), after the platform's
    reload: PSI, GetEmbeddings in its open session (on a connection opened before the
    revocation) and round control all answer UNAUTHENTICATED; bank-1 goes on."""
    bank2 = fed.kit("bank-2")
    session = _psi(fed, bank2)
    assert _embeddings(fed, bank2, session).shape[0] == 3
    channel = secure_channel(fed.address, bank2, "platform")  # stays open throughout
    embeddings = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    rounds = round_control_pb2_grpc.RoundControlServiceStub(channel)

    update = revoke(fed.kits, "bank-2")
    assert update.crl_number == 2 and update.version == 2
    assert fed.kits / "bank-2" not in update.updated_kits  # its own kit is left as it was
    _psi(fed, bank2)  # a node goes by the list it loaded until it reloads
    new = reload_trust(fed.platform)
    assert "bank-2" not in new.peers and update.revoked_serial in new.revoked

    err = _refused(lambda: _psi(fed, bank2))
    assert err.code is grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.details
    err = _refused(lambda: _embeddings(fed, bank2, session))
    assert err.code is grpc.StatusCode.UNAUTHENTICATED
    err = _refused(lambda: embeddings.GetEmbeddings(embedding_pb2.GetEmbeddingsRequest(),
                                                   timeout=10))
    assert err.code is grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.details
    err = _refused(lambda: rounds.CloseSession(
        round_control_pb2.CloseSessionRequest(session_id=session), timeout=10))
    assert err.code is grpc.StatusCode.UNAUTHENTICATED
    channel.close()

    bank1 = fed.kit("bank-1")
    assert _embeddings(fed, bank1, _psi(fed, bank1)).shape[0] == 3
    with pytest.raises(ProvisionError, match=r"not a current party.*revoked"):
        revoke(fed.kits, "bank-2")


def test_a_revoked_banks_scoring_path_gets_no_platform_answer(fed: Fed,
                                                            tmp_path: Path) -> None:
    """The scoring path: bank-2's scoring server, aligned before the revocation, scores a
    customer of the intersection jointly; once the platform reloads, it gets no platform
    answer (the platform refuses its session and a new PSI) and answers with its
    policy's fallback instead. Its (aio) health answer carries the node's warnings."""
    bank2 = fed.kit("bank-2")
    bank_dir = fed.federation.data.bank_dirs["bank-2"]
    release = seeded_release(fed.federation, bank_dir, tmp_path / "release", fed.version,
                             seed=3)
    scorer = build_scorer(bank2, bank_dir, release, fed.address, Policy.default())
    server, port = create_scoring_server("127.0.0.1:0", scorer, bank2)
    server.start()
    users = set(fed.node.table.ids)
    inside = [str(i) for i in CustomerStore.load_table(bank_dir).ids if i in users]
    try:
        with secure_channel(f"127.0.0.1:{port}", bank2, "bank-2") as channel:
            stub = scoring_pb2_grpc.ScoringServiceStub(channel)
            before = stub.Score(scoring_pb2.ScoreRequest(applicant_id=inside[0]), timeout=30)
            assert before.platform == scoring_pb2.PLATFORM_PART_JOINED
            revoke(fed.kits, "bank-2")
            reload_trust(fed.platform)
            after = stub.Score(scoring_pb2.ScoreRequest(applicant_id=inside[1]), timeout=30)
            assert after.platform == scoring_pb2.PLATFORM_PART_UNAVAILABLE
            assert after.fallback
            # the scoring server's (aio) health answer carries the node's warnings too
            server.set_details(lambda: ["bank-2's TLS certificate expires soon"])
            _, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
                health_pb2.HealthCheckRequest(), timeout=10)
            assert (DETAIL_KEY, b"bank-2's TLS certificate expires soon") in list(
                call.trailing_metadata() or ())
    finally:
        server.stop(grace=None)


def _model() -> RecordDict:
    return RecordDict({"model": ArrayRecord([np.arange(4, dtype=np.float32)])})


def test_the_coordinator_refuses_a_revoked_banks_supernode(tmp_path: Path) -> None:
    """Behind the SuperLink: the coordinator reads the kit at each run, and its identity
    challenge (LedgeredGrid._check_identity) refuses a SuperNode proving to be the revoked
    bank (PERMISSION_DENIED, "revoked"), while the same grid accepts bank-1."""
    provision(tmp_path / "kits", parties=("platform", "bank-1", "bank-2", "coordinator"))
    revoke(tmp_path / "kits", "bank-2")
    coordinator = load_kit(tmp_path / "kits" / "coordinator")
    with Ledger(tmp_path / "state" / "coordinator", coordinator.signing_key,
                "coordinator") as ledger:
        grid = LedgeredGrid(FakeGrid({11: bank_node(tmp_path, "bank-1")}), ledger, coordinator)
        grid.send_and_receive([grid.create_message(_model(), "train", 11, "1")])
        assert grid.names == {11: "bank-1"}
    with Ledger(tmp_path / "state" / "coordinator-2", coordinator.signing_key,
                "coordinator") as ledger:
        grid = LedgeredGrid(FakeGrid({22: bank_node(tmp_path, "bank-2")}), ledger, coordinator)
        with pytest.raises(IdentityError, match=r"not a bank.*revoked") as err:
            grid.send_and_receive([grid.create_message(_model(), "train", 22, "1")])
    assert err.value.code is grpc.StatusCode.PERMISSION_DENIED


def _write_ledger(folder: Path, kit: StartupKit, n: int = 5) -> None:
    with Ledger(folder, kit.signing_key, kit.party) as ledger:
        for i in range(n):
            ledger.record_digest("platform", "sent", "embedding-query",
                                 hashlib.sha256(bytes([i])).hexdigest(), 40 + i, rows=1)


def _audit(folders: list[Path], kit: Path) -> tuple[int, str]:
    from fedscore.cli.audit import audit_app

    app = typer.Typer()
    app.add_typer(audit_app, name="audit")
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["audit", "verify", *map(str, folders), "--kit", str(kit)])
    return res.exit_code, res.output


def test_old_ledger_entries_still_verify_after_revocation_and_rotation(tmp_path: Path) -> None:
    """The revoked bank-2's and the rotated bank-1's ledgers, written before, verify with
    `fedscore audit verify` and another party's kit, by the keys kept in the manifest's
    history; with the current keys alone they would not (bank-2 is no party now, bank-1's
    key changed). An entry altered afterwards is still caught."""
    kits = provision(tmp_path / "kits", parties=("platform", "bank-1", "bank-2",
                                                 "coordinator"))
    old1, old2 = tmp_path / "ledger-bank-1", tmp_path / "ledger-bank-2"
    _write_ledger(old1, load_kit(kits / "bank-1"))
    _write_ledger(old2, load_kit(kits / "bank-2"))
    revoke(kits, "bank-2")
    rotate(kits, "bank-1")
    platform = load_kit(kits / "platform")
    assert [h.reason for h in platform.trust.history] == ["revoked", "rotated"]

    code, output = _audit([old1, old2], kits / "platform")
    assert code == 0, output
    current_only = {n: p.verify_key for n, p in platform.peers.items()}
    report = verify_ledgers([old1, old2], current_only)
    assert not report.ok and any("not a party" in p for p in report.problems)
    assert any("bank-1" in p for p in report.problems)

    lines = (old2 / "ledger.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"bytes":41', '"bytes":42')
    (old2 / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    code, output = _audit([old2], kits / "platform")
    assert code == 1


def test_a_rotated_bank_works_with_its_new_kit_and_not_with_its_old_one(fed: Fed,
                                                                      tmp_path: Path) -> None:
    """rotate: a new kit for bank-2 from the same CA; the platform, after a reload, serves
    it (PSI, and sealed embeddings under its new sealing key) and refuses its old
    certificate; the old kit with the new manifest does not even load; bank-1 is not
    re-keyed and keeps working, and its own reload learns bank-2's new keys."""
    old_dir = shutil.copytree(fed.kits / "bank-2", tmp_path / "old-bank-2")
    old = load_kit(old_dir)
    bank1_before = fed.kit("bank-1")
    update = rotate(fed.kits, "bank-2")
    assert fed.kits / "bank-2" in update.updated_kits
    new = fed.kit("bank-2")
    assert new.cert_pem != old.cert_pem and new.ca_pem == old.ca_pem
    assert new.peers["bank-2"].sealing_public != old.peers["bank-2"].sealing_public
    bank1 = fed.kit("bank-1")
    assert bank1.cert_pem == bank1_before.cert_pem
    assert bank1.peers["bank-1"] == bank1_before.peers["bank-1"]

    reload_trust(fed.platform)
    assert _embeddings(fed, new, _psi(fed, new)).shape[0] == 3
    err = _refused(lambda: _psi(fed, old))
    assert err.code is grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.details
    assert _embeddings(fed, bank1_before, _psi(fed, bank1_before)).shape[0] == 3

    reload_trust(bank1_before)
    assert bank1_before.peers["bank-2"] == new.peers["bank-2"]
    for name in TRUST_FILES:
        shutil.copy(fed.kits / CA_DIR / name, old_dir / name)
    with pytest.raises(KitError, match="does not match bank-2's"):
        load_kit(old_dir)


def test_an_older_manifest_or_revocation_list_cannot_replace_a_newer_one(
    fed: Fed, tmp_path: Path
) -> None:
    """reload_trust and load_kit: after a revocation, the earlier manifest and list put
    back in the platform's kit are refused on reload (the loaded ones stay: bank-2 is
    still refused); a newer manifest with an older list, or a list signed by another CA,
    does not load."""
    kit_dir = fed.kits / "platform"
    earlier = {name: (kit_dir / name).read_bytes() for name in TRUST_FILES}
    revoke(fed.kits, "bank-2")
    assert reload_trust(fed.platform).crl_number == 2
    newer = {name: (kit_dir / name).read_bytes() for name in TRUST_FILES}

    for name, data in earlier.items():
        (kit_dir / name).write_bytes(data)
    with pytest.raises(KitError, match="older than the loaded version 2"):
        reload_trust(fed.platform)
    assert fed.platform.trust.crl_number == 2 and "bank-2" not in fed.platform.peers
    err = _refused(lambda: _psi(fed, load_kit(fed.kits / "bank-2")))
    assert err.code is grpc.StatusCode.UNAUTHENTICATED

    (kit_dir / MANIFEST).write_bytes(newer[MANIFEST])
    (kit_dir / MANIFEST_SIG).write_bytes(newer[MANIFEST_SIG])
    with pytest.raises(KitError, match=r"older than the 2 that federation.json"):
        load_kit(kit_dir)
    other = provision(tmp_path / "other", parties=("platform", "bank-1"), federation="other")
    (kit_dir / CRL).write_bytes((other / CA_DIR / CRL).read_bytes())
    with pytest.raises(KitError, match="not signed by the kit's CA"):
        load_kit(kit_dir)
    (kit_dir / CRL).unlink()
    with pytest.raises(KitError, match=r"revoked.crl: missing"):
        load_kit(kit_dir)


T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_expiry_warnings_appear_at_the_threshold(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """expiry_warnings with an injected clock: nothing 31 days before the 365-day
    certificates expire, a line for the TLS and the CA certificate at 30 (the default
    threshold, or at a configured one), logged at WARNING."""
    kits = provision(tmp_path / "kits", parties=("platform", "bank-1", "coordinator"), now=T0)
    kit = load_kit(kits / "bank-1", now=T0)
    end = x509_end(kit)
    assert end == T0 + timedelta(days=365)
    assert expiry_warnings(kit, now=end - timedelta(days=31)) == []
    lines = expiry_warnings(kit, now=end - timedelta(days=30))
    assert len(lines) == 2 and all("in 30 days" in line for line in lines)
    assert "TLS certificate" in lines[0] and "provision rotate --party bank-1" in lines[0]
    assert "CA certificate" in lines[1]
    assert len(expiry_warnings(kit, now=end - timedelta(days=31), within_days=45)) == 2
    assert expiry_warnings(kit, now=end - timedelta(days=5), within_days=0) == []
    with caplog.at_level(logging.WARNING):
        log_expiry(kit, logging.getLogger("fedscore.test"), now=end - timedelta(days=1))
    assert [r.getMessage() for r in caplog.records if "in 1 day;" in r.getMessage()]


def x509_end(kit: StartupKit) -> datetime:
    from cryptography import x509

    return x509.load_pem_x509_certificate(kit.cert_pem).not_valid_after_utc


def test_the_expiry_warning_is_in_the_health_answer(fed: Fed) -> None:
    """A node's health answer carries the warning once its (injected) clock is within the
    threshold, and `fedscore health` prints it after the status."""
    from fedscore.cli.health import health_command

    kit = fed.platform
    end = x509_end(kit)
    clock = [end - timedelta(days=31)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=GRPC_OPTIONS)
    readiness = Readiness(server, ())
    port = add_secure_port(server, "127.0.0.1:0", kit)
    server.start()
    readiness.ready(lambda s: None)
    readiness.set_details(lambda: expiry_warnings(kit, now=clock[0], within_days=30))
    app = typer.Typer()
    app.command("health")(health_command)
    app.command("noop")(lambda: None)
    args = ["health", f"127.0.0.1:{port}", "--kit", str(fed.kits / "bank-1")]
    try:
        quiet = CliRunner().invoke(app, args)
        assert quiet.exit_code == 0 and quiet.output.strip() == "SERVING", quiet.output
        clock[0] = end - timedelta(days=29)
        warned = CliRunner().invoke(app, args)
    finally:
        server.stop(grace=None)
    assert warned.exit_code == 0, warned.output
    assert warned.output.startswith("SERVING\nwarning: platform's TLS certificate")
    assert "in 29 days" in warned.output


def test_sighup_makes_a_running_platform_refuse_a_revoked_bank(federation: Federation,
                                                                tmp_path: Path) -> None:
    """A real ``fedscore platform serve`` process: with ``--cert-warn-days 400`` (more
    than the certificates' 365 days) it logs the expiry warning at start and `fedscore
    health` prints it; after ``provision revoke``, SIGHUP (platform_node/server.py's
    handler, through reload_trust) makes it refuse bank-2 and keep serving bank-1; an
    older manifest and list put back are refused on the next SIGHUP, and bank-2 stays
    refused."""
    from fedscore.cli.health import health_command
    from tests.bank_node.test_scoring_guards import _Process

    kits = tmp_path / "kits"
    shutil.copytree(federation.kits, kits)
    earlier = {name: (kits / "platform" / name).read_bytes() for name in TRUST_FILES}
    server = _Process([
        sys.executable, "-m", "fedscore.cli.main", "platform", "serve",
        "--kit", str(kits / "platform"), "--data", str(federation.data.platform_features),
        "--schema", str(federation.data.platform_schema), "--address", "127.0.0.1:0",
        "--state-dir", str(tmp_path / "state"), "--cert-warn-days", "400"])
    try:
        warned = server.line("", timeout=90)
        while "expires on" not in warned:
            warned = server.line("")
        assert "platform's TLS certificate" in warned and "warning at 400" in warned
        address = server.line("platform node listening on ").split()[4]
        app = typer.Typer()
        app.command("health")(health_command)
        app.command("noop")(lambda: None)
        health = CliRunner().invoke(app, ["health", address, "--kit", str(kits / "bank-1")])
        assert health.exit_code == 0 and health.output.startswith("SERVING\nwarning: "), \
            health.output

        bank1, bank2 = load_kit(kits / "bank-1"), load_kit(kits / "bank-2")

        def psi(kit: StartupKit) -> bytes:
            return _psi_at(federation, address, kit)

        psi(bank2)
        revoke(kits, "bank-2")
        server.proc.send_signal(signal.SIGHUP)
        said = server.line("trust: ")
        assert said.startswith("trust: manifest version 2, revocation list 2 (1 revoked)"), said
        err = _refused(lambda: psi(bank2))
        assert err.code is grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.details
        psi(bank1)

        for name, data in earlier.items():
            (kits / "platform" / name).write_bytes(data)
        server.proc.send_signal(signal.SIGHUP)
        said = server.line("trust: ")
        assert said.startswith("trust: not reloaded, manifest version 2 and revocation list "
                               "2 stay: "), said
        assert _refused(lambda: psi(bank2)).code is grpc.StatusCode.UNAUTHENTICATED
        psi(bank1)
    finally:
        code = server.stop()
    assert code == 0, "\n".join(server.seen)


@pytest.mark.timeout(240)
def test_the_superlink_drops_a_revoked_banks_supernode(tmp_path: Path) -> None:
    """The SuperLink side, on a real ``flower-superlink`` with SuperNode authentication:
    Flower 1.41 keeps the authorized SuperNode keys in its own database (the key-file
    option is deprecated), so revoking a bank includes ``flwr supernode unregister`` of
    the node id its registration returned. bank-2's SuperNode is online before; after
    ``provision revoke`` and the unregister it is no longer online, and a SuperNode
    started again with bank-2's key is refused ("Failed to activate SuperNode"), while
    bank-1's stays online."""
    from fedscore.cli.deploy import FEDERATION, Process, flower_env, free_ports, local_deployment
    from fedscore.federation.provision import SUPERNODE_KEY, SUPERNODE_PUB
    from tests.cli.test_deployment import _bank, _refused, _tls

    kits = provision(tmp_path / "kits", parties=("bank-1", "bank-2", "coordinator"),
                     supernode_keys=True)
    with local_deployment(tmp_path / "deploy", _tls(kits), [_bank(kits, "bank-1")]
                          ) as deployment:
        def statuses() -> dict[str, str]:
            nodes = json.loads(deployment.flwr("supernode", "list", FEDERATION, "--format",
                                               "json"))["nodes"]
            return {str(n["node-id"]): str(n["status"]) for n in nodes}

        (bank1_id,) = statuses()
        reply = deployment.flwr("supernode", "register", str(kits / "bank-2" / SUPERNODE_PUB),
                                FEDERATION, "--name", "bank-2", "--format", "json")
        bank2_id = str(json.loads(reply)["node-id"])
        cmd = [str(Path(sys.executable).parent / "flower-supernode"), "--superlink",
               deployment.address, "--root-certificates", str(kits / "bank-2" / "ca.crt"),
               "--auth-supernode-private-key", str(kits / "bank-2" / SUPERNODE_KEY),
               "--node-config", 'bank="bank-2"', "--port", str(free_ports(1)[0]),
               "--max-retries", "1"]
        node = Process.start("bank-2", cmd, tmp_path / "bank-2.log", flower_env())
        try:
            deadline = time.monotonic() + 90
            while statuses().get(bank2_id) != "online":
                assert time.monotonic() < deadline, statuses()
                time.sleep(1)
            revoke(kits, "bank-2")
            deployment.flwr("supernode", "unregister", bank2_id, FEDERATION)
            assert statuses().get(bank2_id) != "online", statuses()
        finally:
            node.stop()
        log = _refused("bank-2-again", deployment.address, kits / "bank-2" / "ca.crt",
                       kits / "bank-2" / SUPERNODE_KEY, tmp_path)
        assert "Failed to activate SuperNode" in log
        assert statuses()[bank1_id] == "online"


def test_provision_revoke_and_rotate_commands(tmp_path: Path) -> None:
    """The commands: `fedscore provision revoke` and `rotate` print what they did (the
    revoked serial, the list's number, the kits updated, the SuperLink step); a party that
    is not current, the only platform, or a folder without the CA are refused (exit 1)."""
    from fedscore.cli.main import app

    kits = tmp_path / "kits"
    runner = CliRunner()
    made = runner.invoke(app, ["provision", "--out", str(kits), "-p", "platform", "-p",
                               "bank-1", "-p", "bank-2", "-p", "coordinator",
                               "--supernode-keys"])
    assert made.exit_code == 0, made.output
    serial = format(x509_serial(load_kit(kits / "bank-2")), "x")
    res = runner.invoke(app, ["provision", "revoke", "--out", str(kits), "--party", "bank-2"])
    assert res.exit_code == 0, res.output
    assert f"revoked bank-2: certificate {serial} of bank-2 is on revocation list 2" in res.output
    assert f"updated {kits / 'bank-1'}" in res.output and "flwr supernode unregister" in res.output
    res = runner.invoke(app, ["provision", "rotate", "--out", str(kits), "--party", "bank-1"])
    assert res.exit_code == 0, res.output
    assert "rotated bank-1" in res.output and "revocation list 3" in res.output
    assert "flwr supernode register" in res.output  # bank-1's kit had a SuperNode key pair
    assert load_kit(kits / "bank-1").trust.crl_number == 3
    for args, says in (
        (["revoke", "--party", "bank-2"], "bank-2' is not a current party"),
        (["revoke", "--party", "platform"], "only platform"),
        (["rotate", "--party", "bank-9"], "bank-9' is not a current party"),
    ):
        res = runner.invoke(app, ["provision", *args, "--out", str(kits)])
        assert res.exit_code == 1 and says in res.output, (args, res.output)
    res = runner.invoke(app, ["provision", "revoke", "--out", str(tmp_path / "none"),
                              "--party", "bank-1"])
    assert res.exit_code == 1 and "ca.key: cannot read" in res.output, res.output


def x509_serial(kit: StartupKit) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(kit.cert_pem).serial_number


class _Aborted(Exception):
    pass


class _Context:
    """A servicer context with a given auth context; abort raises, as gRPC's does."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth
        self.status: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise _Aborted(details)


def test_the_revocation_check_needs_the_callers_certificate(tmp_path: Path) -> None:
    """refuse_revoked, where mutual TLS cannot reach: with a revocation list in force, a
    call whose connection shows no client certificate is refused UNAUTHENTICATED rather
    than let through unchecked; a certificate of the list is refused, another passes."""
    from fedscore.wire.transport import peer_party

    kits = provision(tmp_path / "kits", parties=("platform", "bank-1", "bank-2"))
    bank2 = (kits / "bank-2" / "tls.crt").read_bytes()
    bank1 = (kits / "bank-1" / "tls.crt").read_bytes()
    revoke(kits, "bank-2")
    platform = load_kit(kits / "platform")
    ssl = {"transport_security_type": [b"ssl"], "x509_common_name": [b"bank-2"]}
    for auth, says in (({**ssl}, "no client certificate"),
                       ({**ssl, "x509_pem_cert": [bank2]}, "is revoked")):
        context = _Context(auth)
        with pytest.raises(_Aborted, match=says):
            peer_party(context, platform)
        assert context.status is not None
        assert context.status[0] is grpc.StatusCode.UNAUTHENTICATED
    ok = {"transport_security_type": [b"ssl"], "x509_common_name": [b"bank-1"],
          "x509_pem_cert": [bank1]}
    assert peer_party(_Context(ok), platform) == "bank-1"
