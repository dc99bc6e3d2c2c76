"""The scorer on an event loop: :class:`AsyncScorer`, what the scoring server serves.

It runs the steps of :meth:`bank_node.scoring.Scorer.score` (its public
:meth:`~bank_node.scoring.Scorer.prepare`, ``platform_query``, ``per_session``,
``platform_failure`` and ``finish``) with the platform called over ``grpc.aio``; why
aio, in figures: ``docs/scoring.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
import grpc.aio
import numpy as np

from bank_node.scoring import PlatformPart, Scored, Scorer
from bank_node.scoring_platform import PlatformEmbeddings, first_row
from bank_node.scoring_store import ScoringModel
from fedscore.api.v1 import embedding_pb2_grpc
from fedscore.wire.batching import Gathered


class AsyncScorer:
    """:meth:`Scorer.score` on an event loop, the platform called over ``grpc.aio`` (a
    sync server and channel cost several times the model's CPU per score:
    ``docs/scoring.md``). Requests that arrive while a platform call is in flight join
    the next one. The model, policy, store and platform session are the Scorer's
    (release switches and reconnects included); only the transport differs."""

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
        """:meth:`Scorer.score`, awaited: the same steps, the same result."""
        s = self.scorer
        if self._stub is None:  # no aio link: the sync path, off the loop
            return await asyncio.get_running_loop().run_in_executor(
                None, s.score, applicant_id, features, consent_token, requested_amount)
        r = s.prepare(applicant_id, features, consent_token)
        part, row = PlatformPart.ABSENT, None
        platform = r.asks
        if platform is not None:
            try:
                if r.handle >= 0:
                    row = await self._joined((r.model, platform, r.handle))
                else:
                    row = first_row(await platform.get_async(
                        self._stub, **s.platform_query(r.model, *r.consent_query())))
                part = PlatformPart.JOINED if row is not None else PlatformPart.ABSENT
            except grpc.RpcError as exc:
                part = s.platform_failure(exc)
        return s.finish(r, part, row, requested_amount)

    async def _embed_many(self, items: list[tuple[ScoringModel, PlatformEmbeddings, int]]
                          ) -> list[np.ndarray]:
        """One platform call for every waiting intersection customer (per model and
        session)."""
        assert self._stub is not None
        out: list[np.ndarray] = [np.empty(0)] * len(items)
        for platform, query, idx in self.scorer.per_session(items):
            emb, _ = await platform.get_async(self._stub, **query)
            for k, i in enumerate(idx):
                out[i] = emb[k]
        return out
