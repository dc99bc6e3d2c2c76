"""The bank's real-time joint scoring: release in, decisions out.

A :class:`ScoringModel` is one signed release made ready to score: its bank-side
weights, the transforms they were trained with (the federation's pooled statistics and
the bank's own schema) and the bank's customer store encoded with them. A
:class:`Scorer` holds the current one (swapped whole by :meth:`Scorer.load_release`,
so a request in flight finishes on the model it started with), the bank's policy and
its link to the platform, and turns an applicant into a :class:`Scored`:

1. the bank's features: from the request, or from the store by id;
2. the platform's part: an embedding for a customer in the bank's intersection (by PSI
   handle) or for an applicant with a consent token, within the policy's deadline;
   else the model's "platform absent" path; on a timeout or a platform failure, the
   policy's fallback (the same model's absent path, i.e. bank-only, or "refer");
3. PD, then the policy's score, grade, decision, limit and APR;
4. reason codes from the bank's own features only: each encoded bank column set to
   its reference (a numeric column to the pooled mean, a categorical one to its
   best value), the PD's drop credited to the feature behind the column. The
   platform's embedding is held fixed, so no reason ever points at platform data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
import numpy as np
import pandas as pd

from bank_node.policy import (
    OUTCOMES,
    Decision,
    Decisions,
    Outcome,
    Policy,
    decide,
    decide_many,
    fallback_decision,
)
from coordinator.statistics import PooledStatistics
from fedscore.api.v1 import embedding_pb2, embedding_pb2_grpc
from fedscore.crypto.primitives import (
    Direction,
    Sealer,
    VerifyKey,
    WindowOpener,
    derive_session_key,
)
from fedscore.crypto.psi import PsiResult
from fedscore.data.preprocess import MOMENTS, Encoded, Moments, Preprocessor
from fedscore.data.table import PartyTable
from fedscore.federation.provision import StartupKit
from fedscore.federation.release import PREPROCESSING_FILE, verify_release
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.frozen import FrozenBankModel
from fedscore.wire import serde

log = logging.getLogger(__name__)

SCORING_ROUND = 0
T = TypeVar("T")
R = TypeVar("R")
BATCH_TIMEOUT_S = 10.0  # a portfolio chunk's platform call: longer than one applicant's


class ScoringError(Exception):
    """A request the server cannot score; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class PlatformPart(IntEnum):
    """What the platform contributed; values equal the proto enum fedscore.v1.PlatformPart."""

    JOINED = 1
    ABSENT = 2
    TIMED_OUT = 3
    UNAVAILABLE = 4


# ------------------------------------------------------------------------------------------
# the customer store and one release
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerStore:
    """The bank's customers (its own table) and their PSI handles for scoring."""

    table: PartyTable
    row_of: dict[str, int]
    handles: np.ndarray  # int64 [rows], -1 outside the intersection

    @classmethod
    def of(cls, table: PartyTable, handles: np.ndarray | None = None) -> CustomerStore:
        ids = [str(i) for i in table.ids]
        h = np.full(len(ids), -1, np.int64) if handles is None else np.asarray(handles)
        return cls(table, {u: i for i, u in enumerate(ids)}, h)

    @staticmethod
    def load_table(data_dir: Path) -> PartyTable:
        """Every customer of a bank data folder (its train and test tables)."""
        from bank_node.trainer import BankTables

        t = BankTables.load(data_dir)
        return PartyTable(
            t.train.schema, data_dir, np.concatenate([t.train.ids, t.test.ids]),
            pd.concat([t.train.features, t.test.features], ignore_index=True), None)

    def row(self, applicant_id: str) -> int:
        try:
            return self.row_of[applicant_id]
        except KeyError:
            raise ScoringError(
                grpc.StatusCode.NOT_FOUND,
                f"applicant {applicant_id!r} is not in the bank's store; send the bank's "
                "features inline",
            ) from None


def _source(column: str) -> str:
    """The bank feature (or feature group) behind an encoded column's name."""
    return column.split(":", 1)[0].split("/", 1)[0]


