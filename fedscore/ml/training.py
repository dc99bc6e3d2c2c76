"""The one split-learning training loop, run by the bank.

The bank never touches the platform's model: it talks to a :class:`PlatformLink`
(embeddings for a batch of aligned customers' handles in, gradients out). The same
loop runs centralized (:class:`LocalPlatformLink`, the platform in-process) and
federated (the gRPC link on the bank node, with :class:`PlatformBottom` behind the
platform node's servicer), so the two are comparable bit for bit: every random
draw on either side comes from that side's own seeded generator, never a shared one.

The call sequence a link (and the platform behind it) sees, which the gRPC servicer
must follow as well:

* per training batch: ``forward(handles, train=True)`` for the batch's aligned rows
  in batch order, then exactly one ``backward(grad)`` with dL/d(those embeddings)
  (mean BCE over the whole batch); the platform steps its optimizer on it. A batch
  with no aligned row makes no call at all, so the platform does not step on it in
  either mode;
* after each epoch: ``end_epoch(e)`` (the platform snapshots the weights it scores
  with), then ``forward(..., train=False)`` calls for the validation rows;
* at the end: ``commit(best_epoch)``; the platform keeps that epoch's weights.

With ``TrainConfig.refit``, early stopping only picks the epoch count:
after that first ``commit`` the loop calls ``restart()`` (the platform drops its
bottom and builds a fresh one exactly as at session start: same seed, same settings)
and runs a second pass of ``best_epoch + 1`` epochs over all the bank's training rows,
validation rows included, with the same per-batch and per-epoch calls but no
validation forwards, ending in ``commit(last epoch)``. Links without ``restart`` (a
:class:`PlatformLink` that is not a :class:`RestartableLink`) need ``refit=False``.

Both sides need the same :class:`TrainConfig` (seed, lr, weight decay, averaging).
Models are tiny: run with ``torch.set_num_threads(1)`` (more threads only spin).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from fedscore.crypto.dp import ReleaseCounter
from fedscore.data.preprocess import Encoded
from fedscore.ml import metrics
from fedscore.ml.architecture import BottomConfig, TopConfig
from fedscore.ml.model import BankModel, BottomModel

PLATFORM_SEED_OFFSET = 1_000_003  # the platform's streams differ from the bank's

MAX_PLATFORM_SNAPSHOTS = 64
"""Epoch snapshots the platform keeps per session: the most recent ones only. Early
stopping commits the best epoch, which is never more than ``patience`` epochs before
the last one, so the bank's :class:`TrainConfig` keeps ``min(patience, epochs - 1)``
below this; a peer calling EndEpoch forever costs the platform at most this many
copies of its bottom model (issue 15)."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings both sides must share (seed, optimiser, early stopping, averaging)."""

    epochs: int = 40
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    validation_share: float = 0.1
    seed: int = 0
    monitor: Literal["auc", "loss"] = "auc"  # early-stopping criterion on validation rows
    # Polyak averaging: evaluation, snapshots and the final model use an exponential
    # moving average of the weights (per optimizer step; 0 = off). Each side averages
    # its own weights, which is the average of the joint weights.
    ema_decay: float = 0.99
    eval_batch_size: int = 8192
    # Refit: once early stopping has chosen the epoch count on the validation share,
    # retrain both sides from scratch on all the training rows for that many epochs.
    # +0.0008 pooled test AUC (default-credit, mean of seeds 0-2), gap to centralized
    # -0.0020 -> -0.0015; about twice the training time. Needs a RestartableLink
    # (LocalPlatformLink, NoPlatformLink and the bank node's GrpcPlatformLink are).
    refit: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("TrainConfig: epochs and batch sizes must be >= 1")
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError(
                f"TrainConfig.validation_share must be in [0, 1), got {self.validation_share}"
            )
        if self.lr <= 0 or self.weight_decay < 0 or self.patience < 0:
            raise ValueError("TrainConfig: lr > 0, weight_decay >= 0, patience >= 0 required")
        if min(self.patience, self.epochs - 1) >= MAX_PLATFORM_SNAPSHOTS:
            raise ValueError(
                f"TrainConfig.patience is {self.patience} with {self.epochs} epochs; the "
                f"platform keeps the last {MAX_PLATFORM_SNAPSHOTS} epochs' snapshots, so the "
                f"best epoch must be among them: patience < {MAX_PLATFORM_SNAPSHOTS} required"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.monitor not in ("auc", "loss"):
            raise ValueError(f"TrainConfig.monitor must be 'auc' or 'loss', got {self.monitor!r}")


_M = TypeVar("_M", bound=torch.nn.Module)


def _dropout_state(model: torch.nn.Module) -> torch.Tensor | None:
    """The state of the model's private dropout generator (None: it has none)."""
    for m in model.modules():
        g = getattr(m, "generator", None)
        if isinstance(g, torch.Generator):
            return g.get_state()
    return None


def _load_dropout_state(model: torch.nn.Module, state: torch.Tensor | None) -> None:
    for m in model.modules():
        g = getattr(m, "generator", None)
        if isinstance(g, torch.Generator) and state is not None:
            g.set_state(state)
            return


def _build_seeded(seed: int, build: type[_M], *args: object) -> _M:
    """Construct a module with initial weights drawn from ``seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args)


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and the absent-platform default embedding."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=lr,
        foreach=True,
    )


class _Ema(Generic[_M]):
    """Exponential moving average of a module's weights; ``model`` is the averaged copy
    (the module itself when the decay is 0)."""

    def __init__(self, model: _M, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model) if decay > 0 else model
        self.steps = 0

    def update(self, model: torch.nn.Module) -> None:
        if self.decay == 0:
            return
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))  # warm-up
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.model.parameters()), list(model.parameters()), 1.0 - d
            )

    def load(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state)
        if self.model is not model:
            self.model.load_state_dict(state)

    def full_state(self) -> dict[str, Any]:
        """The averaged weights and the step count (what a resumed run needs)."""
        return {"weights": copy.deepcopy(self.model.state_dict()), "steps": self.steps}

    def load_full_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["weights"])
        self.steps = int(state["steps"])


class PlatformBottom:
    """The platform's side: its encoded table, bottom model and optimizer.

    Used in-process by :class:`LocalPlatformLink` and by the platform node's servicer.
    """

    def __init__(self, encoded: Encoded, config: BottomConfig, train: TrainConfig) -> None:
        if encoded.numeric.shape[1] != config.n_numeric or encoded.categorical.shape[1] != len(
            config.cat_cardinalities
        ):
            raise ValueError(
                f"platform encoding has {encoded.numeric.shape[1]} numeric and "
                f"{encoded.categorical.shape[1]} categorical columns; the bottom config "
                f"expects {config.n_numeric} and {len(config.cat_cardinalities)}"
            )
        self.config = config
        self._encoded, self._train = encoded, train
        self.numeric = torch.from_numpy(np.ascontiguousarray(encoded.numeric, np.float32))
        self.categorical = torch.from_numpy(np.ascontiguousarray(encoded.categorical, np.int64))
        seed = train.seed + PLATFORM_SEED_OFFSET
        self.model = _build_seeded(seed, BottomModel, config)
        self.model.seed_dropout(seed + 1)
        self.optimizer = _optimizer(self.model, train.lr, train.weight_decay)
        self._ema = _Ema(self.model, train.ema_decay)
        self._out: torch.Tensor | None = None
        self._snapshots: dict[int, dict[str, torch.Tensor]] = {}
        # Embedding DP (fedscore.crypto.dp), set by the platform node: every embedding forward
        # returns noise(embedding) and counts its rows in releases.
        self.noise: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.releases: ReleaseCounter | None = None

    @property
    def out_dim(self) -> int:
        """Width of the embeddings this bottom sends the bank."""
        return self.config.out_dim

    def fresh(self) -> PlatformBottom:
        """A new bottom on the same table and settings, initialised as this one was
        (the same embedding mechanism and release counter)."""
        out = PlatformBottom(self._encoded, self.config, self._train)
        out.noise, out.releases = self.noise, self.releases
        return out

    def forward(self, rows: np.ndarray, train: bool) -> torch.Tensor:
        """Embeddings [len(rows), out_dim] of platform table rows ``rows``; detached."""
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.numeric.shape[0]):
            raise IndexError(f"platform rows out of range [0, {self.numeric.shape[0]})")
        if self.releases is not None:
            self.releases.record(idx.numpy())
        if train:
            self.model.train()
            out = self.model(self.numeric[idx], self.categorical[idx])  # [b, out_dim]
            if self.noise is not None:  # additive noise: the gradient flows through the clip
                out = self.noise(out)
            self._out = out
            return out.detach()
        model = self._ema.model
        model.eval()
        with torch.no_grad():
            out = model(self.numeric[idx], self.categorical[idx])
            return out if self.noise is None else self.noise(out)

    def backward(self, grad: torch.Tensor) -> None:
        """Apply dL/d(embedding) of the last training forward and step the optimizer."""
        if self._out is None:
            raise RuntimeError("platform backward without a training forward before it")
        if tuple(grad.shape) != tuple(self._out.shape):
            raise ValueError(
                f"gradient shape {tuple(grad.shape)} != embedding shape {tuple(self._out.shape)}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self._out.backward(grad.to(self._out.dtype))
        self.optimizer.step()
        self._ema.update(self.model)
        self._out = None

    def snapshot(self, epoch: int) -> None:
        """Keep the scoring weights of ``epoch``, so :meth:`restore` can return to the best
        one; only the last :data:`MAX_PLATFORM_SNAPSHOTS` epochs snapshotted are kept."""
        self._snapshots.pop(epoch, None)  # again: it becomes the most recent
        self._snapshots[epoch] = copy.deepcopy(self._ema.model.state_dict())
        while len(self._snapshots) > MAX_PLATFORM_SNAPSHOTS:
            del self._snapshots[next(iter(self._snapshots))]  # the oldest

    def restore(self, epoch: int) -> None:
        """Load the weights of ``epoch`` and drop every snapshot."""
        if epoch not in self._snapshots:
            raise KeyError(f"no platform snapshot for epoch {epoch}")
        self._ema.load(self.model, self._snapshots[epoch])
        self._snapshots.clear()
        self._out = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights used for scoring (the averaged ones when averaging is on)."""
        return self._ema.model.state_dict()

    def training_state(self) -> dict[str, Any]:
        """Everything a training resumed after this point needs to go on exactly as if
        never stopped: weights, their average, the optimizer's moments, the dropout
        stream and the epoch snapshots (tensors, numbers and lists only: loadable with
        ``torch.load(weights_only=True)``)."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "ema": self._ema.full_state(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "dropout": _dropout_state(self.model),
            "snapshots": {str(e): copy.deepcopy(w) for e, w in self._snapshots.items()},
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Go on from :meth:`training_state`'s point (on a bottom made as this one was)."""
        self.model.load_state_dict(state["model"])
        self._ema.load_full_state(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        _load_dropout_state(self.model, state["dropout"])
        self._snapshots = {int(e): w for e, w in state["snapshots"].items()}
        self._out = None

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load scoring weights (into the model and, when averaging, into the average too)."""
        self._ema.load(self.model, state)


class PlatformLink(Protocol):
    """What the bank's loop talks to; handles are per-session, never raw ids."""

    @property
    def embedding_dim(self) -> int:
        """Width of the embeddings :meth:`forward` returns."""

    def forward(self, handles: np.ndarray, train: bool) -> torch.Tensor:
        """The platform's embeddings of the customers ``handles``, one row each, in that order."""

    def backward(self, grad: torch.Tensor) -> None:
        """Send dL/d(the last training forward's embeddings); the platform steps on it."""

    def end_epoch(self, epoch: int) -> None:
        """Tell the platform ``epoch`` is over, so it snapshots the weights it scores with."""

    def commit(self, epoch: int) -> None:
        """Tell the platform to keep the weights of ``epoch`` (the chosen one) for good."""


@runtime_checkable
class RestartableLink(PlatformLink, Protocol):
    """A link whose platform can start over (the refit pass): after ``restart()`` the
    platform's bottom is as freshly initialised at session start, snapshots gone."""

    def restart(self) -> None:
        """Have the platform drop its bottom and build a fresh one, as at session start."""


class LocalPlatformLink:
    """A :class:`PlatformBottom` in the same process; handle h is platform row rows[h]."""

    def __init__(self, platform: PlatformBottom, rows_of_handle: np.ndarray) -> None:
        self.platform = platform
        self.rows_of_handle = np.asarray(rows_of_handle, dtype=np.int64)

    @property
    def embedding_dim(self) -> int:
        """The in-process bottom's embedding width."""
        return self.platform.out_dim

    def forward(self, handles: np.ndarray, train: bool) -> torch.Tensor:
        """The bottom's embeddings of the platform rows behind ``handles``."""
        return self.platform.forward(self.rows_of_handle[handles], train)

    def backward(self, grad: torch.Tensor) -> None:
        """Step the in-process bottom on the bank's gradient."""
        self.platform.backward(grad)

    def end_epoch(self, epoch: int) -> None:
        """Snapshot the bottom's weights for ``epoch``."""
        self.platform.snapshot(epoch)

    def commit(self, epoch: int) -> None:
        """Restore the bottom's weights of ``epoch``."""
        self.platform.restore(epoch)

    def restart(self) -> None:
        """Replace the bottom with a fresh one built as at session start."""
        self.platform = self.platform.fresh()


class NoPlatformLink:
    """A link to nobody (bank-alone baseline): use with every handle -1."""

    def __init__(self, embedding_dim: int) -> None:
        self._dim = embedding_dim

    @property
    def embedding_dim(self) -> int:
        """The width the bank model expects; nothing ever fills it."""
        return self._dim

    def forward(self, handles: np.ndarray, train: bool) -> torch.Tensor:
        """Refused: with no platform every handle is -1 and the loop never asks."""
        raise RuntimeError("NoPlatformLink has no platform; every handle must be -1")

    def backward(self, grad: torch.Tensor) -> None:
        """Refused: with no platform there is no embedding to send a gradient for."""
        raise RuntimeError("NoPlatformLink has no platform")

    def end_epoch(self, epoch: int) -> None:
        """Nothing to snapshot."""

    def commit(self, epoch: int) -> None:
        """Nothing to keep."""

    def restart(self) -> None:
        """Nothing to rebuild."""


@dataclass
class BankData:
    """One bank's rows as the loop uses them: encoded features, labels and platform handles."""

    encoded: Encoded
    labels: np.ndarray  # int 0/1 per row (ignored by predict)
    handles: np.ndarray  # int64 per row, -1 = not aligned with the platform

    def __post_init__(self) -> None:
        n = len(self.encoded)
        self.handles = np.asarray(self.handles, dtype=np.int64)
        self.labels = np.asarray(self.labels)
        if self.handles.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(
                f"BankData: {n} encoded rows, {self.labels.shape} labels, "
                f"{self.handles.shape} handles"
            )


@dataclass
class TrainedBank:
    """What :func:`train_bank_model` gives: the bank model, its epoch count and history."""

    model: BankModel
    best_epoch: int  # chosen on the validation rows (0-based)
    epochs_run: int  # by the early-stopped pass
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch
    refit_epochs: int = 0  # epochs of the refit pass on all rows (0: no refit)
    wall_s: float = 0.0


@dataclass(frozen=True)
class EpochEnd:
    """What the loop reports after each epoch (for a progress display): no row-level data."""

    phase: Literal["train", "refit"]  # the early-stopped pass, or the refit on all rows
    epoch: int  # 0-based
    epochs: int  # the most this pass may run (early stopping may end it sooner)
    train_loss: float
    val_auc: float | None  # None in the refit pass (no validation rows)
    seconds: float  # since training began


EpochCallback = Callable[[EpochEnd], None]


def stratified_split(
    labels: np.ndarray, share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        val.append(rows[: round(share * rows.size)])
    v = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    mask = np.ones(labels.size, bool)
    mask[v] = False
    return np.flatnonzero(mask), v


class _Tensors:
    """A bank's data as tensors, built once."""

    def __init__(self, data: BankData) -> None:
        self.numeric = torch.from_numpy(np.ascontiguousarray(data.encoded.numeric, np.float32))
        self.categorical = torch.from_numpy(
            np.ascontiguousarray(data.encoded.categorical, np.int64)
        )
        self.labels = torch.from_numpy(np.asarray(data.labels, np.float32))
        self.handles = data.handles
        self.present = torch.from_numpy(data.handles >= 0)


def _platform_batch(
    link: PlatformLink, handles: np.ndarray, train: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(platform_emb [B, dp] with zeros where absent, present [B], the aligned leaf)."""
    present_np = handles >= 0
    present = torch.from_numpy(present_np)
    emb = torch.zeros(handles.size, link.embedding_dim)
    if not present_np.any():
        return emb, present, None
    got = link.forward(handles[present_np], train)
    if tuple(got.shape) != (int(present_np.sum()), link.embedding_dim):
        raise ValueError(
            f"platform returned embeddings of shape {tuple(got.shape)}, expected "
            f"({int(present_np.sum())}, {link.embedding_dim})"
        )
    leaf = got.detach().to(torch.float32).requires_grad_(train)
    pos = torch.from_numpy(np.flatnonzero(present_np))
    return emb.index_copy(0, pos, leaf), present, leaf


def _logits(
    model: BankModel, t: _Tensors, rows: np.ndarray, link: PlatformLink, batch_size: int
) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, rows.size, batch_size):
            b = rows[s : s + batch_size]
            bt = torch.from_numpy(b)
            plat, present, _ = _platform_batch(link, t.handles[b], train=False)
            out.append(model(t.numeric[bt], t.categorical[bt], plat, present))
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def train_bank_model(
    train: BankData,
    link: PlatformLink,
    bank_cfg: BottomConfig,
    top_cfg: TopConfig,
    cfg: TrainConfig,
    *,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: EpochCallback | None = None,
) -> TrainedBank:
    """Train the bank's model (and, through ``link``, the platform's) on ``train``.

    A stratified ``validation_share`` of the rows, drawn from ``cfg.seed``, is held
    out for early stopping; the best epoch's weights are restored on both sides. With
    ``cfg.refit`` both sides then start over and train that many epochs on every row.

    Resuming: ``on_epoch`` gets, after every whole epoch, the bank's whole state
    (``phase`` "search" or "refit", the pass's weights, optimizer, random streams,
    history); passing one back as ``resume`` goes on from that epoch and ends with the
    same model as an uninterrupted run, provided the platform's side is at the same
    point (a resumed session of :class:`bank_node.platform_link.GrpcPlatformLink`).
    ``progress``, when given, is told of every epoch of either pass (a progress display:
    no weights, no rows).
    """
    if top_cfg.platform_dim != link.embedding_dim:
        raise ValueError(
            f"top platform_dim {top_cfg.platform_dim} != link embedding_dim {link.embedding_dim}"
        )
    labels = np.asarray(train.labels)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("train_bank_model: labels must be 0 or 1")
    t0 = time.perf_counter()
    t = _Tensors(train)
    if cfg.validation_share > 0:
        fit_rows, val_rows = stratified_split(labels, cfg.validation_share, cfg.seed)
    else:
        fit_rows, val_rows = np.arange(labels.size), np.zeros(0, np.int64)
    if fit_rows.size == 0:
        raise ValueError("train_bank_model: no training rows left after the validation split")
    refit = cfg.refit and val_rows.size > 0
    if refit and not isinstance(link, RestartableLink):
        raise TypeError(
            f"TrainConfig.refit needs a link with restart(); {type(link).__name__} has none"
        )
    phase = resume["phase"] if resume is not None else "search"

    def report(name: Literal["train", "refit"], epochs: int
               ) -> Callable[[dict[str, float]], None] | None:
        if progress is None:
            return None
        return lambda rec: progress(EpochEnd(name, int(rec["epoch"]), epochs,
                                             rec["train_loss"], rec.get("val_auc"),
                                             time.perf_counter() - t0))

    def hook(done: dict[str, Any], **extra: Any) -> Callable[[dict[str, Any]], None] | None:
        if on_epoch is None:
            return None
        return lambda state: on_epoch({**done, **extra, "pass": state})

    if phase == "search":
        model, best_epoch, epochs_run, history = _train_pass(
            t, labels, fit_rows, val_rows, link, bank_cfg, top_cfg, cfg, cfg.epochs,
            resume=resume["pass"] if resume is not None else None,
            on_epoch=hook({}, phase="search"), progress=report("train", cfg.epochs),
        )
        resume = None
    else:
        assert resume is not None
        best_epoch, epochs_run = int(resume["best_epoch"]), int(resume["epochs_run"])
        history = list(resume["history"])
    refit_epochs = 0
    if refit:
        assert isinstance(link, RestartableLink)
        if resume is None:  # a resumed refit's link is already in the refit pass
            link.restart()
        refit_epochs = best_epoch + 1
        model, _, _, _ = _train_pass(
            t, labels, np.arange(labels.size), np.zeros(0, np.int64), link, bank_cfg,
            top_cfg, cfg, refit_epochs, resume=resume["pass"] if resume is not None else None,
            on_epoch=hook({"best_epoch": best_epoch, "epochs_run": epochs_run,
                           "history": history}, phase="refit"),
            progress=report("refit", refit_epochs),
        )
    return TrainedBank(
        model=model,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        history=history,
        refit_epochs=refit_epochs,
        wall_s=time.perf_counter() - t0,
    )


class _Proximal:
    """FedProx: ``mu / 2 * ||w - w_global||^2`` over the bank model's parameters, which
    keeps a bank's local epochs near the round's global model on non-identical banks."""

    def __init__(self, model: torch.nn.Module, mu: float) -> None:
        self.mu = mu
        self.anchor = [p.detach().clone() for p in model.parameters()]

    def term(self, model: torch.nn.Module) -> torch.Tensor:
        sq = [(p - a).pow(2).sum() for p, a in zip(model.parameters(), self.anchor, strict=True)]
        return 0.5 * self.mu * torch.stack(sq).sum()


@dataclass
class RoundResult:
    """What one bank's local training in a federated round gives back to the round."""

    model: BankModel  # the averaged (EMA) weights: what the bank contributes to the round
    train_loss: float  # mean BCE of the last local epoch
    rows: int  # training rows (the bank's FedAvg weight)
    wall_s: float


def train_round(
    train: BankData,
    link: PlatformLink,
    model: BankModel,
    cfg: TrainConfig,
    *,
    epochs: int,
    round_: int,
    proximal_mu: float = 0.0,
) -> RoundResult:
    """One federated round at a bank: ``epochs`` local epochs on every training row,
    starting from ``model`` (the round's global weights, modified in place), then
    ``link.commit`` of the last epoch so the platform counts its copy in the round.

    No early stopping inside a round: the coordinator fixes the number of rounds, and
    every bank and the platform must agree on which epoch is committed. The shuffling
    and dropout streams are drawn from ``cfg.seed`` and ``round_``.
    """
    if not np.isin(np.asarray(train.labels), (0, 1)).all():
        raise ValueError("train_round: labels must be 0 or 1")
    if epochs < 1:
        raise ValueError(f"train_round: epochs must be >= 1, got {epochs}")
    if proximal_mu < 0:
        raise ValueError(f"train_round: proximal_mu must be >= 0, got {proximal_mu}")
    t0 = time.perf_counter()
    t = _Tensors(train)
    rows = np.arange(len(train.encoded))
    model.seed_dropout(cfg.seed + 1 + 7919 * round_)
    opt = _optimizer(model, cfg.lr, cfg.weight_decay)
    ema = _Ema(model, cfg.ema_decay)
    prox = _Proximal(model, proximal_mu) if proximal_mu > 0 else None
    rng = np.random.default_rng([cfg.seed, round_])
    loss = float("nan")
    for epoch in range(epochs):
        loss = _train_epoch(model, opt, ema, t, rng.permutation(rows), link, cfg.batch_size, prox)
        link.end_epoch(epoch)
    link.commit(epochs - 1)
    if ema.model is not model:
        model.load_state_dict(ema.model.state_dict())
    return RoundResult(model, loss, int(rows.size), time.perf_counter() - t0)


def _train_epoch(
    model: BankModel,
    opt: torch.optim.Optimizer,
    ema: _Ema[BankModel],
    t: _Tensors,
    perm: np.ndarray,
    link: PlatformLink,
    batch_size: int,
    prox: _Proximal | None = None,
) -> float:
    """One pass over ``perm`` in batches (the per-batch link calls of the module
    docstring); returns the mean BCE per row (the proximal term is not part of it)."""
    model.train()
    total, seen = 0.0, 0
    for s in range(0, perm.size, batch_size):
        b = perm[s : s + batch_size]
        bt = torch.from_numpy(b)
        plat, present, leaf = _platform_batch(link, t.handles[b], train=True)
        logits = model(t.numeric[bt], t.categorical[bt], plat, present)  # [B]
        loss = F.binary_cross_entropy_with_logits(logits, t.labels[bt])
        opt.zero_grad(set_to_none=True)
        (loss if prox is None else loss + prox.term(model)).backward()
        if leaf is not None:
            assert leaf.grad is not None
            link.backward(leaf.grad)
        opt.step()
        ema.update(model)
        total += loss.item() * b.size
        seen += b.size
    return total / max(seen, 1)


EpochHook = Callable[[dict[str, Any]], None]
"""Called after each whole epoch of a pass with the bank's resumable state (see
:func:`train_bank_model`)."""


def _train_pass(
    t: _Tensors,
    labels: np.ndarray,
    rows: np.ndarray,
    val_rows: np.ndarray,
    link: PlatformLink,
    bank_cfg: BottomConfig,
    top_cfg: TopConfig,
    cfg: TrainConfig,
    epochs: int,
    *,
    resume: dict[str, Any] | None = None,
    on_epoch: EpochHook | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> tuple[BankModel, int, int, list[dict[str, float]]]:
    """One training run from fresh weights on ``rows``, early-stopped on ``val_rows``
    (none: keep the last epoch); ends in ``link.commit``. (model, best, run, history).

    ``resume``: the state ``on_epoch`` was given after an epoch; the pass goes on from
    there exactly as if it had never stopped (the platform's side must be at the same
    epoch: the link's business)."""
    model = _build_seeded(cfg.seed, BankModel, bank_cfg, top_cfg)
    model.seed_dropout(cfg.seed + 1)
    opt = _optimizer(model, cfg.lr, cfg.weight_decay)
    ema = _Ema(model, cfg.ema_decay)
    rng = np.random.default_rng(cfg.seed)
    validate = val_rows.size > 0 and np.unique(labels[val_rows]).size == 2

    best_score, best_epoch, best_state = -np.inf, -1, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    epoch, start, stopped = -1, 0, False
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema.load_full_state(resume["ema"])
        opt.load_state_dict(resume["optimizer"])
        _load_dropout_state(model, resume["dropout"])
        rng.bit_generator.state = json.loads(resume["rng"])
        best_score, best_epoch = float(resume["best_score"]), int(resume["best_epoch"])
        best_state, history = resume["best_state"], list(resume["history"])
        epoch = int(resume["epoch"])
        start, stopped = epoch + 1, bool(resume["stopped"])
    for epoch in range(start, epochs) if not stopped else ():
        train_loss = _train_epoch(model, opt, ema, t, rng.permutation(rows), link, cfg.batch_size)
        link.end_epoch(epoch)
        rec = {"epoch": float(epoch), "train_loss": train_loss}
        if validate:
            z = _logits(ema.model, t, val_rows, link, cfg.eval_batch_size)
            p = 1.0 / (1.0 + np.exp(-z))
            rec["val_auc"] = metrics.auc(labels[val_rows], p)
            rec["val_loss"] = metrics.log_loss(labels[val_rows], p)
            score = rec["val_auc"] if cfg.monitor == "auc" else -rec["val_loss"]
        else:
            score = float(epoch)  # no validation: keep the last epoch
        history.append(rec)
        if progress is not None:
            progress(rec)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(ema.model.state_dict())
        else:
            stopped = epoch - best_epoch >= cfg.patience
        if on_epoch is not None:
            on_epoch({
                "epoch": epoch, "stopped": stopped, "model": copy.deepcopy(model.state_dict()),
                "ema": ema.full_state(), "optimizer": copy.deepcopy(opt.state_dict()),
                "dropout": _dropout_state(model), "rng": json.dumps(rng.bit_generator.state),
                "best_score": float(best_score), "best_epoch": best_epoch,
                "best_state": copy.deepcopy(best_state), "history": list(history),
            })
        if stopped:
            break
    if best_epoch < 0:  # validation never produced a finite score
        best_epoch, best_state = epoch, copy.deepcopy(ema.model.state_dict())
    model.load_state_dict(best_state)
    link.commit(best_epoch)
    return model, best_epoch, epoch + 1, history


def predict(
    bank_model: BankModel, data: BankData, link: PlatformLink, batch_size: int = 8192
) -> np.ndarray:
    """Probability of default per row of ``data`` (float64 [n])."""
    t = _Tensors(data)
    z = _logits(bank_model, t, np.arange(len(data.encoded)), link, batch_size)
    return 1.0 / (1.0 + np.exp(-z))
