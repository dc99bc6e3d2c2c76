"""The bank's federated client: each round it trains the global bank-side model against
the platform (split learning, as in the vertical core) and evaluates it on its own test set.

Where things come from: the bank's data folder, its startup kit, the platform's address
and a bank-local state folder from the SuperNode's node config (``--node-config``);
everything about the round (run id, round, epochs, FedProx mu, the platform model
version to evaluate with) from the coordinator's instructions. A SuperNode starts a
new process per message, so the PSI result (the session id and which rows it aligned,
never an id) and the session's round counter live in the bank-local state folder.

Before the first round, the bank sends the power sums of its training columns (inside
SecAgg+, fixed-point encoded; see :mod:`coordinator.statistics`); every round's
instructions carry all banks' sums back, and the bank fits its transforms on those, so
every bank feeds the one model the same way.

What leaves the bank: blinded ids (PSI, once per run), sealed gradients to the platform,
its preprocessing sums and the model update (only inside SecAgg+), and evaluation
metrics: AUC, KS, loss, counts,
the preprocessing fingerprint and a 1000-bin histogram of test PDs per class (so the
coordinator can draw pooled ROC and KS curves without a single row).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import grpc
import numpy as np
import torch
from flwr.client import NumPyClient

from bank_node.node import BankNode
from bank_node.platform_link import GrpcPlatformLink, PlatformError
from bank_node.psi_client import run_psi
from bank_node.trainer import BankTables
from fedscore.atomic import atomic_write
from fedscore.crypto.psi import PsiResult
from fedscore.crypto.secure_sum import SECAGG_MAX_WEIGHT, encode
from fedscore.data.preprocess import MOMENTS, Encoded, Moments, Preprocessor
from fedscore.federation.arrays import check_finite
from fedscore.federation.provision import load_kit
from fedscore.federation.runconfig import (
    SECAGG_CLIP,
    STATISTICS_TASK,
    TASK_KEY,
    ConfigError,
    RunSettings,
)
from fedscore.federation.statistics import LAYOUT_KEY, SUMS_KEY
from fedscore.ledger import client_mod as ledger_mod
from fedscore.ml.architecture import SplitArchitecture
from fedscore.ml.metrics import auc, ks, log_loss
from fedscore.ml.model import BankModel, load_arrays, to_arrays
from fedscore.ml.training import BankData, TrainConfig, predict, train_round
from fedscore.wire.transport import secure_channel

HIST_BINS = 1000
"""PD histogram bins per class in the evaluation metrics: 0.001 wide, no row."""


@dataclass(frozen=True)
class _Prepared:
    n_train: int
    ids: np.ndarray  # train then test ids: PSI input only, never sent
    train: Encoded
    test: Encoded
    y_train: np.ndarray
    y_test: np.ndarray
    fingerprint: str
    n_numeric: int
    cat_cardinalities: tuple[int, ...]


@lru_cache(maxsize=4)
def _prepare(data_dir: Path, pooled: tuple[str, bytes] | None = None) -> _Prepared:
    """Load and encode the bank's tables, the transforms fitted on the federation's
    pooled sums (layout, float64 bytes; ``None``: on the bank's own training rows, which
    is enough for the model's shapes)."""
    tables = BankTables.load(data_dir)
    moments = None
    if pooled is not None:
        flat = np.frombuffer(pooled[1], "<f8")
        moments = Moments(pooled[0], flat.reshape(-1, len(MOMENTS)).copy())
    pre = Preprocessor.fit(tables.train, moments=moments)
    assert tables.train.labels is not None and tables.test.labels is not None
    return _Prepared(
        n_train=len(tables.train),
        ids=np.concatenate([tables.train.ids, tables.test.ids]),
        train=pre.transform(tables.train),
        test=pre.transform(tables.test),
        y_train=np.asarray(tables.train.labels),
        y_test=np.asarray(tables.test.labels),
        fingerprint=pre.fingerprint(),
        n_numeric=pre.n_numeric,
        cat_cardinalities=tuple(pre.cat_cardinalities),
    )


class _RunState:
    """The bank's PSI session for one run, kept on the bank's disk between messages."""

    def __init__(self, folder: Path) -> None:
        self._meta = folder / "session.json"
        self._rows = folder / "psi-rows.npy"

    def load(self) -> tuple[PsiResult, int] | None:
        """(the session, the next session round to open), or None before the first PSI."""
        if not self._meta.exists():
            return None
        meta = json.loads(self._meta.read_text())
        rows = np.load(self._rows)
        psi = PsiResult(bytes.fromhex(meta["session_id"]), rows, int(meta["other_size"]))
        return psi, int(meta["next_round"])

    def start(self, psi: PsiResult) -> None:
        """A new session (after PSI): its aligned rows, then its round counter at 0."""
        buf = io.BytesIO()
        np.save(buf, psi.rows)
        atomic_write(self._rows, buf.getvalue())
        self.advance(psi, 0)

    def advance(self, psi: PsiResult, next_round: int) -> None:
        meta = {"session_id": psi.session_id.hex(), "other_size": psi.other_size,
                "next_round": next_round}
        atomic_write(self._meta, json.dumps(meta).encode())


SESSION_LOST = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                          grpc.StatusCode.ABORTED})
"""OpenSession's codes for a session the bank cannot go on with: the platform does not
know it (UNAUTHENTICATED: it restarted, or closed it), it is not this bank's
(PERMISSION_DENIED), or it is past the round asked for (ABORTED: the bank's saved round
counter is behind). Either way the bank runs PSI for a new one."""


