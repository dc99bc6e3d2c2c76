"""Online scoring, the platform's side: embeddings on demand, for the bank that may have them.

A bank's scoring server opens a scoring session with PSI over its customer store; the
platform then answers ``GetEmbeddings`` for handles of that session (customers in the
intersection) and for applicants whose consent token it signed for that bank and
applicant and that is still valid. One bad handle, one refused token: the whole call is
refused with PERMISSION_DENIED (or INVALID_ARGUMENT for a malformed one). A sealed query
that does not open (altered, reflected, replayed, below the replay window) is refused
with DATA_LOSS, its own code: a bank's own queries always open, so it was spoilt on the
way, and the bank's scorer gives the applicant its policy's fallback where a
PERMISSION_DENIED fails the request. Every refusal is recorded (log, and a JSON line in
``scoring-refusals.jsonl`` under the state folder) without the applicant's id.

Embeddings come from a committed bottom-model version; the platform computes the whole
table's once per version (a few MB) and then serves rows from memory. When the run that
made the version had embedding DP on, the table is clipped and noised once, when it is
computed: asking again for the same customer returns the same noisy row, so online
scoring adds one release per customer per version (per platform process), however
often a bank asks.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import torch

from fedscore.api.v1 import embedding_pb2, embedding_pb2_grpc
from fedscore.crypto.consent import ConsentError, verify_consent
from fedscore.crypto.dp import DpSettings, gaussian_mechanism
from fedscore.crypto.primitives import Direction, Sealer, SealError, VerifyKey, WindowOpener
from fedscore.data.preprocess import Encoded
from fedscore.errors import FedscoreError
from fedscore.ml.architecture import BottomConfig
from fedscore.ml.model import BottomModel
from fedscore.ops import metrics
from fedscore.wire import serde
from fedscore.wire.limits import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_QUERY_BYTES,
    MAX_QUERY_CONSENTED,
    MAX_QUERY_HANDLES,
    LimitError,
    check_count,
    check_length,
)
from fedscore.wire.transport import peer_party
from platform_node.model_store import StateDict
from platform_node.sessions import Session, SessionError, SessionRegistry

log = logging.getLogger(__name__)

SCORING_ROUND = 0
REFUSALS_FILE = "scoring-refusals.jsonl"


class ScoringRefusal(FedscoreError):
    """A scoring query the platform refuses as a whole (PERMISSION_DENIED, INVALID_ARGUMENT
    for a malformed one, DATA_LOSS for one that does not open); recorded before the bank
    hears of it. ``reason``: the refusals file's reason (the message unless a consent
    check names one); ``token_id``: the refused consent token's, if any."""

    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None,
                 reason: str = "", token_id: str | None = None,
                 label: str = "refused") -> None:
        super().__init__(message, code=code)
        self.reason = reason or message
        self.token_id = token_id
        self.label = label  # a short, fixed word: the metric's reason label


