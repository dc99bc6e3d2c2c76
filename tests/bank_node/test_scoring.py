"""The bank's scoring server against a live platform node, both over mutual TLS.

A release is built here the way the coordinator builds one (bank-side weights, the
pooled preprocessing statistics, the platform model version they pair with, signed by
the coordinator's key); the weights are seeded, not trained: serving must reproduce
whatever model it is given.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from bank_node.policy import Policy
from bank_node.scoring_service import build_scorer
from bank_node.scoring_store import CustomerStore, ScoringModel, _source
from fedscore.api.v1 import embedding_pb2_grpc, scoring_pb2, scoring_pb2_grpc
from fedscore.crypto.consent import issue_consent
from fedscore.data.preprocess import Encoded
from fedscore.federation.release import verify_release
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.model import BankModel, BottomModel, load_arrays
from fedscore.wire.transport import add_secure_port, secure_channel
from platform_node.embedding_service import REFUSALS_FILE
from platform_node.server import PlatformNode
from platform_node.server import create_server as create_platform_server
from tests.bank_node.conftest import BANK, Live, split_ids
from tests.conftest import Federation


def _offline_pd(live: Live, release: int, ids: list[str]) -> np.ndarray:
    """The release's model in process: the bank's rows, the platform's rows by a
    plaintext join of ids (fine in a test), the platform bottom model in process."""
    store = CustomerStore.load_table(live.federation.data.bank_dirs[BANK])
    key = live.federation.kit("coordinator").signing_key.verify_key()
    model = ScoringModel.load(live.releases[release], key, CustomerStore.of(store))
    row_of = {u: i for i, u in enumerate(store.ids)}
    enc = model.store.take(np.array([row_of[i] for i in ids]))
    # the torch model itself, from the release's weights, not the server's numpy twin
    pre = model.preprocessor
    arch = SplitArchitecture()
    bank = BankModel(arch.bank_bottom(pre.n_numeric, pre.cat_cardinalities), arch.top())
    load_arrays(bank, verify_release(live.releases[release], key)[1])
    bank.eval()
    node = live.node
    bottom = BottomModel(node.bottom_config)
    bottom.load_state_dict(node.federation.by_version(live.versions[release]))
    bottom.eval()
    user = {u: i for i, u in enumerate(node.table.ids)}
    prow = np.array([user.get(i, -1) for i in ids])
    with torch.no_grad():
        emb = bottom(torch.from_numpy(node.encoded.numeric[np.maximum(prow, 0)]),
                     torch.from_numpy(node.encoded.categorical[np.maximum(prow, 0)])).numpy()
        logits = bank(torch.from_numpy(enc.numeric), torch.from_numpy(enc.categorical),
                      torch.from_numpy(emb), torch.from_numpy(prow >= 0))
    return torch.sigmoid(logits).double().numpy()


def test_server_pd_equals_the_offline_model(live: Live) -> None:
    inside, outside = split_ids(live)
    ids = inside[:40] + outside[:20]
    want = _offline_pd(live, 0, ids)
    got = []
    for i in ids:
        r = live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=i))
        assert r.model_version == "scoring-0-r0001"
        assert r.platform_model_version == live.versions[0]
        assert r.platform == (scoring_pb2.PLATFORM_PART_JOINED if i in inside
                              else scoring_pb2.PLATFORM_PART_ABSENT)
        assert r.scored and r.grade and r.outcome != scoring_pb2.OUTCOME_UNSPECIFIED
        assert len(r.reasons) <= 4
        got.append(r.pd)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.ptp(want) > 0.05  # the check can tell rows apart
    # the platform's part matters: the same rows scored without it differ
    assert np.abs(np.asarray(got[:40]) - _bank_only(live, ids[:40])).max() > 1e-3

    # the batch path: every store customer, in two messages
    store_ids = inside[:300] + outside[:100]
    replies = list(live.stub.ScoreBatch(iter([
        scoring_pb2.ScoreBatchRequest(applicant_ids=store_ids[:250]),
        scoring_pb2.ScoreBatchRequest(applicant_ids=store_ids[250:]),
    ])))
    batch_pd = [p for r in replies for p in r.pd]
    assert [a for r in replies for a in r.applicant_ids] == store_ids
    np.testing.assert_allclose(batch_pd, _offline_pd(live, 0, store_ids), atol=1e-6, rtol=0)
    # and it decides as one Score call does
    one = live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=store_ids[3]))
    assert (replies[0].score[3], replies[0].grade[3], replies[0].outcome[3]) == (
        one.score, one.grade, one.outcome)


def test_reasons_are_what_each_column_at_its_best_reference_saves(live: Live) -> None:
    """explain's one vectorised pass equals the definition, column by column: the PD as
    is minus the PD with that column at its reference (the pooled mean for a numeric
    one, the best other category for a categorical one), summed per bank feature."""
    store = CustomerStore.load_table(live.federation.data.bank_dirs[BANK])
    model = ScoringModel.load(live.releases[0],
                              live.federation.kit("coordinator").signing_key.verify_key(),
                              CustomerStore.of(store))
    n = 16
    enc = model.store.take(np.arange(n))
    emb = np.random.default_rng(0).normal(size=(n, model.embedding_dim)).astype(np.float32)
    present = np.arange(n) % 2 == 0
    pds, reasons = model.explain(enc, emb, present)
    np.testing.assert_allclose(pds, model.pd(enc, emb, present), atol=1e-6, rtol=0)

    pre = model.preprocessor
    want: list[dict[str, float]] = [{} for _ in range(n)]

    def add(name: str, drop: np.ndarray) -> None:
        for r in range(n):
            want[r][_source(name)] = want[r].get(_source(name), 0.0) + float(drop[r])

    for i, name in enumerate(pre.numeric_names):
        num = enc.numeric.copy()
        num[:, i] = 0.0
        add(name, pds - model.pd(Encoded(num, enc.categorical), emb, present))
    for k, (name, card) in enumerate(zip(pre.categorical_names, pre.cat_cardinalities,
                                         strict=True)):
        best = np.full(n, np.inf)
        for code in range(1, card):
            cat = enc.categorical.copy()
            cat[:, k] = code
            best = np.minimum(best, model.pd(Encoded(enc.numeric, cat), emb, present))
        add(name, pds - best)
    for got, expected in zip(reasons, want, strict=True):
        assert list(got) == list(expected)
        np.testing.assert_allclose(list(got.values()), list(expected.values()), atol=1e-6)
    assert max(v for r in want for v in r.values()) > 1e-3  # the check can tell


def _bank_only(live: Live, ids: list[str]) -> np.ndarray:
    store = CustomerStore.load_table(live.federation.data.bank_dirs[BANK])
    model = ScoringModel.load(live.releases[0],
                              live.federation.kit("coordinator").signing_key.verify_key(),
                              CustomerStore.of(store))
    row_of = {u: i for i, u in enumerate(store.ids)}
    enc = model.store.take(np.array([row_of[i] for i in ids]))
    return model.pd(enc, np.zeros((len(ids), model.embedding_dim), np.float32),
                    np.zeros(len(ids), bool))


def _text(kind: str, v: object) -> str:
    """A table value as a request carries it ("" = missing)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return repr(float(v)) if kind == "numeric" else str(v)  # type: ignore[arg-type]


