"""A bank's side of vertical training: load its table, align with the platform, train, test.

Everything here runs on the bank's machine. What leaves it: blinded ids (PSI), the
gradient with respect to the platform embedding (sealed), and control messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from bank_node.platform_link import GrpcPlatformLink, PlatformError
from bank_node.psi_client import run_psi
from bank_node.retry import Backoff, retrying
from fedscore.atomic import atomic_write
from fedscore.crypto.psi import PsiResult
from fedscore.data.preprocess import Preprocessor
from fedscore.data.table import PartyTable, find_table, load_table
from fedscore.federation.provision import StartupKit
from fedscore.ledger.writer import Ledger
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.metrics import auc, ks
from fedscore.ml.training import (
    BankData,
    EpochCallback,
    TrainConfig,
    TrainedBank,
    predict,
    train_bank_model,
)
from fedscore.wire.transport import secure_channel

log = logging.getLogger(__name__)

SESSION_LOST = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                          grpc.StatusCode.ABORTED})
"""OpenSession's codes for a session the bank cannot go on with (the platform restarted
or closed it, or is past the round asked for): PSI again (as bank_node.federated)."""


@dataclass(frozen=True)
class BankTables:
    """A bank's labelled training and test tables, read with its schema."""

    train: PartyTable
    test: PartyTable

    @classmethod
    def load(cls, data_dir: Path) -> BankTables:
        """The tables in ``data_dir`` (``train.*``, ``test.*``, ``schema.toml``)."""
        schema = data_dir / "schema.toml"
        train = load_table(find_table(data_dir, "train"), schema, require_label=True)
        test = load_table(find_table(data_dir, "test"), schema, require_label=True)
        return cls(train, test)


@dataclass
class BankRunResult:
    """What one bank's vertical run produced; the test PDs and labels stay at the bank."""

    party: str
    n_train: int
    n_test: int
    aligned_train: int
    aligned_test: int
    test_auc: float
    test_ks: float
    best_epoch: int
    epochs_run: int
    psi_seconds: float
    train_seconds: float
    platform_model_version: str
    test_labels: np.ndarray
    test_pd: np.ndarray

    def summary(self) -> dict[str, object]:
        """The result without its per-row arrays, fit for a JSON report."""
        out = asdict(self)
        out.pop("test_labels")
        out.pop("test_pd")
        return out


class Resume:
    """The bank's side of a resumable ``bank train``: its PSI session, the key under which
    the platform keeps its side, and its own state after the last whole epoch, in one
    file (``torch.save``; read back with ``weights_only=True``) written atomically after
    every epoch. It belongs to one data set and one training config (``fingerprint``): a
    file of another is ignored, and the training starts afresh."""

    FILE = "state.pt"

    def __init__(self, folder: Path | None, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.key = secrets.token_hex(16)
        self.psi: PsiResult | None = None
        self.round = 0  # the session round last opened
        self.epoch_state: dict[str, Any] | None = None

    def load(self) -> Resume:
        """Take up what the file holds when it is this training's (else start afresh)."""
        path = self.folder / self.FILE if self.folder is not None else None
        if path is None or not path.is_file():
            return self
        try:
            doc = torch.load(path, weights_only=True)
        except Exception as exc:  # a torn or foreign file: start afresh, say so
            log.warning("%s is unreadable (%s); training starts afresh", path, exc)
            return self
        if doc.get("fingerprint") != self.fingerprint:
            log.warning("%s belongs to another data set or config; training starts afresh",
                        path)
            return self
        self.key, self.round = str(doc["key"]), int(doc["round"])
        self.psi = PsiResult(bytes.fromhex(doc["session_id"]), doc["rows"].numpy(),
                             int(doc["other_size"]))
        self.epoch_state = doc["state"]
        return self

    def save(self) -> None:
        """Write the file (nothing without a folder: the state then lives in memory only)."""
        if self.folder is None or self.psi is None:
            return
        buf = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, "key": self.key, "round": self.round,
                    "session_id": self.psi.session_id.hex(),
                    "rows": torch.from_numpy(np.array(self.psi.rows, np.int64)),
                    "other_size": self.psi.other_size, "state": self.epoch_state}, buf)
        atomic_write(self.folder / self.FILE, buf.getvalue())

    def clear(self) -> None:
        """The training finished: nothing to resume."""
        if self.folder is not None:
            (self.folder / self.FILE).unlink(missing_ok=True)

    @property
    def position(self) -> tuple[str, int]:
        """(pass, whole epochs done in it) the training resumes at; ("search", 0) afresh."""
        if self.epoch_state is None:
            return "search", 0
        return str(self.epoch_state["phase"]), int(self.epoch_state["pass"]["epoch"]) + 1


def _fingerprint(tables: BankTables, preprocessor: Preprocessor, cfg: TrainConfig,
                 party: str) -> str:
    """What a resumed training must share with the one it resumes (never sent)."""
    h = hashlib.sha256()
    for part in (party, preprocessor.fingerprint(),
                 json.dumps(asdict(cfg), sort_keys=True)):
        h.update(part.encode() + b"\0")
    for ids in (tables.train.ids, tables.test.ids):
        h.update("\n".join(map(str, ids)).encode() + b"\0")
    return h.hexdigest()