@dataclass(frozen=True)
class ScoringModel:
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
            raise ScoringError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{release}: does not fit this bank: {exc}") from None
        arch = SplitArchitecture()
        try:
            model = FrozenBankModel(arch.bank_bottom(pre.n_numeric, pre.cat_cardinalities),
                                    arch.top(), arrays)
        except ValueError as exc:
            raise ScoringError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{release}: weights do not fit this bank's model: {exc}"
                               ) from None
        made = cls(str(manifest["version"]), str(manifest["platform_model_version"]), pre,
                   model, pre.transform(store.table))
        made._variants  # noqa: B018 (built now, not at the first applicant)
        return made

    @property
    def embedding_dim(self) -> int:
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
        """PDs [n] and, per applicant, how much each bank feature raised it (see the
        module doc), all from one forward pass over every applicant's variants."""
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


class Batched(Generic[T, R]):
    """Concurrent callers share one run of ``fn``: the first becomes the leader and runs
    ``fn`` on everything waiting (itself included) until nothing is left; the others
    wait for their result. One applicant alone pays no hand-off; many pay one platform
    call between them."""

    def __init__(self, fn: Callable[[list[T]], list[R]], max_items: int = 256) -> None:
        self._fn, self._max = fn, max_items
        self._pending: list[tuple[T, Future[R]]] = []
        self._running = False
        self._lock = threading.Lock()

    def __call__(self, item: T) -> R:
        future: Future[R] = Future()
        with self._lock:
            self._pending.append((item, future))
            leader, self._running = not self._running, True
        while leader:
            with self._lock:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                if not batch:
                    self._running = False
                    break
            try:
                results = self._fn([x for x, _ in batch])
                for (_, f), r in zip(batch, results, strict=True):
                    f.set_result(r)
            except BaseException as exc:
                for _, f in batch:
                    f.set_exception(exc)
        return future.result()


# ------------------------------------------------------------------------------------------
# the platform's embeddings
# ------------------------------------------------------------------------------------------


class PlatformEmbeddings:
    """The bank's end of EmbeddingService: one scoring session, queries sealed both ways."""

    def __init__(self, channel: grpc.Channel, kit: StartupKit, psi: PsiResult,
                 platform_party: str = "platform") -> None:
        key = derive_session_key(kit.sealing_key, kit.peers[platform_party].sealing_public,
                                 psi.session_id).for_scoring()
        self._sealer = Sealer(key, psi.session_id, Direction.BANK_TO_PLATFORM)
        self._opener = WindowOpener(key, psi.session_id, Direction.PLATFORM_TO_BANK)
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def _request(self, version: str, handles: np.ndarray,
                 consented: Sequence[tuple[str, str]], purpose: int
                 ) -> tuple[embedding_pb2.GetEmbeddingsRequest, int]:
        """The sealed query and its batch number (shared by the sync and aio calls, so
        one Sealer numbers both)."""
        with self._lock:
            number = next(self._numbers)
        query = embedding_pb2.EmbeddingQuery(
            platform_model_version=version, handles=serde.handles_to_bytes(handles),
            consented=[embedding_pb2.ConsentedApplicant(applicant_id=a, consent_token=t)
                       for a, t in consented],
            purpose=embedding_pb2.ScoringPurpose.ValueType(purpose),
        )
        box = self._sealer.seal(query.SerializeToString(), round=SCORING_ROUND, batch=number)
        return embedding_pb2.GetEmbeddingsRequest(sealed=serde.sealed_to_pb(box)), number

    def _answer(self, reply: embedding_pb2.GetEmbeddingsResponse, number: int, n: int,
                dim: int) -> tuple[np.ndarray, np.ndarray]:
        answer = embedding_pb2.EmbeddingAnswer.FromString(self._opener.open(
            serde.sealed_from_pb(reply.sealed), round=SCORING_ROUND, batch=number))
        emb = serde.tensor_from_pb(answer.embeddings, rows=n) if n else np.zeros((0, dim))
        present = np.frombuffer(answer.present, np.uint8).astype(bool)
        if emb.shape != (n, dim) or present.size != n:
            raise serde.WireError(f"platform answered {emb.shape} embeddings for {n} rows")
        return emb, present

    def get(
        self, version: str, handles: np.ndarray, consented: Sequence[tuple[str, str]],
        *, purpose: int, timeout: float, dim: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [n, dim], present [n]) for ``handles`` then ``consented``
        (applicant id, consent token) pairs; raises grpc.RpcError as the platform does."""
        request, number = self._request(version, handles, consented, purpose)
        reply = self._stub.GetEmbeddings(request, timeout=timeout)
        return self._answer(reply, number, handles.size + len(consented), dim)

    async def get_async(
        self, stub: embedding_pb2_grpc.EmbeddingServiceStub, version: str,
        handles: np.ndarray, consented: Sequence[tuple[str, str]],
        *, purpose: int, timeout: float, dim: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`get` on ``stub``, a stub of a ``grpc.aio`` channel to the same platform:
        the session is in the sealed query, not in the channel."""
        request, number = self._request(version, handles, consented, purpose)
        reply = await stub.GetEmbeddings(request, timeout=timeout)
        return self._answer(reply, number, handles.size + len(consented), dim)