def test_inline_features_score_like_the_store_and_bad_ones_are_named(live: Live) -> None:
    inside, _ = split_ids(live)
    table = CustomerStore.load_table(live.federation.data.bank_dirs[BANK])
    row = [str(i) for i in table.ids].index(inside[0])
    feats = {f.name: _text(f.kind, v)
             for f, v in zip(table.schema.features, table.features.iloc[row], strict=True)}
    a = live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=inside[0], features=feats))
    b = live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=inside[0]))
    assert a.pd == pytest.approx(b.pd, abs=1e-6)
    numeric = next(f.name for f in table.schema.features if f.kind == "numeric")
    cases = {f"features.{numeric} = 'lots'": {**feats, numeric: "lots"},
             "features.SHOE_SIZE: not a feature": {**feats, "SHOE_SIZE": "42"},
             f"features.{numeric}: missing": {k: v for k, v in feats.items() if k != numeric}}
    for message, bad in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            live.stub.Score(scoring_pb2.ScoreRequest(applicant_id="x", features=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        live.stub.Score(scoring_pb2.ScoreRequest(applicant_id="nobody-at-all"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_consent_tokens_open_the_platform_only_when_valid(live: Live) -> None:
    # a platform user this bank does not know: scored from inline features, and the
    # platform's part only with a valid consent token
    store_ids = set(CustomerStore.load_table(live.federation.data.bank_dirs[BANK]).ids)
    stranger = next(str(u) for u in live.node.table.ids if u not in store_ids)
    table = CustomerStore.load_table(live.federation.data.bank_dirs[BANK])
    feats = {f.name: _text(f.kind, table.features[f.name].iloc[0])
             for f in table.schema.features}
    key = live.federation.kit("platform").signing_key

    def token(bank: str = BANK, applicant: str = stranger, ttl: int = 600,
              at: float | None = None, signer: object = key) -> str:
        return issue_consent(signer, issuer="platform", bank=bank,  # type: ignore[arg-type]
                             applicant_id=applicant, ttl_s=ttl,
                             now=(lambda: at) if at is not None else time.time).encode()

    def score(tok: str) -> scoring_pb2.ScoreResponse:
        return live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=stranger, features=feats,
                                                        consent_token=tok))

    assert score("").platform == scoring_pb2.PLATFORM_PART_ABSENT
    ok = score(token())
    assert ok.platform == scoring_pb2.PLATFORM_PART_JOINED
    assert ok.pd != pytest.approx(score("").pd, abs=1e-4)
    from fedscore.crypto.primitives import SigningPrivateKey

    refused = {
        "expired": token(ttl=60, at=time.time() - 3600),
        "wrong_bank": token(bank="bank-2"),
        "wrong_applicant": token(applicant="someone-else"),
        "forged": token(signer=SigningPrivateKey.generate()),
    }
    for reason, tok in refused.items():
        with pytest.raises(grpc.RpcError) as err:
            score(tok)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, reason
        assert f"({reason.replace('_', '-')})" in err.value.details()
    # every refusal recorded on the platform, without the applicant's id
    log = (live.state / REFUSALS_FILE).read_text()
    assert len(log.splitlines()) == len(refused)
    assert stranger not in log and '"peer": "bank-1"' in log


def test_only_the_bank_itself_may_call_its_scoring_server(live: Live) -> None:
    other = secure_channel(live.address, live.federation.kit("bank-2"), BANK)
    with pytest.raises(grpc.RpcError) as err:
        scoring_pb2_grpc.ScoringServiceStub(other).Score(
            scoring_pb2.ScoreRequest(applicant_id=split_ids(live)[0][0]))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    other.close()


def test_platform_down_falls_back_within_the_deadline(live: Live) -> None:
    inside, _ = split_ids(live)
    live.platform.stop(grace=None).wait()
    deadline = Policy.default().fallback.deadline_s
    t0 = time.perf_counter()
    r = live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=inside[0]))
    took = time.perf_counter() - t0
    assert r.platform == scoring_pb2.PLATFORM_PART_UNAVAILABLE
    assert r.fallback == "bank-only"
    assert r.pd == pytest.approx(float(_bank_only(live, inside[:1])[0]), abs=1e-6)
    assert took < deadline + 1.0  # never a hang


