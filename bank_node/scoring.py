"""The bank's real-time joint scoring: release in, decisions out.

A :class:`Scorer` holds the current :class:`bank_node.scoring_store.ScoringModel` (one
signed release made ready to score, swapped whole by :meth:`Scorer.load_release`, so a
request in flight finishes on the model it started with), the bank's policy and its
link to the platform (:mod:`bank_node.scoring_platform`), and turns an applicant into
a :class:`Scored`:

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

:meth:`Scorer.score` runs those steps on the calling thread;
:class:`bank_node.scoring_aio.AsyncScorer` runs the same steps (:meth:`Scorer.prepare`,
:meth:`Scorer.platform_query`, :meth:`Scorer.platform_failure`, :meth:`Scorer.finish`)
on an event loop. The figures behind these choices: ``docs/scoring.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pandas as pd

from bank_node.applicant import did_you_mean
from bank_node.policy import Outcome, Policy
from bank_node.policy_decide import Decision, decide, fallback_decision
from bank_node.policy_decide_many import OUTCOMES, Decisions, decide_many
from bank_node.scoring_platform import PlatformEmbeddings, first_row
from bank_node.scoring_store import CustomerStore, ScoringError, ScoringModel
from fedscore.api.v1 import embedding_pb2
from fedscore.crypto.consent import MAX_ENCODED_CHARS
from fedscore.crypto.primitives import VerifyKey
from fedscore.data.ids import id_problem
from fedscore.data.preprocess import Encoded
from fedscore.data.table import PartyTable
from fedscore.wire.batching import Batched

log = logging.getLogger(__name__)

BATCH_TIMEOUT_S = 10.0  # a portfolio chunk's platform call: longer than one applicant's


class PlatformPart(IntEnum):
    """What the platform contributed; values equal the proto enum fedscore.v1.PlatformPart."""

    JOINED = 1
    ABSENT = 2
    TIMED_OUT = 3
    UNAVAILABLE = 4


Link = tuple[PlatformEmbeddings | None, CustomerStore]
"""A platform scoring session and the store's handles in it: always used together."""


@dataclass(frozen=True)
class Scored:
    """One applicant's decision, the release it was made on, and the platform's part."""

    decision: Decision
    model_version: str
    platform_version: str
    platform: PlatformPart


@dataclass(frozen=True)
class ScoredBatch:
    """A portfolio chunk's decisions, column-wise, in the order of ``ids``."""

    ids: list[str]
    decisions: Decisions
    platform: np.ndarray  # int8 [n] PlatformPart
    model_version: str
    platform_version: str