class EmbeddingTable:
    """Every platform user's embedding under one committed bottom model, per version."""

    def __init__(self, encoded: Encoded, config: BottomConfig,
                 weights: Callable[[str], StateDict], keep: int = 4,
                 privacy: Callable[[str], DpSettings | None] | None = None) -> None:
        self._encoded, self._config, self._weights = encoded, config, weights
        self._privacy = privacy  # version -> its run's embedding mechanism (None: off)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def rows(self, version: str, rows: np.ndarray) -> np.ndarray:
        """[len(rows), dim] float32 embeddings of platform table rows ``rows``."""
        with self._lock:
            table = self._cache.get(version)
            if table is None:
                table = self._compute(version)
                self._cache[version] = table
                while len(self._cache) > self._keep:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(version)
        return table[rows]

    def _compute(self, version: str) -> np.ndarray:
        model = BottomModel(self._config)
        model.load_state_dict(self._weights(version))
        model.eval()
        num = torch.from_numpy(self._encoded.numeric)
        cat = torch.from_numpy(self._encoded.categorical)
        out = np.empty((len(self._encoded), self._config.out_dim), np.float32)
        with torch.no_grad():
            for start in range(0, len(self._encoded), 65536):
                stop = start + 65536
                out[start:stop] = model(num[start:stop], cat[start:stop]).numpy()
        dp = self._privacy(version) if self._privacy is not None else None
        if dp is not None and dp.enabled:
            noise = gaussian_mechanism(dp.clip, dp.noise_multiplier)
            with torch.no_grad():
                out = noise(torch.from_numpy(out)).numpy()
        return out


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    """Answers a bank's sealed embedding queries for its scoring session (see the module)."""

    def __init__(
        self,
        registry: SessionRegistry,
        table: EmbeddingTable,
        user_rows: dict[str, int],
        *,
        issuer: str,
        verify_key: VerifyKey,
        state_dir: Path | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._table = table
        self._user_rows = user_rows
        self._issuer, self._verify_key = issuer, verify_key
        self._refusals = state_dir / REFUSALS_FILE if state_dir is not None else None
        self._now = now
        self._lock = threading.Lock()
        # the refusals file has a lock of its own: a refusal's fsync must not hold up
        # another bank's query, which takes _lock for its session's sealing pair
        self._file_lock = threading.Lock()

    def GetEmbeddings(
        self, request: embedding_pb2.GetEmbeddingsRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.GetEmbeddingsResponse:
        """The embeddings a bank may have for one sealed query, sealed back; a refused
        query is recorded (:meth:`_refuse`) before the call ends with its code."""
        peer = peer_party(context, self._registry.kit)
        try:
            return self._answer(request, peer)
        except ScoringRefusal as refusal:
            self._refuse(peer, refusal)
            raise

    def _answer(self, request: embedding_pb2.GetEmbeddingsRequest, peer: str
                ) -> embedding_pb2.GetEmbeddingsResponse:
        try:
            box = serde.sealed_from_pb(request.sealed)
        except serde.WireError as exc:
            raise ScoringRefusal(f"malformed: {exc}", code=grpc.StatusCode.INVALID_ARGUMENT,
                                 label="malformed") from None
        try:
            session = self._registry.get(box.session_id, peer)
        except SessionError as exc:
            raise ScoringRefusal(str(exc), code=exc.code, label="session") from None
        opener, sealer = self._scoring_pair(session)
        try:  # the documented bounds, before it is decrypted and before any row is read
            check_length("sealed query", box.ciphertext, MAX_QUERY_BYTES)
        except LimitError as exc:
            raise ScoringRefusal(str(exc), code=exc.code, label="too-large") from None
        try:
            query = embedding_pb2.EmbeddingQuery.FromString(
                opener.open(box, round=SCORING_ROUND))
        except SealError as exc:
            raise ScoringRefusal(f"sealed query refused: {exc}",
                                 code=grpc.StatusCode.DATA_LOSS, label="sealed") from None
        try:
            check_count("EmbeddingQuery.handles", len(query.handles) // 4, MAX_QUERY_HANDLES)
            check_count("EmbeddingQuery.consented", len(query.consented), MAX_QUERY_CONSENTED)
            check_length("platform_model_version", query.platform_model_version,
                         MAX_NAME_CHARS)
            for applicant in query.consented:
                check_length("consented.applicant_id", applicant.applicant_id, MAX_ID_CHARS)
        except LimitError as exc:
            raise ScoringRefusal(str(exc), code=exc.code, label="too-large") from None
        try:
            handles = serde.handles_from_bytes(query.handles, limit=session.psi.size)
        except serde.WireError as exc:
            raise ScoringRefusal(f"not in this bank's intersection: {exc}",
                                 label="not-in-intersection") from None
        rows = [session.psi.rows[handles]]
        present = [np.ones(handles.size, np.uint8)]
        for applicant in query.consented:
            try:
                token = verify_consent(applicant.consent_token, self._verify_key, bank=peer,
                                       applicant_id=applicant.applicant_id,
                                       issuer=self._issuer, now=self._now)
            except ConsentError as exc:
                raise ScoringRefusal(str(exc), reason=str(exc.reason),
                                     token_id=exc.token_id,
                                     label=f"consent-{exc.reason.value}") from None
            row = self._user_rows.get(applicant.applicant_id, -1)
            rows.append(np.array([max(row, 0)], np.int64))
            present.append(np.array([row >= 0], np.uint8))
            log.info("scoring: consented applicant served to %s (token %s)", peer,
                     token.token_id)
        all_rows, mask = np.concatenate(rows), np.concatenate(present)
        # FederationError (NOT_FOUND: no such version) is not a refusal: not recorded
        emb = self._table.rows(query.platform_model_version, all_rows)
        emb[mask == 0] = 0.0
        answer = embedding_pb2.EmbeddingAnswer(embeddings=serde.tensor_to_pb(emb),
                                               present=mask.tobytes())
        sealed = sealer.seal(answer.SerializeToString(), round=SCORING_ROUND, batch=box.batch)
        return embedding_pb2.GetEmbeddingsResponse(sealed=serde.sealed_to_pb(sealed))

    def _scoring_pair(self, session: Session) -> tuple[WindowOpener, Sealer]:
        with self._lock:
            if session.scoring is None:
                key = session.key.for_scoring()
                session.scoring = (
                    WindowOpener(key, session.session_id, Direction.BANK_TO_PLATFORM),
                    Sealer(key, session.session_id, Direction.PLATFORM_TO_BANK),
                )
            return session.scoring

    def _refuse(self, peer: str, refusal: ScoringRefusal) -> None:
        """Record a refusal (no applicant id in it): the log, and a line in the refusals
        file, synced before the peer hears of it."""
        entry = {"time": self._now(), "peer": peer, "status": refusal.code.name,
                 "reason": refusal.reason, "token_id": refusal.token_id}
        log.warning("scoring: refused %s: %s", peer, refusal.message,
                    extra={"peer": peer, "reason": refusal.label, "code": refusal.code.name})
        metrics.REFUSALS.labels(self._issuer, peer, refusal.label, refusal.code.name).inc()
        if self._refusals is not None:
            with self._file_lock, self._refusals.open("a") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())