def _is_session_lost(exc: PlatformError) -> bool:
    """The platform refused the session itself (see :data:`SESSION_LOST`), not the round."""
    return exc.code in SESSION_LOST


def _histogram(pd: np.ndarray) -> bytes:
    counts, _ = np.histogram(pd, bins=HIST_BINS, range=(0.0, 1.0))
    return counts.astype("<u4").tobytes()


class BankClient(NumPyClient):
    """The bank's Flower client: one split-learning round per ``fit``, its test set per
    ``evaluate``."""

    def __init__(self, node: BankNode, seed: int = 0) -> None:
        torch.set_num_threads(1)
        self.node = node
        self.seed = seed
        self.arch = SplitArchitecture()

    # -- Flower --------------------------------------------------------------------------

    def get_parameters(self, config: Mapping[str, object]) -> list[np.ndarray]:
        """The initial global model: every bank builds the same one from the run's seed."""
        return to_arrays(self._model(_prepare(self.node.data_dir), None, self.seed))

    def fit(
        self, parameters: list[np.ndarray], config: Mapping[str, object]
    ) -> tuple[list[np.ndarray], int, dict[str, bool | bytes | float | int | str]]:
        """Train the global bank-side model for one round against the platform (or, for the
        statistics task, send this bank's preprocessing sums); returns the update and its weight."""
        if config.get(TASK_KEY) == STATISTICS_TASK:
            moments = Preprocessor.moments(BankTables.load(self.node.data_dir).train)
            vector = encode(moments.sums.ravel(), bytes.fromhex(moments.layout))
            return [vector], int(SECAGG_MAX_WEIGHT), {}  # weight 1: summed, not averaged
        settings, round_ = _settings(config), _int(config, "round")
        data = _prepare(self.node.data_dir, _pooled(config))
        if data.n_train > settings.max_weight:
            raise ConfigError(
                f"run config max-weight = {settings.max_weight:g} is below this bank's "
                f"{data.n_train} training rows; SecAgg+ would overflow: raise max-weight"
            )
        model = self._model(data, parameters, settings.seed)
        cfg = settings.train_config()
        with self._session(data, settings.run_id, cfg,
                           federation_round=round_) as (link, handles):
            train = BankData(data.train, data.y_train, handles[: data.n_train])
            result = train_round(train, link, model, cfg, epochs=settings.local_epochs,
                                 round_=round_, proximal_mu=settings.proximal_mu)
        arrays = to_arrays(result.model)
        # never send a spoilt update: under SecAgg+ nobody could tell it in the sum
        check_finite(((f"arr_{i}", a) for i, a in enumerate(arrays)),
                     f"round {round_}: this bank's model update")
        # Update DP: every bank weighs the same, so the coordinator's mean is unweighted
        # and one bank moves it by at most clip / n, the sensitivity its noise is for.
        equal = max(1, int(settings.max_weight))
        weight = result.rows if settings.dp_update_noise == 0 else equal
        # SecAgg+ clips weights x rows / max-weight to +-SECAGG_CLIP; refuse, never clip.
        peak = max(float(np.abs(a).max()) for a in arrays) * weight / settings.max_weight
        if peak > SECAGG_CLIP:
            raise ConfigError(
                f"a weight of {peak:.3g} (scaled by rows / max-weight) exceeds SecAgg+'s "
                f"clipping range {SECAGG_CLIP}; raise max-weight"
            )
        # Fit metrics do not survive SecAgg+; the evaluation reports what matters.
        return arrays, weight, {}

    def evaluate(
        self, parameters: list[np.ndarray], config: Mapping[str, object]
    ) -> tuple[float, int, dict[str, bool | bytes | float | int | str]]:
        """Score the bank's test set with the round's pair of models; returns loss, rows and
        the metrics the coordinator pools (no row leaves the bank)."""
        settings, round_ = _settings(config), _int(config, "round")
        version = str(config.get("platform-version", ""))
        if not version:
            raise ConfigError("evaluate instructions: platform-version is missing")
        data = _prepare(self.node.data_dir, _pooled(config))
        model = self._model(data, parameters, settings.seed)
        cfg = settings.train_config()
        with self._session(data, settings.run_id, cfg, base_version=version,
                           close=bool(config.get("final", False))) as (link, handles):
            test = BankData(data.test, data.y_test, handles[data.n_train :])
            pd = predict(model, test, link, cfg.eval_batch_size)
        y = data.y_test
        out = self.node.state_dir / settings.run_id / f"round-{round_:04d}-test.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, pd=pd, labels=y)  # stays at the bank
        loss = log_loss(y, pd)
        return loss, int(y.size), {
            "bank": self.node.bank,
            "auc": auc(y, pd),
            "ks": ks(y, pd),
            "loss": loss,
            "aligned": int((handles[data.n_train :] >= 0).sum()),
            "fingerprint": data.fingerprint,
            "hist-pos": _histogram(pd[y == 1]),
            "hist-neg": _histogram(pd[y == 0]),
        }

    # -- helpers -------------------------------------------------------------------------

    def _model(self, data: _Prepared, parameters: list[np.ndarray] | None, seed: int
               ) -> BankModel:
        bank_cfg = self.arch.bank_bottom(data.n_numeric, data.cat_cardinalities)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BankModel(bank_cfg, self.arch.top())
        if parameters is not None:
            check_finite(((f"arr_{i}", a) for i, a in enumerate(parameters)),
                         "the coordinator's global model")
            load_arrays(model, parameters)
        return model

    @contextmanager
    def _session(
        self, data: _Prepared, run_id: str, cfg: TrainConfig, *, federation_round: int = 0,
        base_version: str = "", close: bool = False,
    ) -> Iterator[tuple[GrpcPlatformLink, np.ndarray]]:
        """A link on the next round of the run's platform session; PSI first when the
        platform does not know the session (a new run, or the platform restarted)."""
        kit = load_kit(self.node.kit_dir)
        state = _RunState(self.node.state_dir / run_id)
        with secure_channel(self.node.platform_address, kit, "platform",
                            ledger=ledger_mod.CURRENT.get()) as channel:
            saved = state.load()
            for attempt in range(2):
                if saved is None:
                    saved = (run_psi(channel, data.ids, party=kit.party), 0)
                    state.start(saved[0])
                psi, round_ = saved
                state.advance(psi, round_ + 1)
                try:
                    link = GrpcPlatformLink(
                        channel, kit, psi, cfg, round_=round_, run_id=run_id,
                        federation_round=federation_round, base_version=base_version,
                    )
                    break
                except PlatformError as exc:
                    if attempt or not _is_session_lost(exc):
                        raise
                    saved = None
            if link.embedding_dim != self.arch.top().platform_dim:
                raise PlatformError(
                    f"platform embeddings have {link.embedding_dim} dimensions, the bank "
                    f"model expects {self.arch.top().platform_dim}"
                )
            try:
                yield link, psi.handles_for_rows(data.ids.size)
            finally:
                link.close() if close else link.detach()


def _pooled(config: Mapping[str, object]) -> tuple[str, bytes]:
    layout, sums = config.get(LAYOUT_KEY), config.get(SUMS_KEY)
    if not isinstance(layout, str) or not isinstance(sums, bytes):
        raise ConfigError(
            f"coordinator instructions: {LAYOUT_KEY} and {SUMS_KEY} (the federation's "
            "preprocessing statistics) are missing or malformed"
        )
    if len(sums) % (8 * len(MOMENTS)):
        raise ConfigError(f"coordinator instructions: {SUMS_KEY} holds {len(sums)} bytes, "
                          f"not whole rows of {len(MOMENTS)} float64 values")
    return layout, sums


def _settings(config: Mapping[str, object]) -> RunSettings:
    keys = {f.name.replace("_", "-") for f in dataclasses.fields(RunSettings)}
    return RunSettings.from_run_config({k: v for k, v in config.items() if k in keys})


def _int(config: Mapping[str, object], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"coordinator instructions: {key} = {value!r}; expected an integer")
    return value


