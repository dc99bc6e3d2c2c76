"""Federated rounds on the platform: the round bookkeeping and averaging of
:class:`platform_node.federation.Federation` (unit), then a whole round over real mTLS
gRPC: the coordinator starts and finishes it, two banks train against the platform."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from bank_node.federated import _is_session_lost
from bank_node.platform_link import GrpcPlatformLink, PlatformError
from bank_node.psi_client import run_psi
from bank_node.trainer import BankTables
from coordinator.platform_control import PlatformControl, PlatformControlError
from fedscore.crypto.psi import PsiResult
from fedscore.data.preprocess import Preprocessor
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.model import BankModel
from fedscore.ml.training import BankData, TrainConfig, predict, train_round
from fedscore.wire.transport import secure_channel
from platform_node.federation import Federation, FederationError, weighted_average
from platform_node.model_store import ModelStore, StateDict, model_version
from platform_node.server import PlatformNode, create_server
from tests.conftest import Federation as FederationFixture
from tests.conftest import LivePlatform

# ---------------------------------------------------------------------------------------------
# unit: Federation on a ModelStore under tmp_path
# ---------------------------------------------------------------------------------------------

RUN = "run-1"


def _base(seed: int) -> StateDict:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(3, 2, generator=g),
        "b": torch.randn(3, generator=g),
        "offsets": torch.tensor([0, 4, 9], dtype=torch.int64),
    }


def _like(value: float, offsets: tuple[int, ...] = (0, 4, 9)) -> StateDict:
    return {
        "w": torch.full((3, 2), value),
        "b": torch.full((3,), -value),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
    }


@pytest.fixture()
def fed(tmp_path: Path) -> Federation:
    return Federation(ModelStore(tmp_path / "store"), _base)


def _raises(status: str, call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(FederationError) as info:
        call(*args)
    assert info.value.code == grpc.StatusCode[status], str(info.value)
    return str(info.value)


def test_weighted_average_is_the_row_weighted_mean() -> None:
    a = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([[5.0, -2.0], [0.0, 8.0]]), "n": torch.tensor(9)}
    c = {"w": torch.tensor([[-1.0, 0.5], [2.0, 2.0]]), "n": torch.tensor(11)}
    out = weighted_average([(a, 10), (b, 30), (c, 60)])
    # by hand: (10 * a + 30 * b + 60 * c) / 100
    expected = torch.tensor(
        [
            [(10 * 1 + 30 * 5 + 60 * -1) / 100, (10 * 2 + 30 * -2 + 60 * 0.5) / 100],
            [(10 * 3 + 30 * 0 + 60 * 2) / 100, (10 * 4 + 30 * 8 + 60 * 2) / 100],
        ]
    )
    torch.testing.assert_close(expected, torch.tensor([[1.0, -0.1], [1.5, 4.0]]))
    torch.testing.assert_close(out["w"], expected, rtol=0, atol=1e-7)
    assert out["w"].dtype == torch.float32
    assert out["n"].item() == 7  # integer tensors come from the first part, not averaged
    assert out["n"].dtype == a["n"].dtype

    # equal rows: the plain mean; one part: itself; rows, not the number of parts, count
    torch.testing.assert_close(weighted_average([(a, 5), (b, 5)])["w"], (a["w"] + b["w"]) / 2)
    torch.testing.assert_close(weighted_average([(c, 3)])["w"], c["w"])
    torch.testing.assert_close(
        weighted_average([(a, 1), (a, 1), (b, 2)])["w"], weighted_average([(a, 2), (b, 2)])["w"]
    )
    # the inputs are untouched
    assert a["w"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_weighted_average_accumulates_in_float64() -> None:
    big = {"w": torch.tensor([1.0e8], dtype=torch.float32)}
    small = {"w": torch.tensor([1.0], dtype=torch.float32)}
    parts = [(big, 1)] + [(small, 1)] * 999
    exact = (1.0e8 + 999.0) / 1000.0
    out = weighted_average(parts)["w"]
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(exact, rel=1e-7)


def test_start_round_one_stores_the_seeded_base(fed: Federation) -> None:
    assert fed.run_state(RUN) == (0, "")
    assert fed.open_round(RUN) == 0
    version = fed.start_round(RUN, 1, seed=4)
    assert version == model_version(0, _base(4))
    assert fed.open_round(RUN) == 1
    weights, base_version = fed.base(RUN, 1)
    assert base_version == version
    for k, v in _base(4).items():
        assert torch.equal(weights[k], v)
    weights["w"].zero_()  # a session's copy: changing it leaves the round's base alone
    assert torch.equal(fed.base(RUN, 1)[0]["w"], _base(4)["w"])
    assert fed.run_state(RUN) == (0, "")  # round 0 is not a finished round

    assert fed.start_round(RUN, 1, seed=4) == version  # same seed: same base
    other = fed.start_round(RUN, 1, seed=5)  # another seed: another base
    assert other == model_version(0, _base(5)) != version
    assert fed.base(RUN, 1)[1] == other


def test_start_round_refuses_to_skip_rounds(fed: Federation) -> None:
    message = _raises("FAILED_PRECONDITION", fed.start_round, RUN, 2, 0)
    assert message == (
        f"run {RUN!r} cannot start round 2: its last finished round is 0, so the next is 1"
    )
    fed.start_round(RUN, 1, 0)
    fed.contribute(RUN, 1, b"s1", _like(1.0), 10)
    fed.finish_round(RUN, 1)
    message = _raises("FAILED_PRECONDITION", fed.start_round, RUN, 3, 0)
    assert "last finished round is 1, so the next is 2" in message
    fed.start_round(RUN, 2, 0)
    assert fed.open_round(RUN) == 2


@pytest.mark.parametrize(
    ("run_id", "round_", "seed", "match"),
    [
        ("../x", 1, 0, "invalid run id"),
        ("", 1, 0, "invalid run id"),
        ("a/b", 1, 0, "invalid run id"),
        (RUN, 0, 0, "rounds are 1-based"),
        (RUN, 1, -1, "seed must be in"),
        (RUN, 1, 2**62, "seed must be in"),
    ],
)
def test_start_round_validates_its_arguments(
    fed: Federation, run_id: str, round_: int, seed: int, match: str
) -> None:
    assert match in _raises("INVALID_ARGUMENT", fed.start_round, run_id, round_, seed)
    assert fed.open_round(RUN) == 0


def test_finish_without_contributions_is_refused(fed: Federation) -> None:
    fed.start_round(RUN, 1, 0)
    message = _raises("FAILED_PRECONDITION", fed.finish_round, RUN, 1)
    assert message == f"round 1 of run {RUN!r} has no committed bank session"
    # only sessions that forwarded no training row: refused as well
    fed.contribute(RUN, 1, b"idle", _like(3.0), 0)
    assert "no committed session forwarded a training row" in _raises(
        "FAILED_PRECONDITION", fed.finish_round, RUN, 1
    )
    # the round stays open and can still finish
    assert fed.open_round(RUN) == 1
    fed.contribute(RUN, 1, b"busy", _like(1.0), 5)
    done = fed.finish_round(RUN, 1)
    assert (done.sessions, done.rows) == (2, 5)  # the idle session counts with weight 0
    assert torch.equal(fed.store.load(RUN, 1)["w"], _like(1.0)["w"])
    assert fed.open_round(RUN) == 0


def test_calls_for_a_round_that_is_not_open_are_refused(fed: Federation) -> None:
    assert "no round is open" in _raises("FAILED_PRECONDITION", fed.finish_round, RUN, 1)
    assert "no round is open" in _raises(
        "FAILED_PRECONDITION", fed.contribute, RUN, 1, b"s", _like(1.0), 1
    )
    assert "no round is open" in _raises("FAILED_PRECONDITION", fed.base, RUN, 1)
    fed.start_round(RUN, 1, 0)
    for call, args in (
        (fed.finish_round, (RUN, 2)),
        (fed.contribute, (RUN, 2, b"s", _like(1.0), 1)),
        (fed.base, (RUN, 2)),
    ):
        assert "round 1 is open" in _raises("FAILED_PRECONDITION", call, *args)
    # another run has nothing open
    assert "no round is open" in _raises("FAILED_PRECONDITION", fed.base, "run-2", 1)


def test_finish_averages_by_rows_and_a_session_replaces_its_contribution(
    fed: Federation,
) -> None:
    fed.start_round(RUN, 1, 0)
    fed.contribute(RUN, 1, b"s1", _like(100.0), 1000)  # replaced below: must not count
    fed.contribute(RUN, 1, b"s2", _like(4.0), 30)
    mine = _like(1.0)
    fed.contribute(RUN, 1, b"s1", mine, 10)
    mine["w"].fill_(55.0)  # the federation holds its own copy
    done = fed.finish_round(RUN, 1)
    assert (done.sessions, done.rows) == (2, 40)
    stored = fed.store.load(RUN, 1)
    # (10 * 1 + 30 * 4) / 40 = 3.25
    assert torch.equal(stored["w"], torch.full((3, 2), 3.25))
    assert torch.equal(stored["b"], torch.full((3,), -3.25))
    assert stored["offsets"].tolist() == [0, 4, 9]
    assert done.version == model_version(1, stored)
    assert fed.run_state(RUN) == (1, done.version)
    # the finished round is closed
    assert "no round is open" in _raises("FAILED_PRECONDITION", fed.finish_round, RUN, 1)


def test_finish_averages_only_the_banks_the_coordinator_aggregated(fed: Federation) -> None:
    """A bank lost after its commit here (its update never reached SecAgg+'s sum) does not
    count in the platform's average either; a named bank without a commit is refused."""
    fed.start_round(RUN, 1, 0)
    fed.contribute(RUN, 1, b"s1", _like(1.0), 10, bank="bank-1")
    fed.contribute(RUN, 1, b"s2", _like(4.0), 30, bank="bank-2")
    fed.contribute(RUN, 1, b"s3", _like(100.0), 1000, bank="bank-3")  # lost afterwards
    message = _raises("FAILED_PRECONDITION", fed.finish_round, RUN, 1,
                      ("bank-1", "bank-4"))
    assert "bank-4" in message and "committed no session" in message
    assert "too many" not in _raises("INVALID_ARGUMENT", fed.finish_round, RUN, 1,
                                     tuple(f"b{i}" for i in range(1025)))
    done = fed.finish_round(RUN, 1, ("bank-1", "bank-2"))
    assert (done.sessions, done.rows) == (2, 40)
    assert torch.equal(fed.store.load(RUN, 1)["w"], torch.full((3, 2), 3.25))


def test_restarting_a_round_discards_what_was_collected(fed: Federation) -> None:
    fed.start_round(RUN, 1, 0)
    fed.contribute(RUN, 1, b"s1", _like(1.0), 10)
    fed.contribute(RUN, 1, b"s2", _like(2.0), 10)
    fed.start_round(RUN, 1, 0)  # a restarted coordinator
    assert "no committed bank session" in _raises("FAILED_PRECONDITION", fed.finish_round, RUN, 1)
    fed.contribute(RUN, 1, b"s3", _like(8.0), 1)
    done = fed.finish_round(RUN, 1)
    assert (done.sessions, done.rows) == (1, 1)
    assert torch.equal(fed.store.load(RUN, 1)["w"], _like(8.0)["w"])

    # round 2 starts from round 1's model; restarting it discards too
    v2_base = fed.start_round(RUN, 2, 0)
    assert v2_base == done.version
    assert torch.equal(fed.base(RUN, 2)[0]["w"], _like(8.0)["w"])
    fed.contribute(RUN, 2, b"s3", _like(5.0), 7)
    assert fed.start_round(RUN, 2, 0) == done.version
    assert "no committed bank session" in _raises("FAILED_PRECONDITION", fed.finish_round, RUN, 2)


def _two_rounds(fed: Federation) -> dict[int, str]:
    """Rounds 1 and 2 (seed 9): sessions a (3 rows) and b (1 row) at r and r + 1."""
    versions = {}
    for r in (1, 2):
        fed.start_round(RUN, r, 9)
        fed.contribute(RUN, r, b"a", _like(float(r)), 3)
        fed.contribute(RUN, r, b"b", _like(float(r) + 1), 1)
        versions[r] = fed.finish_round(RUN, r).version
    return versions


def test_run_state_survives_a_restart_and_rounds_go_on(tmp_path: Path) -> None:
    root = tmp_path / "store"
    fed = Federation(ModelStore(root), _base)
    versions = _two_rounds(fed)
    assert fed.run_state(RUN) == (2, versions[2])
    assert fed.run_state("never-started") == (0, "")

    again = Federation(ModelStore(root), _base)  # the platform restarted
    assert again.run_state(RUN) == (2, versions[2])
    assert again.open_round(RUN) == 0  # open rounds are not durable: the coordinator restarts
    assert again.start_round(RUN, 3, 9) == versions[2]
    # (3 * 2 + 1 * 3) / 4 = 2.25
    assert torch.equal(again.base(RUN, 3)[0]["w"], torch.full((3, 2), 2.25))
    assert torch.equal(again.by_version(versions[1])["w"], torch.full((3, 2), 1.25))

    # finishing round 2 again (from round 1's model) replaces it and forgets round 3's base
    assert again.start_round(RUN, 2, 9) == versions[1]
    again.contribute(RUN, 2, b"a", _like(7.0), 1)
    redo = again.finish_round(RUN, 2)
    assert redo.version != versions[2]
    assert again.run_state(RUN) == (2, redo.version)
    assert "no committed platform model" in _raises("NOT_FOUND", again.by_version, versions[2])
    assert Federation(ModelStore(root), _base).run_state(RUN) == (2, redo.version)


def test_restarting_round_one_with_another_seed_starts_a_new_lineage(tmp_path: Path) -> None:
    root = tmp_path / "store"
    fed = Federation(ModelStore(root), _base)
    versions = _two_rounds(fed)
    fed.start_round(RUN, 1, 10)  # another seed: the old rounds were trained from another base
    assert fed.run_state(RUN) == (0, "")
    for old in versions.values():
        _raises("NOT_FOUND", fed.by_version, old)
    assert Federation(ModelStore(root), _base).run_state(RUN) == (0, "")  # and on disk


def test_unknown_versions_are_not_found(fed: Federation) -> None:
    for version in ("r1-0123456789ab", "r0-", "garbage", ""):
        assert repr(version) in _raises("NOT_FOUND", fed.by_version, version)
    v0 = fed.start_round(RUN, 1, 3)
    assert torch.equal(fed.by_version(v0)["w"], _base(3)["w"])


def test_runs_are_independent(fed: Federation) -> None:
    fed.start_round("a", 1, 1)
    fed.start_round("b", 1, 2)
    fed.contribute("a", 1, b"s", _like(1.0), 1)
    assert "no committed bank session" in _raises("FAILED_PRECONDITION", fed.finish_round, "b", 1)
    done = fed.finish_round("a", 1)
    assert fed.run_state("a") == (1, done.version)
    assert fed.run_state("b") == (0, "")
    assert fed.open_round("b") == 1


# ---------------------------------------------------------------------------------------------
# integration: a federated round over real mTLS gRPC
# ---------------------------------------------------------------------------------------------

CFG = TrainConfig(epochs=1, batch_size=256, seed=11, refit=False)
ARCH = SplitArchitecture()


@dataclasses.dataclass
class BankSide:
    party: str
    psi: PsiResult
    link: GrpcPlatformLink
    train: BankData
    test: BankData
    model: BankModel


def _node(platform: LivePlatform) -> PlatformNode:
    assert isinstance(platform.node, PlatformNode)
    return platform.node


@contextlib.contextmanager
def _control(
    platform: LivePlatform, kit_dir: FederationFixture, party: str
) -> Iterator[PlatformControl]:
    with secure_channel(platform.address, kit_dir.kit(party), "platform") as channel:
        yield PlatformControl(channel, timeout=30.0)


def _open_bank(
    stack: contextlib.ExitStack,
    federation: FederationFixture,
    platform: LivePlatform,
    party: str,
    **link_kwargs: object,
) -> BankSide:
    kit = federation.kit(party)
    tables = BankTables.load(federation.data.bank_dirs[party])
    assert tables.train.labels is not None and tables.test.labels is not None
    pre = Preprocessor.fit(tables.train)
    n = len(tables.train)
    channel = stack.enter_context(secure_channel(platform.address, kit, "platform"))
    psi = run_psi(channel, np.concatenate([tables.train.ids, tables.test.ids]), party=party)
    handles = psi.handles_for_rows(n + len(tables.test))
    link = GrpcPlatformLink(channel, kit, psi, CFG, **link_kwargs)  # type: ignore[arg-type]
    top = dataclasses.replace(ARCH.top(), platform_dim=link.embedding_dim)
    model = BankModel(ARCH.bank_bottom(pre.n_numeric, pre.cat_cardinalities), top)
    return BankSide(
        party,
        psi,
        link,
        BankData(pre.transform(tables.train), tables.train.labels, handles[:n]),
        BankData(pre.transform(tables.test), tables.test.labels, handles[n:]),
        model,
    )


def test_a_federated_round_over_grpc(
    federation: FederationFixture, live_platform: LivePlatform
) -> None:
    node = _node(live_platform)
    run, seed = "grpc-run", 5
    with contextlib.ExitStack() as stack:
        control = stack.enter_context(_control(live_platform, federation, "coordinator"))
        assert control.run_state(run) == (0, "")
        base = control.start_round(run, 1, seed)
        assert base == model_version(0, node.initial_weights(seed))

        banks = []
        for party in ("bank-1", "bank-2"):
            bank = _open_bank(
                stack, federation, live_platform, party, run_id=run, federation_round=1
            )
            assert bank.link.platform_model_version == base
            result = train_round(bank.train, bank.link, bank.model, CFG, epochs=1, round_=1)
            assert result.rows == len(bank.train.encoded)
            banks.append(bank)

        # what each bank's platform copy committed: read from the platform's sessions
        committed = []
        for bank in banks:
            session = node.sessions.get(bank.psi.session_id, bank.party)
            assert session.bottom is not None
            state = session.bottom.state_dict()
            assert bank.link.platform_model_version == model_version(0, state)
            aligned = int((bank.train.handles >= 0).sum())
            # the platform counts the rows it forwarded: aligned ones only (the synthetic
            # banks have customers the platform does not know, so this is a real check)
            assert 0 < aligned < len(bank.train.encoded)
            assert session.train_rows == aligned  # one epoch: every aligned training row once
            committed.append(({k: v.clone() for k, v in state.items()}, aligned))

        done = control.finish_round(run, 1)
        assert done.sessions == 2
        assert done.rows == sum(rows for _, rows in committed)
        assert control.run_state(run) == (1, done.version)

        # the stored model is the row-weighted mean of the two sessions' copies
        expected = weighted_average(committed)
        assert done.version == model_version(1, expected)
        stored = node.federation.store.by_version(done.version)
        for name, value in expected.items():
            assert torch.equal(stored[name], value), name
        # ... and differs from the round's base: the banks trained it
        base_state = node.initial_weights(seed)
        assert any(not torch.equal(stored[k], base_state[k]) for k in base_state)

        # evaluation with the committed model: the platform answers with exactly it
        first, second = banks
        first.link.reopen(base_version=done.version)
        assert first.link.platform_model_version == done.version
        present = first.test.handles[first.test.handles >= 0][:50]
        remote = first.link.forward(present, train=False).numpy()
        platform_psi = node.sessions.get(first.psi.session_id, first.party).psi
        reference = node.make_bottom(CFG.seed, CFG.lr, CFG.weight_decay, CFG.ema_decay)
        reference.load_state_dict(stored)
        local = reference.forward(platform_psi.rows[present], train=False).numpy()
        np.testing.assert_allclose(remote, local, atol=1e-6)
        pd = predict(first.model, first.test, first.link)
        assert pd.shape == (len(first.test.encoded),) and np.isfinite(pd).all()

        # round 1 is finished: a session cannot join it any more
        with pytest.raises(PlatformError) as info:
            second.link.reopen(federation_round=1)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no round is open" in str(info.value)

        # the next round starts from the committed model; rounds cannot be skipped
        assert control.start_round(run, 2, seed) == done.version
        with pytest.raises(PlatformControlError) as refused:
            control.start_round(run, 3, seed)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "next is 2" in str(refused.value)
        with pytest.raises(PlatformControlError) as empty:
            control.finish_round(run, 2)
        assert empty.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no committed bank session" in str(empty.value)
        assert control.run_state(run) == (1, done.version)

        for bank in banks:
            bank.link.close()


@pytest.mark.parametrize("party", ["bank-1", "bank-2"])
def test_a_bank_cannot_control_rounds(
    federation: FederationFixture, live_platform: LivePlatform, party: str
) -> None:
    with _control(live_platform, federation, party) as control:
        for call, args in (
            (control.start_round, ("run", 1, 0)),
            (control.finish_round, ("run", 1)),
            (control.run_state, ("run",)),
        ):
            with pytest.raises(PlatformControlError) as info:
                call(*args)
            assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert f"{party!r} has role 'bank'" in str(info.value)
            assert "coordinator" in str(info.value)
    assert _node(live_platform).federation.open_round("run") == 0


def test_invalid_run_ids_over_grpc(
    federation: FederationFixture, live_platform: LivePlatform
) -> None:
    with _control(live_platform, federation, "coordinator") as control:
        for run_id in ("../x", "", "a/b"):
            with pytest.raises(PlatformControlError) as info:
                control.start_round(run_id, 1, 0)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "invalid run id" in str(info.value)


def test_open_session_for_a_round_that_is_not_open(
    federation: FederationFixture, live_platform: LivePlatform
) -> None:
    with contextlib.ExitStack() as stack:
        with pytest.raises(PlatformError) as info:  # nothing started for this run
            _open_bank(
                stack, federation, live_platform, "bank-1", run_id="idle-run", federation_round=1
            )
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no round is open" in str(info.value)
        assert not _is_session_lost(info.value)  # the session is fine: no new PSI

        control = stack.enter_context(_control(live_platform, federation, "coordinator"))
        control.start_round("open-run", 1, 0)
        with pytest.raises(PlatformError) as info:  # round 1 is open, not round 2
            _open_bank(
                stack, federation, live_platform, "bank-2", run_id="open-run", federation_round=2
            )
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "round 1 is open" in str(info.value)


@pytest.mark.parametrize("version", ["r1-0123456789ab", "r0-ffffffffffff", "not-a-version"])
def test_open_session_with_an_unknown_base_version(
    federation: FederationFixture, live_platform: LivePlatform, version: str
) -> None:
    with contextlib.ExitStack() as stack, pytest.raises(PlatformError) as info:
        _open_bank(stack, federation, live_platform, "bank-1", base_version=version)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert repr(version) in str(info.value)


def test_a_finished_round_survives_a_platform_restart(
    federation: FederationFixture, tmp_path: Path
) -> None:
    """With --state-dir a restarted platform still knows the run and serves its model."""

    def start() -> tuple[grpc.Server, LivePlatform]:
        node = PlatformNode(
            federation.kit("platform"), federation.platform_table(), state_dir=tmp_path / "state"
        )
        server, port = create_server("127.0.0.1:0", node)
        server.start()
        return server, LivePlatform(f"127.0.0.1:{port}", node, server)

    server, platform = start()
    try:
        with contextlib.ExitStack() as stack:
            control = stack.enter_context(_control(platform, federation, "coordinator"))
            control.start_round("durable", 1, 2)
            bank = _open_bank(
                stack, federation, platform, "bank-2", run_id="durable", federation_round=1
            )
            train_round(bank.train, bank.link, bank.model, CFG, epochs=1, round_=1)
            done = control.finish_round("durable", 1)
            assert (done.sessions, done.rows) == (1, int((bank.train.handles >= 0).sum()))
            stored = _node(platform).federation.store.load("durable", 1)
    finally:
        server.stop(grace=None)

    server, platform = start()
    try:
        with contextlib.ExitStack() as stack:
            control = stack.enter_context(_control(platform, federation, "coordinator"))
            assert control.run_state("durable") == (1, done.version)
            bank = _open_bank(stack, federation, platform, "bank-2", base_version=done.version)
            assert bank.link.platform_model_version == done.version
            reloaded = _node(platform).federation.by_version(done.version)
            for name, value in stored.items():
                assert torch.equal(reloaded[name], value), name
            assert control.start_round("durable", 2, 2) == done.version
    finally:
        server.stop(grace=None)
