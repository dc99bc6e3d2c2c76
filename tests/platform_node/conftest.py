"""Helpers of the platform node's tests: a bank's PSI session with a live platform, and
raw step streams (sealed commands built by the test, not by the bank's link)."""

from __future__ import annotations

import grpc

from bank_node.psi_client import run_psi
from bank_node.trainer import BankTables
from fedscore.api.v1 import split_learning_pb2, split_learning_pb2_grpc
from fedscore.crypto.psi import PsiResult
from fedscore.wire import serde
from fedscore.wire.transport import secure_channel
from tests.conftest import Federation, LivePlatform


def bank_psi(federation: Federation, platform: LivePlatform, bank: str) -> PsiResult:
    """A session of ``bank`` with the platform: PSI of its training ids over mTLS."""
    tables = BankTables.load(federation.data.bank_dirs[bank])
    with secure_channel(platform.address, federation.kit(bank), "platform") as channel:
        return run_psi(channel, tables.train.ids, party=bank)


def raw_step(channel: grpc.Channel, boxes: list[serde.SealedBox]) -> list[bytes]:
    """Send ``boxes`` as one Step stream; the serialized responses (grpc.RpcError if the
    platform ends the stream with an error)."""
    stub = split_learning_pb2_grpc.SplitLearningServiceStub(channel)
    requests = [split_learning_pb2.StepRequest(sealed=serde.sealed_to_pb(b)) for b in boxes]
    return [r.SerializeToString() for r in stub.Step(iter(requests))]
