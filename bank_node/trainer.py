"""A bank's side of vertical training: load its table, align with the platform, train, test.

Everything here runs on the bank's machine. What leaves it: blinded ids (PSI), the
gradient with respect to the platform embedding (sealed), and control messages.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fedscore.data.preprocess import Preprocessor
from fedscore.data.table import PartyTable, load_table
from fedscore.metrics import auc, ks
from fedscore.provision import StartupKit
from fedscore.training import BankData, TrainConfig, predict, train_bank_model
from fedscore.transport import secure_channel
from bank_node.platform_link import GrpcPlatformLink
from bank_node.psi_client import run_psi

SUFFIXES = (".csv", ".csv.gz", ".parquet")


def _find(data_dir: Path, stem: str) -> Path:
    found = [data_dir / f"{stem}{suffix}" for suffix in SUFFIXES if (data_dir / f"{stem}{suffix}").exists()]
    if len(found) != 1:
        wanted = ", ".join(f"{stem}{s}" for s in SUFFIXES)
        what = "none" if not found else ", ".join(p.name for p in found)
        raise FileNotFoundError(f"{data_dir}: expected exactly one of {wanted}; found {what}")
    return found[0]


@dataclass(frozen=True)
class BankTables:
    train: PartyTable
    test: PartyTable

    @classmethod
    def load(cls, data_dir: Path) -> BankTables:
        schema = data_dir / "schema.toml"
        train = load_table(_find(data_dir, "train"), schema, require_label=True)
        test = load_table(_find(data_dir, "test"), schema, require_label=True)
        return cls(train, test)


@dataclass
class BankRunResult:
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
    out: Path | None = None,
) -> BankRunResult:
    """PSI with the platform over all the bank's customers, then split training and a test."""
    tables = BankTables.load(data_dir)
    preprocessor = Preprocessor.fit(tables.train)
    enc_train = preprocessor.transform(tables.train)
    enc_test = preprocessor.transform(tables.test)
    assert tables.train.labels is not None and tables.test.labels is not None
    n_train = len(tables.train)

    with secure_channel(platform_address, kit, "platform") as channel:
        t0 = time.perf_counter()
        ids = np.concatenate([tables.train.ids, tables.test.ids])
        psi = run_psi(channel, ids, party=kit.party)
        handles = psi.handles_for_rows(len(ids))
        psi_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        link = GrpcPlatformLink(
            channel, kit, psi, round_=0, seed=cfg.seed, lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        train_data = BankData(enc_train, tables.train.labels, handles[:n_train])
        test_data = BankData(enc_test, tables.test.labels, handles[n_train:])
        trained = train_bank_model(train_data, link, preprocessor, cfg)
        test_pd = predict(trained, test_data, link, cfg.batch_size)
        link.close()
        train_seconds = time.perf_counter() - t0

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
        train_seconds=train_seconds,
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
