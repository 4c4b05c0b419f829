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
from .errors import ContractiveError
from .penalty import encode_with_penalty


def seed_everything(seed: int) -> None:
    """Seed torch so that model initialisation and training are bit-reproducible on CPU.

    NumPy randomness in this library always goes through explicit ``np.random.default_rng(seed)``.
    """
    torch.manual_seed(seed)


def as_tensor(X: np.ndarray | Tensor, device: str | torch.device = "cpu") -> Tensor:
    return torch.as_tensor(np.asarray(X, dtype=np.float32) if not isinstance(X, Tensor) else X).to(device)


@torch.no_grad()
def evaluate(model: nn.Module, X: Tensor, *, batch_size: int = 1024) -> dict[str, float]:
    """Mean loss terms and diagnostics over ``X`` in eval mode.

    Returns ``loss``, ``reconstruction`` (the training criterion), ``penalty`` (mean ‖J_f‖²_F),
    ``reconstruction_error`` (mean over samples of ‖x − x̂‖², summed over features: comparable across
    models whatever their loss) and ``jacobian_norm`` (mean over samples of ‖J_f(x)‖_F).
    """
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    n = X.shape[0]
    for start in range(0, n, batch_size):
        xb = X[start : start + batch_size]
        terms = {k: float(v) * xb.shape[0] for k, v in model.loss(xb).items()}
        h, penalty = encode_with_penalty(model.encoder, xb, method=model.config.penalty_method)
        terms["reconstruction_error"] = float((model.decode(h) - xb).pow(2).sum(dim=1).sum())
        terms["jacobian_norm"] = float(penalty.clamp_min(0).sqrt().sum())
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + value
    model.train(was_training)
    return {k: v / n for k, v in totals.items()}


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, where it stopped and why."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    interrupted: bool = False
    train_time_s: float = 0.0


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
) -> FitResult:
    """Train ``model`` in place.

    Parameters
    ----------
    model : nn.Module
        Has ``loss(x) -> dict`` with a ``"loss"`` entry (e.g. :class:`contractive.Autoencoder`).
    X_train : array of shape (n_samples, n_features)
    X_val : array of shape (n_val, n_features), optional
        Validation data for ``val_*`` metrics and early stopping.
    config : TrainConfig
    run_dir : path, optional
        If given, ``model.safetensors`` and ``metrics.jsonl`` are rewritten atomically after every epoch.
    progress : bool
        Show a progress bar with the running loss, reconstruction and penalty.
    on_epoch_end : callable, optional
        Called with each epoch's metrics row.

    Returns
    -------
    FitResult
        On Ctrl-C the model is restored to the last completed epoch and ``interrupted`` is True.
    """
    config = config or TrainConfig()
    X = as_tensor(X_train)
    V = as_tensor(X_val) if X_val is not None and len(X_val) else None
    if X.shape[0] == 0:
        raise ContractiveError("no training data")
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    result = FitResult()
    best_loss, best_state = math.inf, None
    last_state = copy.deepcopy(model.state_dict())
    patience_left = config.patience
    started = time.perf_counter()
    bar = _ProgressBar(enabled=progress, total_epochs=config.epochs, steps=math.ceil(X.shape[0] / config.batch_size))
    try:
        with bar:
            for epoch in range(1, config.epochs + 1):
                epoch_start = time.perf_counter()
                train_terms = _train_one_epoch(model, X, optimizer, config.batch_size, generator, bar, epoch)
                row: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in train_terms.items()}}
                if V is not None:
                    row.update({f"val_{k}": v for k, v in evaluate(model, V).items()})
                row["epoch_time_s"] = time.perf_counter() - epoch_start
                result.history.append(row)
                last_state = copy.deepcopy(model.state_dict())
                monitored = row.get("val_loss", row["train_loss"])
                if monitored < best_loss:
                    best_loss, result.best_epoch = monitored, epoch
                    best_state = last_state if config.patience else None
                    patience_left = config.patience
                else:
                    patience_left -= 1
                if run_dir is not None:
                    checkpoint.save_weights(Path(run_dir) / checkpoint.WEIGHTS, model)
                    checkpoint.write_jsonl(Path(run_dir) / checkpoint.HISTORY, result.history)
                bar.epoch_done(row)
                if on_epoch_end is not None:
                    on_epoch_end(row)
                if config.patience and patience_left <= 0:
                    result.stopped_early = True
                    break
    except KeyboardInterrupt:
        # The half-finished epoch is discarded: memory matches the last checkpoint on disk.
        model.load_state_dict(last_state)
        result.interrupted = True
    if config.patience and best_state is not None:
        model.load_state_dict(best_state)
        if run_dir is not None:
            checkpoint.save_weights(Path(run_dir) / checkpoint.WEIGHTS, model)
    result.train_time_s = time.perf_counter() - started
    return result


def _train_one_epoch(
    model: nn.Module,
    X: Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    bar,
    epoch: int,
) -> dict[str, float]:
    model.train()
    order = torch.randperm(X.shape[0], generator=generator)
    sums: dict[str, Tensor] = {}
    for step, start in enumerate(range(0, X.shape[0], batch_size), 1):
        xb = X[order[start : start + batch_size]]
        terms = model.loss(xb)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise ContractiveError(
                f"training diverged at epoch {epoch}, step {step}: loss is {loss.item()}; lower the learning rate or λ"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.detach() * xb.shape[0]
        bar.step(epoch, step, {k: float(v) / min(start + batch_size, X.shape[0]) for k, v in sums.items()})
    return {k: float(v) / X.shape[0] for k, v in sums.items()}


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
        self._progress.console.print(f"epoch {row['epoch']:>3}  {text}")
        self._progress.reset(self._task, total=self.steps)