Link = tuple[PlatformEmbeddings | None, CustomerStore]
"""A platform scoring session and the store's handles in it: always used together."""


def _first(answer: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """The one applicant's embedding row of a platform answer, None if not present."""
    emb, present = answer
    return emb[0] if present[0] else None


# ------------------------------------------------------------------------------------------
# the scorer
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    decision: Decision
    model_version: str
    platform_version: str
    platform: PlatformPart


@dataclass(frozen=True)
class ScoredBatch:
    ids: list[str]
    decisions: Decisions
    platform: np.ndarray  # int8 [n] PlatformPart
    model_version: str
    platform_version: str


@dataclass(frozen=True)
class _Request:
    """One applicant's request, prepared: the model and session it runs on, its encoded
    bank features and its PSI handle (-1 outside the intersection)."""

    model: ScoringModel
    platform: PlatformEmbeddings | None
    enc: Encoded
    handle: int
    applicant_id: str
    consent_token: str

    @property
    def asks(self) -> PlatformEmbeddings | None:
        """The session to ask the platform on; None when there is none, or the applicant
        is outside the intersection without a consent token (the model's absent path)."""
        return self.platform if self.handle >= 0 or self.consent_token else None

    def consent_query(self) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """(handles, consented) of the platform call for an applicant outside the
        intersection: checked alone, so that one refusal fails no other applicant."""
        return np.zeros(0, np.int64), [(self.applicant_id, self.consent_token)]


class Scorer:
    def __init__(self, model: ScoringModel, policy: Policy, store: CustomerStore,
                 platform: PlatformEmbeddings | None, coordinator_key: VerifyKey,
                 reconnect: Callable[[], Link] | None = None,
                 aio_channel: Callable[[], grpc.aio.Channel] | None = None) -> None:
        """``reconnect`` opens a new scoring session (PSI again) when the platform has
        lost this one (it restarted); scores fall back until it is back. ``aio_channel``
        opens a ``grpc.aio`` channel to the same platform, on the calling event loop, for
        :class:`AsyncScorer`."""
        self.policy = policy
        self.aio_channel = aio_channel
        self.link: Link = (platform, store)
        self._coordinator_key = coordinator_key
        self._reconnect = reconnect
        self._reconnecting = threading.Lock()
        self._swap = threading.Lock()
        self._warm(model)
        self._model = model
        self._joined = Batched(self._embed_many)

    @property
    def platform(self) -> PlatformEmbeddings | None:
        return self.link[0]

    @property
    def store(self) -> CustomerStore:
        return self.link[1]

    def _platform_failure(self, exc: grpc.RpcError) -> PlatformPart:
        """A refusal is the request's error; anything else is the platform's: fallback.
        A platform that no longer knows the session restarted: fall back and reconnect."""
        call = isinstance(exc, grpc.Call | grpc.aio.AioRpcError)
        code = exc.code() if call else grpc.StatusCode.UNKNOWN
        details = (exc.details() if call else str(exc)) or ""
        if code == grpc.StatusCode.PERMISSION_DENIED and "unknown session" in details:
            self._start_reconnect()
            return PlatformPart.UNAVAILABLE
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
            raise ScoringError(code, f"the platform refused: {details}") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PlatformPart.TIMED_OUT
        return PlatformPart.UNAVAILABLE

    def _start_reconnect(self) -> None:
        if self._reconnect is None or not self._reconnecting.acquire(blocking=False):
            return  # no way to, or one is under way

        def run() -> None:
            try:
                assert self._reconnect is not None
                link = self._reconnect()
                self._warm(self._model, link[0])
                self.link = link
                log.info("scoring: new platform session (%d customers in the intersection)",
                         int((link[1].handles >= 0).sum()))
            except Exception as exc:  # the platform may still be down: next failure retries
                log.warning("scoring: reconnecting to the platform failed: %s", exc)
            finally:
                self._reconnecting.release()

        threading.Thread(target=run, name="scoring-reconnect", daemon=True).start()

    def _warm(self, model: ScoringModel, platform: PlatformEmbeddings | None = None) -> None:
        """Have the platform load the release's bottom model before the first applicant
        waits on it (its first query computes the version's embeddings); a platform
        without that version is refused here, not at the first request."""
        platform = platform or self.platform
        if platform is None:
            return
        try:
            platform.get(model.platform_version, np.zeros(0, np.int64), [],
                              purpose=embedding_pb2.SCORING_PURPOSE_UNSPECIFIED,
                              timeout=BATCH_TIMEOUT_S * 6, dim=model.embedding_dim)
        except grpc.RpcError as exc:
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise ScoringError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"release {model.version}: the platform cannot serve its "
                               f"bottom model {model.platform_version}: {details}") from None

    @property
    def model(self) -> ScoringModel:
        return self._model

    def load_release(self, release: Path) -> tuple[str, str]:
        """Switch to another release; requests already running finish on the old one.
        Returns (new version, previous version)."""
        new = ScoringModel.load(release, self._coordinator_key, self.store)
        self._warm(new)
        with self._swap:
            old, self._model = self._model, new
        return new.version, old.version

    # -- one applicant ---------------------------------------------------------------------

    def score(self, applicant_id: str, features: Mapping[str, str] | None = None,
              consent_token: str = "", requested_amount: float | None = None) -> Scored:
        r = self._begin(applicant_id, features, consent_token)
        part, row = PlatformPart.ABSENT, None
        platform = r.asks
        if platform is not None:
            try:
                if r.handle >= 0:  # intersection customers share platform calls
                    row = self._joined((r.model, platform, r.handle))
                else:
                    row = _first(platform.get(**self._query(r.model, *r.consent_query())))
                part = PlatformPart.JOINED if row is not None else PlatformPart.ABSENT
            except grpc.RpcError as exc:
                part = self._platform_failure(exc)
        return self._finish(r, part, row, requested_amount)

    def _begin(self, applicant_id: str, features: Mapping[str, str] | None,
               consent_token: str) -> _Request:
        """One model and one platform session for the whole request, and its bank row."""
        m = self._model
        platform, store = self.link
        row = store.row_of.get(applicant_id)
        if features:
            enc = m.preprocessor.transform(self._inline(applicant_id, features))
        else:
            enc = m.store.take(np.array([store.row(applicant_id)]))
        handle = int(store.handles[row]) if row is not None else -1
        return _Request(m, platform, enc, handle, applicant_id, consent_token)

    def _finish(self, r: _Request, part: PlatformPart, row: np.ndarray | None,
                requested_amount: float | None) -> Scored:
        """Explain and decide, with the platform's embedding ``row`` [dp], or on the
        model's absent path (None); a platform that failed gets the policy's fallback."""
        if row is None:
            emb, present = np.zeros((1, r.model.embedding_dim), np.float32), np.zeros(1, bool)
        else:
            emb, present = row[None, :], np.ones(1, bool)
        # inline: a few dozen µs in numpy, less than handing it to a shared model pass
        # (measured at concurrency 8, that hand-off also let fewer requests share a
        # platform call)
        pds, explained = r.model.explain(r.enc, emb, present)
        pd_, reasons = float(pds[0]), explained[0]
        if part in (PlatformPart.TIMED_OUT, PlatformPart.UNAVAILABLE):
            decision = fallback_decision(self.policy, bank_only_pd=pd_, contributions=reasons,
                                         requested_amount=requested_amount)
        else:
            decision = decide(pd_, self.policy, contributions=reasons,
                              requested_amount=requested_amount)
        return Scored(decision, r.model.version, r.model.platform_version, part)

    def _embed_many(self, items: list[tuple[ScoringModel, PlatformEmbeddings, int]]
                    ) -> list[np.ndarray]:
        """One platform call for every waiting intersection customer (per model and
        session)."""
        out: list[np.ndarray] = [np.empty(0)] * len(items)
        for platform, query, idx in self._per_session(items):
            emb, _ = platform.get(**query)
            for k, i in enumerate(idx):
                out[i] = emb[k]
        return out

    def _query(self, m: ScoringModel, handles: np.ndarray,
               consented: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """The arguments of a scoring call to the platform (``PlatformEmbeddings.get``)."""
        return {"version": m.platform_version, "handles": handles, "consented": consented,
                "purpose": embedding_pb2.SCORING_PURPOSE_APPLICATION,
                "timeout": self.policy.fallback.deadline_s, "dim": m.embedding_dim}

    def _per_session(self, items: list[tuple[ScoringModel, PlatformEmbeddings, int]]
                     ) -> list[tuple[PlatformEmbeddings, dict[str, Any], list[int]]]:
        """Waiting intersection customers by model and session: (session, the call's
        arguments, the items it answers)."""
        out = []
        for m, platform in {(id(m), id(p)): (m, p) for m, p, _ in items}.values():
            idx = [i for i, (mi, pi, _) in enumerate(items) if mi is m and pi is platform]
            out.append((platform, self._query(
                m, np.array([items[i][2] for i in idx], np.int64), []), idx))
        return out

    def _inline(self, applicant_id: str, features: Mapping[str, str]) -> PartyTable:
        """A one-row table of the bank's schema from a request's features; names the
        field and what was expected on any problem."""
        schema = self.store.table.schema
        known = {f.name for f in schema.features}
        extra = sorted(set(features) - known)
        if extra:
            raise ScoringError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"features.{extra[0]}: not a feature of the bank's schema "
                               f"(expected some of {', '.join(sorted(known))})")
        values: dict[str, list[object]] = {}
        for f in schema.features:
            raw = features.get(f.name, "")
            if raw == "":
                if not f.allow_missing:
                    raise ScoringError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"features.{f.name}: missing; the schema requires it")
                values[f.name] = [np.nan if f.kind == "numeric" else None]
            elif f.kind == "numeric":
                try:
                    x = float(raw)
                except ValueError:
                    x = float("nan")
                if not np.isfinite(x):
                    raise ScoringError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"features.{f.name} = {raw!r}: expected a finite number")
                values[f.name] = [x]
            else:
                values[f.name] = [raw]
        frame = pd.DataFrame(values)
        return PartyTable(schema, Path("<request>"), np.array([applicant_id], dtype=object),
                          frame, None)

    # -- a portfolio chunk -----------------------------------------------------------------

    def score_batch(self, ids: Sequence[str]) -> ScoredBatch:
        m = self._model
        platform, store = self.link
        rows = np.array([store.row(i) for i in ids], np.int64)
        enc = m.store.take(rows)
        handles = store.handles[rows]
        joined = handles >= 0
        emb = np.zeros((rows.size, m.embedding_dim), np.float32)
        part = np.full(rows.size, PlatformPart.ABSENT, np.int8)
        failed: PlatformPart | None = None
        if platform is not None and joined.any():
            try:
                got, _ = platform.get(
                    m.platform_version, handles[joined], [],
                    purpose=embedding_pb2.SCORING_PURPOSE_PORTFOLIO_REVIEW,
                    timeout=BATCH_TIMEOUT_S, dim=m.embedding_dim,
                )
                emb[joined] = got
                part[joined] = PlatformPart.JOINED
            except grpc.RpcError as exc:
                failed = self._platform_failure(exc)
                part[joined] = failed
                joined[:] = False
        pds = m.pd(enc, emb, joined)
        decisions = decide_many(pds, self.policy)
        if failed is not None and self.policy.fallback.mode == "refer":
            hit = part != PlatformPart.ABSENT  # the platform's rows: refer, not decide
            decisions = dataclasses.replace(
                decisions,
                outcome=np.where(hit, OUTCOMES.index(Outcome.REFER), decisions.outcome
                                 ).astype(decisions.outcome.dtype),
                limit=np.where(hit, 0.0, decisions.limit),
                apr=np.where(hit, np.nan, decisions.apr),
            )
        return ScoredBatch(list(ids), decisions, part, m.version, m.platform_version)


