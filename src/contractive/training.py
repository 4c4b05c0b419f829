"""One training loop for every autoencoder: mini-batches, progress, metrics, checkpoints, early stopping.

The model supplies ``loss(x) -> {"loss", "reconstruction", "penalty", ...}``; this loop only optimises
``"loss"`` and reports the rest, so any model with that method trains here.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoint
from .config import TrainConfig
from .data import CHUNK_BYTES, MappedArray
from .distributed import Context, autocast, check_precision, resolve_device, wrap
from .errors import ContractiveError
from .penalty import encode_with_penalty


def seed_everything(seed: int) -> None:
    """Seed torch so that model initialisation and training are bit-reproducible on CPU.

    NumPy randomness in this library always goes through explicit ``np.random.default_rng(seed)``.
    """
    torch.manual_seed(seed)


def as_tensor(X: np.ndarray | Tensor, device: str | torch.device = "cpu") -> Tensor:
    return torch.as_tensor(np.asarray(X, dtype=np.float32) if not isinstance(X, Tensor) else X).to(device)


class RowReader:
    """Batches of rows on ``device``: from one in-memory tensor, or read from a memory-mapped file.

    In-memory data (arrays, tensors) is converted once; a :class:`~contractive.data.MappedArray` is read
    batch by batch, so training and evaluation stream data that does not fit in memory.
    """

    def __init__(self, X, device: torch.device):
        self.device = device
        self.mapped = X if isinstance(X, MappedArray) else None
        # In-memory data goes to the device once; mapped data batch by batch.
        self.tensor = None if self.mapped is not None else as_tensor(X, device)
        self.n_rows = len(X)

    def __len__(self) -> int:
        return self.n_rows

    @property
    def rows(self) -> Tensor | MappedArray:
        """The whole data: the converted tensor, or the mapped file (for :func:`evaluate` and checks)."""
        return self.tensor if self.tensor is not None else self.mapped

    def __call__(self, indices: Tensor) -> Tensor:
        """Rows ``indices`` (a 1-D integer tensor), shape (len(indices), n_features), float32."""
        if self.tensor is not None:
            return self.tensor[indices.to(self.tensor.device)]
        block = torch.from_numpy(self.mapped[indices.cpu().numpy()])
        return block.to(self.device, non_blocking=True)


@torch.no_grad()
def evaluate(
    model: nn.Module, X: np.ndarray | Tensor, *, batch_size: int = 1024, context: Context | None = None
) -> dict[str, float]:
    """Mean loss terms and diagnostics over ``X`` in eval mode.

    Returns ``loss``, ``reconstruction`` (the training criterion), ``penalty`` (mean ‖J_f‖²_F),
    ``reconstruction_error`` (mean over samples of ‖x − x̂‖², summed over features: comparable across
    models whatever their loss) and ``jacobian_norm`` (mean over samples of ‖J_f(x)‖_F).

    ``X`` may be an array, a tensor or a :class:`~contractive.data.MappedArray` (streamed in batches).
    Under a distributed ``context`` each rank evaluates every ``world_size``-th sample and the sums are
    all-reduced, so every rank returns the same numbers.
    """
    device = next(model.parameters()).device
    context = context or Context(device=device)
    was_training = model.training
    model.eval()
    reader = RowReader(X, device)
    n = len(reader)
    mine = torch.arange(context.rank, n, context.world_size)
    weight = 1.0
    if mine.numel() == 0:  # fewer samples than ranks: take part in the all-reduce with nothing
        mine, weight = torch.zeros(1, dtype=torch.long), 0.0
    totals: dict[str, Tensor] = {}
    for start in range(0, mine.numel(), batch_size):
        xb = reader(mine[start : start + batch_size])
        terms = model.loss(xb)
        if "jacobian_norm" not in terms:  # models whose eval-mode loss does not report it already
            # "auto" under no_grad is exact wherever affordable: the metric carries no projection noise.
            _, penalty = encode_with_penalty(model.encoder, xb, method="auto", n_projections=model.config.n_projections)
            terms["jacobian_norm"] = penalty.clamp_min(0).sqrt().mean()
        terms = {k: v.double() * xb.shape[0] for k, v in terms.items()}
        terms["reconstruction_error"] = (model(xb) - xb).pow(2).sum(dim=1).sum().double()
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + value * weight
    model.train(was_training)
    keys = sorted(totals)
    summed = context.all_reduce_sum(torch.stack([totals[k] for k in keys]))
    return {k: float(v) / n for k, v in zip(keys, summed.tolist(), strict=True)}


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, where it stopped and why."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    interrupted: bool = False
    train_time_s: float = 0.0
    resumed_from_epoch: int | None = None


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def fit(
    model: nn.Module,
    X_train: np.ndarray | Tensor,
    X_val: np.ndarray | Tensor | None = None,
    config: TrainConfig | None = None,
    *,
    run_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    device: str | torch.device | None = "auto",
    context: Context | None = None,
    resume: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> FitResult:
    """Train ``model`` in place.

    Parameters
    ----------
    model : nn.Module
        Has ``loss(x) -> dict`` with a ``"loss"`` entry (e.g. :class:`contractive.Autoencoder`).
    X_train : array of shape (n_samples, n_features)
        An array, tensor, or :class:`~contractive.data.MappedArray` (read batch by batch).
    X_val : array of shape (n_val, n_features), optional
        Validation data for ``val_*`` metrics and early stopping.
    config : TrainConfig
    run_dir : path, optional
        If given, ``model.safetensors``, ``metrics.jsonl`` and a resumable checkpoint
        (``checkpoints/epoch-N/``) are rewritten atomically after every epoch.
    progress : bool
        Show a progress bar with the running loss, reconstruction and penalty.
    on_epoch_end : callable, optional
        Called with each epoch's metrics row.
    device : {"auto", "cpu", "cuda", "mps"} or torch.device
        Where to train (``"auto"``: CUDA when available). The model is moved there. Ignored when
        ``context`` is given.
    context : contractive.distributed.Context, optional
        The process's place in a torchrun job (:func:`contractive.distributed.setup`). Each step's
        global batch of ``config.batch_size`` samples is split across ranks, gradients are averaged by
        DistributedDataParallel, and rank 0 alone writes files.
    resume : bool
        Continue from the newest checkpoint in ``run_dir`` (weights, optimizer, RNG states, history).
    optimizer : torch.optim.Optimizer, optional
        Continue with this optimizer (and its moment estimates) instead of a fresh one from ``config``:
        incremental training such as the estimator's ``partial_fit``.
    generator : torch.Generator, optional
        Source of the shuffling order (default: a new one seeded with ``config.seed``). Passing the same
        generator to k one-epoch calls shuffles exactly as one k-epoch call.

    Returns
    -------
    FitResult
        On Ctrl-C the model is restored to the last completed epoch and ``interrupted`` is True.
    """
    config = config or TrainConfig()
    context = context or Context(device=resolve_device(device))
    check_precision(config.precision, context.device)
    if config.batch_size % context.world_size:
        raise ContractiveError(
            f"batch size {config.batch_size} is the global batch and must be divisible by the number of "
            f"processes ({context.world_size})"
        )
    if resume and run_dir is None:
        raise ContractiveError("resume needs the run directory to resume from")
    reader = RowReader(X_train, context.device)
    if len(reader) == 0:
        raise ContractiveError("no training data")
    _check_data(reader.rows, "training data", model)
    # Converted once here rather than by evaluate() every epoch.
    val_reader = RowReader(X_val, context.device).rows if X_val is not None and len(X_val) else None
    if val_reader is not None:
        _check_data(val_reader, "validation data", model)
    model.to(context.device)
    optimizer = optimizer if optimizer is not None else make_optimizer(model, config)
    generator = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    result = FitResult()
    loop = _LoopState(patience_left=config.patience)
    if resume:
        saved = checkpoint.load_training_checkpoint(run_dir, model)
        loop = _restore(saved, optimizer, generator, result)
    module = wrap(model, context)
    last_state = copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    steps = math.ceil(len(reader) / config.batch_size)
    bar = _ProgressBar(enabled=progress and context.is_main, total_epochs=config.epochs, steps=steps)
    try:
        with bar:
            for epoch in range(loop.epoch + 1, config.epochs + 1):
                epoch_start = time.perf_counter()
                train_terms = _train_one_epoch(module, reader, optimizer, config, generator, bar, epoch, context)
                row: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in train_terms.items()}}
                if val_reader is not None:
                    row.update({f"val_{k}": v for k, v in evaluate(model, val_reader, context=context).items()})
                row["epoch_time_s"] = time.perf_counter() - epoch_start
                result.history.append(row)
                loop.epoch = epoch
                last_state = copy.deepcopy(model.state_dict())
                monitored = row.get("val_loss", row["train_loss"])
                if monitored < loop.best_loss:
                    loop.best_loss, result.best_epoch = monitored, epoch
                    loop.best_state = last_state if config.patience else None
                    loop.patience_left = config.patience
                else:
                    loop.patience_left -= 1
                if run_dir is not None:
                    state = _snapshot(loop, optimizer, generator, result)
                    _main_writes(context, _write_epoch, Path(run_dir), model, result.history, epoch, state)
                bar.epoch_done(row)
                if on_epoch_end is not None:
                    on_epoch_end(row)
                if config.patience and loop.patience_left <= 0:
                    result.stopped_early = True
                    break
    except KeyboardInterrupt:
        # The half-finished epoch is discarded: memory matches the last checkpoint on disk.
        model.load_state_dict(last_state)
        result.interrupted = True
    if config.patience and loop.best_state is not None:
        model.load_state_dict(loop.best_state)
        if run_dir is not None:
            _main_writes(context, checkpoint.save_weights, Path(run_dir) / checkpoint.WEIGHTS, model)
    result.train_time_s = time.perf_counter() - started
    return result


def _check_data(X: Tensor | MappedArray, what: str, model: nn.Module) -> None:
    """Reject data the model cannot train on, once at :func:`fit` entry, naming the actual problem.

    Unchecked, NaN or inf in training data shows up as "training diverged" (blaming the learning rate),
    in validation data as NaN metrics; a wrong width as a matrix-multiplication error; and BCE on data
    outside [0, 1] as a loss that falls without bound. The pass is chunked, so a memory-mapped file is
    read once more but never held in memory. Only modules with one of our configs get the width and BCE
    checks: any module with ``loss()`` may train here.
    """
    config = getattr(model, "config", None)
    n_features = getattr(config, "n_features", None)
    bce = getattr(config, "reconstruction", None) == "bce"
    shape = tuple(X.shape)
    if len(shape) != 2:
        raise ContractiveError(f"{what} must be 2-D (samples × features), got shape {shape}")
    if n_features is not None and shape[1] != n_features:
        raise ContractiveError(f"{what} have {shape[1]} features but the model expects {n_features}")
    low, high = math.inf, -math.inf
    for start, block in _row_blocks(X):
        finite = torch.isfinite(block).all(dim=1)
        if not bool(finite.all()):
            first = start + int(finite.logical_not().nonzero()[0])
            raise ContractiveError(f"{what} contain NaN or inf (first at row {first})")
        if bce:
            low, high = min(low, float(block.min())), max(high, float(block.max()))
    if bce and (low < 0 or high > 1):
        raise ContractiveError(
            f"binary cross-entropy needs data in [0, 1]; {what} have values in [{low:g}, {high:g}]: "
            "scale the data or use reconstruction='squared_error'"
        )


def _row_blocks(X: Tensor | MappedArray):
    """Yield ``(start, rows)`` tensors of about :data:`~contractive.data.CHUNK_BYTES` each."""
    if isinstance(X, MappedArray):
        for start, block in X.chunks():
            yield start, torch.from_numpy(block)
        return
    step = max(1, CHUNK_BYTES // (X.element_size() * max(1, X.shape[1])))
    for start in range(0, X.shape[0], step):
        yield start, X[start : start + step]


@dataclass
class _LoopState:
    """Early-stopping bookkeeping that a resumed run must continue from."""

    epoch: int = 0
    best_loss: float = math.inf
    best_state: dict[str, Tensor] | None = None
    patience_left: int = 0


def _snapshot(loop: _LoopState, optimizer, generator: torch.Generator, result: FitResult) -> dict[str, Any]:
    """Everything besides the weights that continuing bit-identically needs (weights_only-loadable)."""
    state = {
        "optimizer": optimizer.state_dict(),
        "shuffle_generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_loss": loop.best_loss,
        "patience_left": loop.patience_left,
        "best_state": loop.best_state,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _restore(saved: dict[str, Any], optimizer, generator: torch.Generator, result: FitResult) -> _LoopState:
    optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(saved["shuffle_generator"])
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and torch.cuda.is_available() and len(saved["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    result.history = list(saved["history"])
    result.best_epoch = saved["best_epoch"]
    result.resumed_from_epoch = saved["epoch"]
    return _LoopState(
        epoch=saved["epoch"],
        best_loss=saved["best_loss"],
        best_state=saved["best_state"],
        patience_left=saved["patience_left"],
    )


def _write_epoch(run_dir: Path, model: nn.Module, history, epoch: int, state: dict[str, Any]) -> None:
    checkpoint.save_weights(run_dir / checkpoint.WEIGHTS, model)
    checkpoint.write_jsonl(run_dir / checkpoint.HISTORY, history)
    checkpoint.save_training_checkpoint(run_dir, epoch, model, state)


def _main_writes(context: Context, write: Callable[..., None], *args) -> None:
    """Rank 0 calls ``write(*args)`` while the other ranks wait, so no rank runs ahead of a half-written file."""
    context.barrier()
    if context.is_main:
        write(*args)
    context.barrier()


def _train_one_epoch(
    module: nn.Module,
    reader: RowReader,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    generator: torch.Generator,
    bar,
    epoch: int,
    context: Context,
) -> dict[str, float]:
    module.train()
    n, batch_size = len(reader), config.batch_size
    # Every rank draws the same permutation (same seeded generator), then takes its share of each batch.
    order = torch.randperm(n, generator=generator)
    sums: dict[str, Tensor] = {}
    seen = 0
    for step, start in enumerate(range(0, n, batch_size), 1):
        batch = order[start : start + batch_size]
        mine, share = context.shard(batch), 1.0
        if context.distributed:
            # DDP averages gradients over ranks; weighting each rank's mean by its share of the global
            # batch makes that average the single-process batch mean even for an uneven last batch.
            share = mine.numel() * context.world_size / batch.numel()
            if mine.numel() == 0:
                mine, share = batch[:1], 0.0  # still join the gradient all-reduce, contributing nothing
        xb = reader(mine)
        with autocast(context.device, config.precision):
            terms = module(xb)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise ContractiveError(
                f"training diverged at epoch {epoch}, step {step}: loss is {loss.item()}; lower the learning rate or λ"
            )
        optimizer.zero_grad(set_to_none=True)
        (loss * share if context.distributed else loss).backward()
        optimizer.step()
        counted = xb.shape[0] if share else 0
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float() * counted
        seen += batch.numel()
        bar.step(epoch, step, {k: float(v) * context.world_size / seen for k, v in sums.items()})
    keys = sorted(sums)
    totals = context.all_reduce_sum(torch.stack([torch.as_tensor(sums[k]).double() for k in keys]))
    # A term the model did not compute (the penalty of a λ = 0 AE or a DAE in training) is absent from
    # its loss dict, so absent here too: readers take a missing term as not computed.
    return {k: float(v) / n for k, v in zip(keys, totals.tolist(), strict=True)}


class _ProgressBar:
    """A rich progress bar over the batches of each epoch, plus one summary line per epoch."""

    def __init__(self, *, enabled: bool, total_epochs: int, steps: int):
        self.enabled, self.total_epochs, self.steps = enabled, total_epochs, steps
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[terms]}"),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.steps, epoch=1, epochs=self.total_epochs, terms="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def step(self, epoch: int, step: int, running: dict[str, float]) -> None:
        if self._progress is None or (step % 5 and step != self.steps):
            return
        terms = " ".join(f"{k} {v:.4g}" for k, v in running.items())
        self._progress.update(self._task, completed=step, epoch=epoch, terms=terms)

    def epoch_done(self, row: dict[str, Any]) -> None:
        if self._progress is None:
            return
        shown = ("train_loss", "train_reconstruction", "train_penalty", "val_loss", "val_jacobian_norm")
        text = "  ".join(f"{k} {row[k]:.4g}" for k in shown if k in row)
        # soft_wrap: one line per epoch even when stderr is not a terminal (rich would wrap at 80 columns).
        self._progress.console.print(f"epoch {row['epoch']:>3}  {text}", soft_wrap=True)
        self._progress.reset(self._task, total=self.steps)