@dataclass(frozen=True)
class Prepared:
    """One applicant's request, prepared (:meth:`Scorer.prepare`): the model and session
    it runs on, its encoded bank features and its PSI handle (-1 outside the
    intersection)."""

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
    """The bank's scorer: one release, its policy, its platform session; thread-safe.

    :meth:`score` is one applicant on the calling thread (intersection customers waiting
    together share one platform call), :meth:`score_batch` a portfolio chunk. The steps
    of :meth:`score` are public so that :class:`bank_node.scoring_aio.AsyncScorer` runs
    the very same ones on an event loop: :meth:`prepare`, then the platform's part
    (arguments from :meth:`platform_query` or :meth:`per_session`, a failure judged by
    :meth:`platform_failure`), then :meth:`finish`.
    """

    def __init__(self, model: ScoringModel, policy: Policy, store: CustomerStore,
                 platform: PlatformEmbeddings | None, coordinator_key: VerifyKey,
                 reconnect: Callable[[], Link] | None = None,
                 aio_channel: Callable[[], grpc.aio.Channel] | None = None) -> None:
        """``reconnect`` opens a new scoring session (PSI again) when the platform has
        lost this one (it restarted); scores fall back until it is back. ``aio_channel``
        opens a ``grpc.aio`` channel to the same platform, on the calling event loop, for
        :class:`bank_node.scoring_aio.AsyncScorer`."""
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
        """The current platform session (None: scoring without the platform)."""
        return self.link[0]

    @property
    def store(self) -> CustomerStore:
        """The customer store, with its handles in the current session."""
        return self.link[1]

    def platform_failure(self, exc: grpc.RpcError) -> PlatformPart:
        """What a failed platform call means for the request, decided on its status code.

        A refusal (PERMISSION_DENIED, INVALID_ARGUMENT) is the request's error: raised as
        a ScoringError with the platform's code. UNAUTHENTICATED is the platform not
        knowing the session (it restarted): fall back and reconnect (PSI again) in the
        background. Anything else is the platform's failure: fall back; DATA_LOSS (the
        platform could not open the query: it was spoilt on the way) and
        :class:`bank_node.scoring_platform.AnswerRefused` (the answer did not open) among
        them."""
        call = isinstance(exc, grpc.Call | grpc.aio.AioRpcError)
        code = exc.code() if call else grpc.StatusCode.UNKNOWN
        details = (exc.details() if call else str(exc)) or ""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            self._start_reconnect()
            return PlatformPart.UNAVAILABLE
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
            raise ScoringError(f"the platform refused: {details}", code=code) from None
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
            raise ScoringError(f"release {model.version}: the platform cannot serve its "
                               f"bottom model {model.platform_version}: {details}",
                               code=grpc.StatusCode.FAILED_PRECONDITION) from None

    @property
    def model(self) -> ScoringModel:
        """The release requests start on now."""
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
        """Score one applicant: by id from the store, or with the bank's ``features``
        inline; ``consent_token`` lets the platform join a customer outside the
        intersection; ``requested_amount`` caps the limit. ScoringError: the request's
        fault (the platform's refusal included)."""
        r = self.prepare(applicant_id, features, consent_token)
        part, row = PlatformPart.ABSENT, None
        platform = r.asks
        if platform is not None:
            try:
                if r.handle >= 0:  # intersection customers share platform calls
                    row = self._joined((r.model, platform, r.handle))
                else:
                    row = first_row(platform.get(**self.platform_query(
                        r.model, *r.consent_query())))
                part = PlatformPart.JOINED if row is not None else PlatformPart.ABSENT
            except grpc.RpcError as exc:
                part = self.platform_failure(exc)
        return self.finish(r, part, row, requested_amount)

    def prepare(self, applicant_id: str, features: Mapping[str, str] | None,
                consent_token: str) -> Prepared:
        """Step 1: one model and one platform session for the whole request, and its
        encoded bank row (ScoringError: unknown applicant, bad inline features)."""
        problem = id_problem(applicant_id)  # the id alphabet every table keeps
        if problem is not None:
            raise ScoringError(f"applicant_id {problem}", code=grpc.StatusCode.INVALID_ARGUMENT)
        if len(consent_token) > MAX_ENCODED_CHARS:  # refused, never a bank-only decision
            raise ScoringError(f"consent_token: {len(consent_token)} characters; a consent "
                               f"token has at most {MAX_ENCODED_CHARS}",
                               code=grpc.StatusCode.INVALID_ARGUMENT)
        m = self._model
        platform, store = self.link
        row = store.row_of.get(applicant_id)
        if features:
            enc = m.preprocessor.transform(self._inline(applicant_id, features))
        else:
            enc = m.store.take(np.array([store.row(applicant_id)]))
        handle = int(store.handles[row]) if row is not None else -1
        return Prepared(m, platform, enc, handle, applicant_id, consent_token)

    def finish(self, r: Prepared, part: PlatformPart, row: np.ndarray | None,
               requested_amount: float | None) -> Scored:
        """Steps 3 and 4: explain and decide, with the platform's embedding ``row`` [dp],
        or on the model's absent path (None); a platform that failed gets the policy's
        fallback."""
        if row is None:
            emb, present = np.zeros((1, r.model.embedding_dim), np.float32), np.zeros(1, bool)
        else:
            emb, present = row[None, :], np.ones(1, bool)
        # inline, not handed to a shared model pass: cheaper (docs/scoring.md)
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
        for platform, query, idx in self.per_session(items):
            emb, _ = platform.get(**query)
            for k, i in enumerate(idx):
                out[i] = emb[k]
        return out

    def platform_query(self, m: ScoringModel, handles: np.ndarray,
                       consented: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """The keyword arguments of a scoring call to the platform on release ``m``
        (:meth:`PlatformEmbeddings.get`, :meth:`PlatformEmbeddings.get_async`), within
        the policy's deadline."""
        return {"version": m.platform_version, "handles": handles, "consented": consented,
                "purpose": embedding_pb2.SCORING_PURPOSE_APPLICATION,
                "timeout": self.policy.fallback.deadline_s, "dim": m.embedding_dim}

    def per_session(self, items: list[tuple[ScoringModel, PlatformEmbeddings, int]]
                    ) -> list[tuple[PlatformEmbeddings, dict[str, Any], list[int]]]:
        """Waiting intersection customers by model and session: (session, the call's
        arguments, the items it answers)."""
        out = []
        for m, platform in {(id(m), id(p)): (m, p) for m, p, _ in items}.values():
            idx = [i for i, (mi, pi, _) in enumerate(items) if mi is m and pi is platform]
            out.append((platform, self.platform_query(
                m, np.array([items[i][2] for i in idx], np.int64), []), idx))
        return out

    def _inline(self, applicant_id: str, features: Mapping[str, str]) -> PartyTable:
        """A one-row table of the bank's schema from a request's features; names the
        field and what was expected on any problem."""
        schema = self.store.table.schema
        known = {f.name for f in schema.features}
        extra = sorted(set(features) - known)
        if extra:
            listed = ", ".join(sorted(known))
            name = extra[0] if len(extra[0]) <= 64 else extra[0][:64] + "..."  # the caller's
            raise ScoringError(f"features.{name}: not a feature of the bank's schema"
                               f"{did_you_mean(name, known)} (expected some of "
                               f"{listed[:400]}{'...' if len(listed) > 400 else ''})",
                               code=grpc.StatusCode.INVALID_ARGUMENT)
        missing = [f.name for f in schema.features
                   if not f.allow_missing and features.get(f.name, "") == ""]
        if missing:  # every one of them, not the first only
            names = ", ".join(f"features.{n}" for n in missing[:50])
            more = f" and {len(missing) - 50} more" if len(missing) > 50 else ""
            raise ScoringError(f"{names}{more}: missing; the schema requires "
                               f"{'them' if len(missing) > 1 else 'it'}",
                               code=grpc.StatusCode.INVALID_ARGUMENT)
        values: dict[str, list[object]] = {}
        for f in schema.features:
            raw = features.get(f.name, "")
            if raw == "":
                values[f.name] = [np.nan if f.kind == "numeric" else None]
            elif f.kind == "numeric":
                try:
                    x = float(raw)
                except ValueError:
                    x = float("nan")
                if not np.isfinite(x):
                    raise ScoringError(f"features.{f.name} = {raw!r}: expected a finite number",
                                       code=grpc.StatusCode.INVALID_ARGUMENT)
                values[f.name] = [x]
            else:
                values[f.name] = [raw]
        frame = pd.DataFrame(values)
        return PartyTable(schema, Path("<request>"), np.array([applicant_id], dtype=object),
                          frame, None)

    # -- a portfolio chunk -----------------------------------------------------------------

    def score_batch(self, ids: Sequence[str]) -> ScoredBatch:
        """Score store customers column-wise (no reasons): one platform call for the
        chunk's intersection customers; a platform failure gets the policy's fallback."""
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
                failed = self.platform_failure(exc)
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
