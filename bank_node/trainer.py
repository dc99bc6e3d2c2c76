"""A bank's side of vertical training: load its table, align with the platform, train, test.

Everything here runs on the bank's machine. What leaves it: blinded ids (PSI), the
gradient with respect to the platform embedding (sealed), and control messages.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bank_node.platform_link import GrpcPlatformLink
from bank_node.psi_client import run_psi
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
    predict,
    train_bank_model,
)
from fedscore.wire.transport import secure_channel


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


def run_bank(
    kit: StartupKit,
    data_dir: Path,
    platform_address: str,
    cfg: TrainConfig,
    *,
    arch: SplitArchitecture | None = None,
    out: Path | None = None,
    ledger: Ledger | None = None,
    on_epoch: EpochCallback | None = None,
) -> BankRunResult:
    """PSI with the platform over all the bank's customers, then split training and a test.

    With ``ledger``, every message to and from the platform is recorded there;
    ``on_epoch`` is told of every training epoch (a progress display).
    """
    tables = BankTables.load(data_dir)
    preprocessor = Preprocessor.fit(tables.train)
    enc_train = preprocessor.transform(tables.train)
    enc_test = preprocessor.transform(tables.test)
    assert tables.train.labels is not None and tables.test.labels is not None
    n_train = len(tables.train)

    with secure_channel(platform_address, kit, "platform", ledger=ledger) as channel:
        t0 = time.perf_counter()
        ids = np.concatenate([tables.train.ids, tables.test.ids])
        psi = run_psi(channel, ids, party=kit.party)
        handles = psi.handles_for_rows(len(ids))
        psi_seconds = time.perf_counter() - t0

        link = GrpcPlatformLink(channel, kit, psi, cfg)
        arch = arch or SplitArchitecture()
        bank_cfg = arch.bank_bottom(preprocessor.n_numeric, preprocessor.cat_cardinalities)
        top_cfg = dataclasses.replace(arch.top(), platform_dim=link.embedding_dim)
        train_data = BankData(enc_train, tables.train.labels, handles[:n_train])
        test_data = BankData(enc_test, tables.test.labels, handles[n_train:])
        trained = train_bank_model(train_data, link, bank_cfg, top_cfg, cfg, on_epoch)
        test_pd = predict(trained.model, test_data, link, cfg.eval_batch_size)
        link.close()

    result = BankRunResult(
        party=kit.party,
        n_train=n_train,
        n_test=len(tables.test),
        aligned_train=int((handles[:n_train] >= 0).sum()),
        aligned_test=int((handles[n_train:] >= 0).sum()),
        test_auc=auc(tables.test.labels, test_pd),
        test_ks=ks(tables.test.labels, test_pd),
        best_epoch=trained.best_epoch,
        epochs_run=trained.epochs_run,
        psi_seconds=psi_seconds,
        train_seconds=trained.wall_s,
        platform_model_version=link.platform_model_version,
        test_labels=tables.test.labels,
        test_pd=test_pd,
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(trained.model.state_dict(), out / "bank_model.pt")
        (out / "preprocessor.json").write_text(json.dumps(preprocessor.to_dict(), indent=1))
        (out / "metrics.json").write_text(json.dumps(result.summary(), indent=1))
    return result