# ------------------------------------------------------------------------------------------
# the scorer on an event loop
# ------------------------------------------------------------------------------------------


class Gathered(Generic[T, R]):
    """:class:`Batched` for asyncio: items that arrive while a run of ``fn`` is under way
    (or in the same turn of the loop) share the next run: it starts on the next turn, so
    callers that became ready together share it."""

    def __init__(self, fn: Callable[[list[T]], Awaitable[list[R]]], max_items: int = 256
                 ) -> None:
        self._fn, self._max = fn, max_items
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)  # one more turn: callers ready by then join too
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                try:
                    results = await self._fn([x for x, _ in batch])
                except Exception as exc:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for (_, f), r in zip(batch, results, strict=True):
                    if not f.done():  # its caller may have given up (cancelled)
                        f.set_result(r)
        finally:
            self._runner = None


class AsyncScorer:
    """:meth:`Scorer.score` on an event loop, the platform called over ``grpc.aio``: a
    sync server and channel cost the bank's process about a millisecond of CPU per score
    (threads, per-call completion queues), several times the model's share. Requests that
    arrive while a platform call is in flight join the next one. The model, policy, store
    and platform session are the Scorer's (release switches and reconnects included);
    only the transport differs."""

    def __init__(self, scorer: Scorer, channel: grpc.aio.Channel | None) -> None:
        self.scorer = scorer
        self.channel = channel
        self._stub = (embedding_pb2_grpc.EmbeddingServiceStub(channel)
                      if channel is not None else None)
        self._joined: Gathered[tuple[ScoringModel, PlatformEmbeddings, int], np.ndarray] = \
            Gathered(self._embed_many)

    async def score(self, applicant_id: str, features: Mapping[str, str] | None = None,
                    consent_token: str = "", requested_amount: float | None = None
                    ) -> Scored:
        s = self.scorer
        if self._stub is None:  # no aio link: the sync path, off the loop
            return await asyncio.get_running_loop().run_in_executor(
                None, s.score, applicant_id, features, consent_token, requested_amount)
        r = s._begin(applicant_id, features, consent_token)
        part, row = PlatformPart.ABSENT, None
        platform = r.asks
        if platform is not None:
            try:
                if r.handle >= 0:
                    row = await self._joined((r.model, platform, r.handle))
                else:
                    row = _first(await platform.get_async(
                        self._stub, **s._query(r.model, *r.consent_query())))
                part = PlatformPart.JOINED if row is not None else PlatformPart.ABSENT
            except grpc.RpcError as exc:
                part = s._platform_failure(exc)
        return s._finish(r, part, row, requested_amount)

    async def _embed_many(self, items: list[tuple[ScoringModel, PlatformEmbeddings, int]]
                          ) -> list[np.ndarray]:
        """One platform call for every waiting intersection customer (per model and
        session)."""
        assert self._stub is not None
        out: list[np.ndarray] = [np.empty(0)] * len(items)
        for platform, query, idx in self.scorer._per_session(items):
            emb, _ = await platform.get_async(self._stub, **query)
            for k, i in enumerate(idx):
                out[i] = emb[k]
        return out