class _Hanging(embedding_pb2_grpc.EmbeddingServiceServicer):
    def GetEmbeddings(self, request: object, context: grpc.ServicerContext) -> object:
        time.sleep(3.0)
        context.abort(grpc.StatusCode.UNAVAILABLE, "too late")


def test_a_slow_platform_times_out_to_the_fallback(live: Live, federation: Federation) -> None:
    from bank_node.scoring_platform import PlatformEmbeddings

    slow = grpc.server(futures.ThreadPoolExecutor(4))
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(_Hanging(), slow)
    port = add_secure_port(slow, "127.0.0.1:0", federation.kit("platform"))
    slow.start()
    kit = federation.kit(BANK)
    scorer = build_scorer(kit, federation.data.bank_dirs[BANK], live.releases[0],
                          live.platform_address, Policy.default())
    scorer.link = (PlatformEmbeddings(secure_channel(f"127.0.0.1:{port}", kit, "platform"),
                                      kit, _session_of(scorer)), scorer.store)
    inside, _ = split_ids(live)
    t0 = time.perf_counter()
    scored = scorer.score(inside[0])
    took = time.perf_counter() - t0
    slow.stop(grace=None)
    assert scored.platform.name == "TIMED_OUT"
    assert took < Policy.default().fallback.deadline_s + 0.5


def _session_of(scorer: object) -> object:
    from fedscore.crypto.psi import PsiResult

    handles = scorer.store.handles  # type: ignore[attr-defined]
    rows = np.flatnonzero(handles >= 0)
    return PsiResult(b"\x01" * 16, rows[np.argsort(handles[rows])], len(rows))


