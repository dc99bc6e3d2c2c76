"""The platform's split-learning and round-control services over real mTLS gRPC."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pytest

from bank_node.federated import _is_session_lost
from bank_node.platform_link import GrpcPlatformLink, PlatformError
from bank_node.psi_client import run_psi
from bank_node.trainer import BankTables
from fedscore.api.v1 import (
    round_control_pb2,
    round_control_pb2_grpc,
    split_learning_pb2,
)
from fedscore.crypto.primitives import Direction, Sealer, derive_session_key
from fedscore.crypto.psi import PsiResult
from fedscore.data.preprocess import Preprocessor
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.training import (
    BankData,
    TrainConfig,
    predict,
    train_bank_model,
)
from fedscore.research.baselines import PlatformSide, train_and_score
from fedscore.wire import serde
from fedscore.wire.transport import secure_channel
from platform_node.server import PlatformNode
from tests.conftest import Federation, LivePlatform
from tests.platform_node.conftest import bank_psi, raw_step

CFG = TrainConfig(epochs=3, patience=10, batch_size=128, seed=3)


def test_grpc_training_equals_in_process_training(
    federation: Federation, live_platform: LivePlatform
) -> None:
    """Split learning over the wire computes exactly what the in-process reference computes."""
    arch = SplitArchitecture()
    tables = BankTables.load(federation.data.bank_dirs["bank-1"])
    pre = Preprocessor.fit(tables.train)
    enc_train, enc_test = pre.transform(tables.train), pre.transform(tables.test)
    assert tables.train.labels is not None and tables.test.labels is not None
    bank_cfg = arch.bank_bottom(pre.n_numeric, pre.cat_cardinalities)
    ids = np.concatenate([tables.train.ids, tables.test.ids])
    n = len(tables.train)

    kit = federation.kit("bank-1")
    with secure_channel(live_platform.address, kit, "platform") as channel:
        psi = run_psi(channel, ids, party="bank-1")
        handles = psi.handles_for_rows(len(ids))
        link = GrpcPlatformLink(channel, kit, psi, CFG)
        top = dataclasses.replace(arch.top(), platform_dim=link.embedding_dim)
        trained = train_bank_model(BankData(enc_train, tables.train.labels, handles[:n]),
                                   link, bank_cfg, top, CFG)
        remote = predict(trained.model, BankData(enc_test, tables.test.labels, handles[n:]), link)
        link.close()

    (local,), ref = train_and_score(
        PlatformSide(federation.platform_table(), None), tables.train, [tables.test], arch, CFG,
        None,
    )

    assert psi.size == int((handles >= 0).sum())
    assert trained.best_epoch == ref["best_epoch"]
    np.testing.assert_allclose(remote, local, atol=1e-6)


@pytest.mark.parametrize("call", ["OpenSession", "EndEpoch", "CommitRound", "CloseSession"])
def test_another_bank_cannot_use_a_session(
    federation: Federation, live_platform: LivePlatform, call: str
) -> None:
    """bank-2 naming bank-1's open session is refused and changes nothing; the same request
    from bank-1 is answered."""
    psi = bank_psi(federation, live_platform, "bank-1")
    sid = psi.session_id
    request = {
        "OpenSession": round_control_pb2.OpenSessionRequest(session_id=sid, round=1,
                                                            learning_rate=0.01),
        "EndEpoch": round_control_pb2.EndEpochRequest(session_id=sid, epoch=1),
        "CommitRound": round_control_pb2.CommitRoundRequest(session_id=sid, round=0, epoch=0),
        "CloseSession": round_control_pb2.CloseSessionRequest(session_id=sid),
    }[call]
    node = live_platform.node
    assert isinstance(node, PlatformNode)
    with (
        secure_channel(live_platform.address, federation.kit("bank-1"), "platform") as own,
        secure_channel(live_platform.address, federation.kit("bank-2"), "platform") as other,
    ):
        GrpcPlatformLink(own, federation.kit("bank-1"), psi, CFG)  # bank-1 opens round 0 ...
        mine = round_control_pb2_grpc.RoundControlServiceStub(own)
        mine.EndEpoch(round_control_pb2.EndEpochRequest(session_id=sid, epoch=0))  # ... epoch 0
        with pytest.raises(grpc.RpcError) as info:
            getattr(round_control_pb2_grpc.RoundControlServiceStub(other), call)(request)
        session = node.sessions.get(sid, "bank-1")
        assert (session.round, session.committed_version) == (0, None)
        getattr(mine, call)(request)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "another party" in (info.value.details() or "")


def test_unknown_session_is_refused(federation: Federation, live_platform: LivePlatform) -> None:
    kit = federation.kit("bank-1")
    fake = PsiResult(session_id=b"\x01" * 16, rows=np.arange(3), other_size=3)
    with (
        secure_channel(live_platform.address, kit, "platform") as channel,
        pytest.raises(PlatformError, match=r"UNAUTHENTICATED.*run PSI first"),
    ):
        GrpcPlatformLink(channel, kit, fake, CFG)


@pytest.mark.parametrize("attack", ["tamper", "replay", "reorder", "wrong-round"])
def test_tampered_replayed_or_reordered_steps_are_rejected(
    federation: Federation, live_platform: LivePlatform, attack: str
) -> None:
    kit = federation.kit("bank-1")
    psi = bank_psi(federation, live_platform, "bank-1")
    with secure_channel(live_platform.address, kit, "platform") as channel:
        link = GrpcPlatformLink(channel, kit, psi, CFG)
        assert link.embedding_dim > 0
        key = derive_session_key(kit.sealing_key, kit.peer("platform").sealing_public,
                                 psi.session_id).for_round(0)
        sealer = Sealer(key, psi.session_id, Direction.BANK_TO_PLATFORM)
        command = split_learning_pb2.StepCommand(
            mode=split_learning_pb2.STEP_MODE_EVAL, handles=serde.handles_to_bytes(np.arange(4))
        ).SerializeToString()
        first = sealer.seal(command, round=0, batch=0)
        second = sealer.seal(command, round=0, batch=1)
        assert len(raw_step(channel, [first, second])) == 2  # the honest stream works
        third = sealer.seal(command, round=0, batch=2)
        boxes = {
            "tamper": [dataclasses.replace(third, ciphertext=bytes([third.ciphertext[0] ^ 1])
                                           + third.ciphertext[1:])],
            "replay": [first],
            "reorder": [sealer.seal(command, round=0, batch=3)],
            "wrong-round": [dataclasses.replace(third, round=1)],
        }[attack]
        with pytest.raises(grpc.RpcError) as info:
            raw_step(channel, boxes)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "step rejected" in (info.value.details() or "")


def test_a_round_cannot_be_opened_twice(
    federation: Federation, live_platform: LivePlatform
) -> None:
    """Re-opening a round would restart both sealers under the round's key."""
    kit = federation.kit("bank-1")
    psi = bank_psi(federation, live_platform, "bank-1")
    with secure_channel(live_platform.address, kit, "platform") as channel:
        link = GrpcPlatformLink(channel, kit, psi, CFG)
        link.restart()  # round 1: allowed, under round 1's key
        with pytest.raises(PlatformError, match=r"ABORTED.*not after") as info:
            GrpcPlatformLink(channel, kit, psi, CFG, round_=1)
        assert info.value.code == grpc.StatusCode.ABORTED
        assert _is_session_lost(info.value)  # the bank runs PSI again, on the code alone
