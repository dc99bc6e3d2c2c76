"""What the bank scores with: its customer store, and one release made ready to score.

A :class:`ScoringModel` is one signed release made ready to score: its bank-side
weights (a numpy :class:`fedscore.ml.frozen.FrozenBankModel`: no torch in the scoring
server), the transforms they were trained with (the federation's pooled statistics and
the bank's own schema) and the bank's customer store encoded with them. Its
:meth:`ScoringModel.explain` gives every applicant's PD and what each bank feature
added to it (how: :mod:`bank_node.scoring`). :class:`ScoringError`, raised by every
scoring module, carries the gRPC status a server answers with.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd

from fedscore.crypto.primitives import VerifyKey
from fedscore.data.preprocess import MOMENTS, Encoded, Moments, Preprocessor
from fedscore.data.table import PartyTable, find_table, load_table
from fedscore.errors import FedscoreError
from fedscore.federation.release import PREPROCESSING_FILE, verify_release
from fedscore.federation.statistics import PooledStatistics
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.frozen import FrozenBankModel


class ScoringError(FedscoreError):
    """A request the server cannot score; ``code`` is the gRPC status to answer with
    (each raise names its own: NOT_FOUND, INVALID_ARGUMENT, ...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class CustomerStore:
    """The bank's customers (its own table) and their PSI handles for scoring."""

    table: PartyTable
    row_of: dict[str, int]
    handles: np.ndarray  # int64 [rows], -1 outside the intersection

    @classmethod
    def of(cls, table: PartyTable, handles: np.ndarray | None = None) -> CustomerStore:
        """The store of ``table``'s customers; ``handles`` from PSI (none: all -1)."""
        ids = [str(i) for i in table.ids]
        h = np.full(len(ids), -1, np.int64) if handles is None else np.asarray(handles)
        return cls(table, {u: i for i, u in enumerate(ids)}, h)

    @staticmethod
    def load_table(data_dir: Path) -> PartyTable:
        """Every customer of a bank data folder (its train and test tables, read as
        ``bank_node.trainer.BankTables.load`` reads them: the trainer imports torch)."""
        schema = data_dir / "schema.toml"
        train = load_table(find_table(data_dir, "train"), schema, require_label=True)
        test = load_table(find_table(data_dir, "test"), schema, require_label=True)
        return PartyTable(
            train.schema, data_dir, np.concatenate([train.ids, test.ids]),
            pd.concat([train.features, test.features], ignore_index=True), None)

    def row(self, applicant_id: str) -> int:
        """The applicant's row; a stranger is NOT_FOUND (their features must come inline)."""
        try:
            return self.row_of[applicant_id]
        except KeyError:
            raise ScoringError(
                f"applicant {applicant_id!r} is not in the bank's store; send the bank's "
                "features inline",
                code=grpc.StatusCode.NOT_FOUND,
            ) from None


def _source(column: str) -> str:
    """The bank feature (or feature group) behind an encoded column's name."""
    return column.split(":", 1)[0].split("/", 1)[0]


@dataclass(frozen=True)
class ScoringModel:
    """One verified release built against the bank's store: what a score runs on."""

    version: str
    platform_version: str
    preprocessor: Preprocessor
    model: FrozenBankModel
    store: Encoded  # the store's rows, encoded with this release's transforms

    @classmethod
    def load(cls, release: Path, coordinator_key: VerifyKey, store: CustomerStore
             ) -> ScoringModel:
        """Verify a release (signature and files) and build it against the bank's store."""
        manifest, arrays = verify_release(release, coordinator_key)
        stats = PooledStatistics.from_json(json.loads((release / PREPROCESSING_FILE).read_text()))
        moments = Moments(stats.layout, stats.sums.reshape(-1, len(MOMENTS)))
        try:
            pre = Preprocessor.fit(store.table, moments=moments)
        except ValueError as exc:
            raise ScoringError(f"{release}: does not fit this bank: {exc}",
                               code=grpc.StatusCode.FAILED_PRECONDITION) from None
        arch = SplitArchitecture()
        try:
            model = FrozenBankModel(arch.bank_bottom(pre.n_numeric, pre.cat_cardinalities),
                                    arch.top(), arrays)
        except ValueError as exc:
            raise ScoringError(f"{release}: weights do not fit this bank's model: {exc}",
                               code=grpc.StatusCode.FAILED_PRECONDITION) from None
        made = cls(str(manifest["version"]), str(manifest["platform_model_version"]), pre,
                   model, pre.transform(store.table))
        made._variants  # noqa: B018 (built now, not at the first applicant)
        return made

    @property
    def embedding_dim(self) -> int:
        """The width of the platform's embedding this release pairs with."""
        return self.model.top_config.platform_dim

    def pd(self, enc: Encoded, emb: np.ndarray, present: np.ndarray) -> np.ndarray:
        """[n] probabilities of default; ``emb`` [n, dp] is ignored where not ``present``."""
        return self.model.pd(enc.numeric, enc.categorical, np.asarray(emb, np.float32),
                             np.asarray(present, bool))

    @functools.cached_property
    def _variants(self) -> _Variants:
        return _Variants.of(self.preprocessor)

    def explain(self, enc: Encoded, emb: np.ndarray, present: np.ndarray
                ) -> tuple[np.ndarray, list[dict[str, float]]]:
        """PDs [n] and, per applicant, how much each bank feature raised it (each encoded
        column at its reference, as :mod:`bank_node.scoring` says), all from one forward
        pass over every applicant's variants."""
        var = self._variants
        n, d = enc.numeric.shape
        k = enc.categorical.shape[1]
        v = var.count  # variants per applicant: as is, each column at its reference
        num = np.repeat(enc.numeric[:, None, :], v, axis=1)  # [n, v, d]
        cat = np.repeat(enc.categorical[:, None, :], v, axis=1)  # [n, v, k]
        num[:, var.num_variant, var.num_column] = 0.0  # the pooled mean
        cat[:, var.cat_variant, var.cat_column] = var.cat_code
        pds = self.pd(Encoded(num.reshape(n * v, d), cat.reshape(n * v, k)),
                      np.repeat(emb, v, axis=0), np.repeat(present, v)).reshape(n, v)
        # per column, the PD at its best reference: the drop is what the column cost
        drops = pds[:, :1] - np.minimum.reduceat(pds[:, 1:], var.starts, axis=1)  # [n, cols]
        by_source = drops @ var.source_of_column  # [n, sources]
        return pds[:, 0], [dict(zip(var.sources, row, strict=True))
                           for row in by_source.tolist()]


@dataclass(frozen=True)
class _Variants:
    """How :meth:`ScoringModel.explain` varies an applicant: variant 0 as is, then one per
    numeric column (at the pooled mean, 0) and one per other category of each
    categorical column, columns in order, so each column's variants are contiguous."""

    count: int
    num_variant: np.ndarray  # [d] the variant that resets numeric column i
    num_column: np.ndarray  # [d]
    cat_variant: np.ndarray  # [m] the variant that sets a categorical column ...
    cat_column: np.ndarray  # [m] ... this one ...
    cat_code: np.ndarray  # [m] ... to this code
    starts: np.ndarray  # [columns] each column's first variant, less one (variant 0)
    sources: tuple[str, ...]  # the bank features behind the columns
    source_of_column: np.ndarray  # [columns, sources] 0/1

    @classmethod
    def of(cls, pre: Preprocessor) -> _Variants:
        d, cards = pre.n_numeric, pre.cat_cardinalities
        cat_column = np.array([c for c, card in enumerate(cards) for _ in range(1, card)],
                              np.int64)
        cat_code = np.array([code for card in cards for code in range(1, card)], np.int64)
        if any(card < 2 for card in cards):
            raise ValueError(f"categorical cardinalities {cards}: every column needs a "
                             "category to compare with")
        firsts = np.concatenate([np.arange(d), d + np.searchsorted(cat_column,
                                                                   np.arange(len(cards)))])
        names = list(pre.numeric_names) + list(pre.categorical_names)
        sources = tuple(dict.fromkeys(_source(name) for name in names))
        onehot = np.zeros((len(names), len(sources)))
        onehot[np.arange(len(names)), [sources.index(_source(x)) for x in names]] = 1.0
        return cls(1 + d + len(cat_column), np.arange(1, 1 + d), np.arange(d),
                   1 + d + np.arange(len(cat_column)), cat_column, cat_code,
                   firsts.astype(np.int64), sources, onehot)