def test_switching_releases_under_load_loses_no_request(live: Live) -> None:
    inside, outside = split_ids(live)
    ids = inside[:20] + outside[:5]
    want = {f"scoring-{k}-r0001": dict(zip(ids, _offline_pd(live, k, ids), strict=True))
            for k in (0, 1)}
    stop = threading.Event()
    seen: list[tuple[str, str, float]] = []
    errors: list[BaseException] = []

    def load() -> None:
        k = 0
        while not stop.is_set():
            try:
                i = ids[k % len(ids)]
                r = live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=i))
                seen.append((r.model_version, i, r.pd))
            except BaseException as exc:
                errors.append(exc)
            k += 1

    workers = [threading.Thread(target=load) for _ in range(6)]
    for w in workers:
        w.start()
    versions = []
    for n in range(6):
        reply = live.stub.LoadRelease(scoring_pb2.LoadReleaseRequest(
            path=str(live.releases[(n + 1) % 2])))
        versions.append(reply.model_version)
        time.sleep(0.15)
    stop.set()
    for w in workers:
        w.join()
    assert not errors
    assert versions == ["scoring-1-r0001", "scoring-0-r0001"] * 3
    assert {v for v, _, _ in seen} == set(want)  # both served
    for version, i, pd in seen:
        assert pd == pytest.approx(want[version][i], abs=1e-6)
    # a release that does not verify is refused, and the current one stays
    with pytest.raises(grpc.RpcError) as err:
        live.stub.LoadRelease(scoring_pb2.LoadReleaseRequest(path=str(live.state)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=ids[0])).model_version


def test_the_score_command_prints_the_decision(live: Live, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from fedscore.cli.main import app

    inside, _ = split_ids(live)
    applicant = tmp_path / "applicant.json"
    applicant.write_text(json.dumps({"applicant_id": inside[0], "requested_amount": 1000}))
    kit = str(live.federation.kits / BANK)
    runner = CliRunner()
    ok = runner.invoke(app, ["score", str(applicant), "--server", live.address, "--kit", kit])
    assert ok.exit_code == 0, ok.output
    want = live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=inside[0],
                                                    requested_amount=1000))
    outcome = scoring_pb2.Outcome.Name(want.outcome).removeprefix("OUTCOME_")
    assert f"{outcome}  applicant {inside[0]}" in ok.output
    assert f"score {want.score}   grade {want.grade}" in ok.output
    assert "platform part: joined" in ok.output
    as_json = runner.invoke(app, ["score", str(applicant), "--server", live.address,
                                  "--kit", kit, "--json"])
    assert json.loads(as_json.output)["pd"] == pytest.approx(want.pd)
    applicant.write_text('{"features": {}}')
    bad = runner.invoke(app, ["score", str(applicant), "--server", live.address, "--kit", kit])
    assert bad.exit_code == 1
    assert "applicant.json: applicant_id = None; expected a non-empty string" in (
        bad.output.replace("\n", ""))


def test_a_restarted_platform_costs_a_fallback_then_a_new_session(live: Live) -> None:
    inside, _ = split_ids(live)
    live.platform.stop(grace=None).wait()
    node = PlatformNode(live.federation.kit("platform"), live.federation.platform_table(),
                        state_dir=live.state)  # the same committed models, no sessions
    port = int(live.platform_address.rsplit(":", 1)[1])
    server, _ = create_platform_server(f"127.0.0.1:{port}", node)
    server.start()
    try:
        first = live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=inside[0]))
        assert first.platform == scoring_pb2.PLATFORM_PART_UNAVAILABLE  # session lost
        assert first.fallback == "bank-only"
        deadline = time.monotonic() + 20
        while True:  # the server runs PSI again in the background
            r = live.stub.Score(scoring_pb2.ScoreRequest(applicant_id=inside[0]))
            if r.platform == scoring_pb2.PLATFORM_PART_JOINED or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.platform == scoring_pb2.PLATFORM_PART_JOINED
        assert r.pd == pytest.approx(float(_offline_pd(live, 0, inside[:1])[0]), abs=1e-6)
    finally:
        server.stop(grace=None)


def test_a_platform_failure_is_judged_on_its_code(live: Live, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    """UNAUTHENTICATED (the platform lost the session) starts a new session; NOT_FOUND (an
    unknown model version, on the same call) does not; a refusal's text is not read."""
    from bank_node.scoring import PlatformPart
    from bank_node.scoring_store import ScoringError

    kit = live.federation.kit(BANK)
    scorer = build_scorer(kit, live.federation.data.bank_dirs[BANK], live.releases[0],
                          live.platform_address, Policy.default())
    started: list[int] = []
    monkeypatch.setattr(scorer, "_start_reconnect", lambda: started.append(1))

    def failed(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)

    assert scorer.platform_failure(failed(grpc.StatusCode.UNAUTHENTICATED)) \
        is PlatformPart.UNAVAILABLE
    assert started == [1]
    assert scorer.platform_failure(failed(grpc.StatusCode.NOT_FOUND)) is PlatformPart.UNAVAILABLE
    assert scorer.platform_failure(failed(grpc.StatusCode.DEADLINE_EXCEEDED)) \
        is PlatformPart.TIMED_OUT
    with pytest.raises(ScoringError) as refused:
        scorer.platform_failure(failed(grpc.StatusCode.PERMISSION_DENIED,
                                       "unknown session 01; run PSI first"))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert started == [1]