def run_bank(
    kit: StartupKit,
    data_dir: Path,
    platform_address: str,
    cfg: TrainConfig,
    *,
    arch: SplitArchitecture | None = None,
    out: Path | None = None,
    ledger: Ledger | None = None,
    resume_dir: Path | None = None,
    backoff: Backoff | None = None,
    on_epoch: Callable[[str, int], None] | None = None,
    progress: EpochCallback | None = None,
) -> BankRunResult:
    """PSI with the platform over all the bank's customers, then split training and a test.

    With ``ledger``, every message to and from the platform is recorded there.

    Outages and restarts: a call that fails with UNAVAILABLE or DEADLINE_EXCEEDED is
    tried again after a growing pause (``backoff``, :mod:`bank_node.retry`); the training
    then goes on from its last whole epoch, on both sides (the platform keeps its side at
    every epoch under this training's key). If the platform restarted, PSI runs again
    (only that). With ``resume_dir`` the bank's side is also kept on disk after every
    epoch, so a rerun after the bank itself stopped goes on from there too. Either way
    the model is the one an uninterrupted run gives. ``on_epoch(pass, epoch)`` is called
    after each whole epoch (for a resume); ``progress`` is told of every epoch with its
    validation AUC and time (for a progress display).
    """
    tables = BankTables.load(data_dir)
    preprocessor = Preprocessor.fit(tables.train)
    enc_train = preprocessor.transform(tables.train)
    enc_test = preprocessor.transform(tables.test)
    y_train, y_test = tables.train.labels, tables.test.labels
    assert y_train is not None and y_test is not None
    n_train = len(tables.train)
    ids = np.concatenate([tables.train.ids, tables.test.ids])
    arch = arch or SplitArchitecture()
    bank_cfg = arch.bank_bottom(preprocessor.n_numeric, preprocessor.cat_cardinalities)
    resume = Resume(resume_dir, _fingerprint(tables, preprocessor, cfg, kit.party)).load()
    psi_seconds = 0.0

    def attempt(n: int) -> tuple[TrainedBank, np.ndarray, np.ndarray, str]:
        nonlocal psi_seconds
        with secure_channel(platform_address, kit, "platform", ledger=ledger) as channel:
            link = None
            while link is None:
                if resume.psi is None:
                    t0 = time.perf_counter()
                    resume.psi, resume.round = run_psi(channel, ids, party=kit.party), -1
                    psi_seconds += time.perf_counter() - t0
                phase, done = resume.position
                if done or n:
                    log.info("resuming training at epoch %d of the %s pass", done, phase)
                try:
                    link = GrpcPlatformLink(channel, kit, resume.psi, cfg,
                                            round_=resume.round + 1, resume_key=resume.key,
                                            phase=phase, resume_epoch=done)
                except PlatformError as exc:
                    if exc.code not in SESSION_LOST:
                        raise
                    log.info("the platform no longer knows this session (%s): PSI again",
                             exc.code.name)
                    resume.psi = None  # the platform restarted (or closed it): PSI again
            psi = resume.psi
            assert psi is not None
            resume.round = link.session_round
            handles = psi.handles_for_rows(len(ids))
            top_cfg = dataclasses.replace(arch.top(), platform_dim=link.embedding_dim)

            def epoch_done(state: dict[str, Any]) -> None:
                resume.epoch_state, resume.round = state, link.session_round
                resume.save()
                phase, epoch = state["phase"], int(state["pass"]["epoch"])
                log.info("epoch %d of the %s pass done", epoch, phase)
                if on_epoch is not None:
                    on_epoch(phase, epoch)

            trained = train_bank_model(
                BankData(enc_train, y_train, handles[:n_train]), link, bank_cfg,
                top_cfg, cfg, resume=resume.epoch_state, on_epoch=epoch_done,
                progress=progress)
            test_pd = predict(trained.model, BankData(enc_test, y_test,
                                                      handles[n_train:]),
                              link, cfg.eval_batch_size)
            link.close()
            return trained, test_pd, handles, link.platform_model_version

    trained, test_pd, handles, version = retrying(attempt, backoff or Backoff())
    resume.clear()
    result = BankRunResult(
        party=kit.party,
        n_train=n_train,
        n_test=len(tables.test),
        aligned_train=int((handles[:n_train] >= 0).sum()),
        aligned_test=int((handles[n_train:] >= 0).sum()),
        test_auc=auc(y_test, test_pd),
        test_ks=ks(y_test, test_pd),
        best_epoch=trained.best_epoch,
        epochs_run=trained.epochs_run,
        psi_seconds=psi_seconds,
        train_seconds=trained.wall_s,
        platform_model_version=version,
        test_labels=y_test,
        test_pd=test_pd,
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(trained.model.state_dict(), out / "bank_model.pt")
        (out / "preprocessor.json").write_text(json.dumps(preprocessor.to_dict(), indent=1))
        (out / "metrics.json").write_text(json.dumps(result.summary(), indent=1))
    return result
