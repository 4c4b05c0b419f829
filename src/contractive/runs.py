"""Train a model on a dataset into a run directory, and use a finished run: the CLI's library layer.

``train_run`` does what ``contractive train`` does, callable from Python: split, build, fit, checkpoint
every epoch, final metrics and figures. ``encode`` turns data into codes with a loaded run.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, checkpoint, plots
from .config import ModelConfig, TrainConfig
from .data import Dataset, train_val_split, validate_features
from .errors import ContractiveError
from .models import Autoencoder, build_model
from .training import FitResult, as_tensor, evaluate, fit, seed_everything


@dataclasses.dataclass
class TrainedRun:
    """The outcome of :func:`train_run`."""

    run_dir: Path
    model: Autoencoder
    metrics: dict[str, Any]
    result: FitResult
    figures: list[Path]


def prepare_run_dir(run_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Create ``run_dir``; refuse to clobber an existing run unless ``overwrite``."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ContractiveError(f"output {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ContractiveError(f"output directory {str(path)!r} is not empty; choose another --out or pass --force")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ContractiveError(f"cannot create output directory {str(path)!r}: {exc.strerror}") from None
    return path


def train_run(
    data: Dataset,
    model_config: ModelConfig,
    train_config: TrainConfig,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    figures: bool = True,
) -> TrainedRun:
    """Train on ``data`` and write a complete run directory (see :mod:`contractive.checkpoint`)."""
    if model_config.n_features != data.X.shape[1]:
        raise ContractiveError(f"model expects {model_config.n_features} features, data has {data.X.shape[1]}")
    model_config = model_config.resolve_reconstruction(float(data.X.min()), float(data.X.max()))
    train_idx, val_idx = train_val_split(data.X.shape[0], train_config.val_fraction, train_config.seed)
    X_train, X_val = data.X[train_idx], data.X[val_idx]
    path = prepare_run_dir(run_dir, overwrite=overwrite)
    for stale in (checkpoint.WEIGHTS, checkpoint.HISTORY, checkpoint.METRICS):
        (path / stale).unlink(missing_ok=True)

    seed_everything(train_config.seed)
    model = build_model(model_config)
    config = {
        "contractive_version": __version__,
        "model": model_config.to_dict(),
        "training": train_config.to_dict(),
        "data": {
            **data.description,
            "image_shape": list(data.image_shape) if data.image_shape else None,
            "n_train": int(train_idx.size),
            "n_val": int(val_idx.size),
        },
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
    }
    checkpoint.write_json(path / checkpoint.CONFIG, config)
    X_val_or_none = X_val if val_idx.size else None
    if model_config.layers:
        from .stacked import pretrain  # greedy layer-wise: each layer fitted on the codes below it

        result = pretrain(model, X_train, X_val_or_none, train_config, run_dir=path, progress=progress)
    else:
        result = fit(model, X_train, X_val_or_none, train_config, run_dir=path, progress=progress)
    if not result.history:
        return TrainedRun(path, model, {}, result, [])

    eval_X = X_val if val_idx.size else X_train
    split = "val" if val_idx.size else "train"
    final = evaluate(model, as_tensor(eval_X))
    metrics = {
        "epochs_trained": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "interrupted": result.interrupted,
        "train_time_s": result.train_time_s,
        "train_loss": result.history[-1]["train_loss"],
        "evaluated_on": split,
        **{f"val_{k}": v for k, v in final.items()},
    }
    checkpoint.write_json(path / checkpoint.METRICS, metrics)
    written = write_figures(model, result.history, eval_X, data.image_shape, path) if figures else []
    return TrainedRun(path, model, metrics, result, written)


def write_figures(
    model: Autoencoder, history: list[dict[str, Any]], X: np.ndarray, image_shape, run_dir: Path
) -> list[Path]:
    """Learning curves always; filters and reconstructions when samples are images."""
    written = [plots.learning_curves(history, run_dir / "learning_curves.png")]
    if image_shape:
        weight = model.encoder[0].weight.detach().cpu().numpy()
        written.append(plots.filters(weight, tuple(image_shape), run_dir / "filters.png"))
        with torch.no_grad():
            X_hat = model(as_tensor(X[:10])).cpu().numpy()
        written.append(plots.reconstructions(X[:10], X_hat, tuple(image_shape), run_dir / "reconstructions.png"))
    return written


@torch.no_grad()
def encode(model: Autoencoder, X: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """Codes of ``X`` (n_samples, n_features) → (n_samples, hidden), float32, computed in batches."""
    validate_features(X, n_features=model.config.n_features)
    model.eval()
    out = [model.encode(as_tensor(X[i : i + batch_size])).cpu().numpy() for i in range(0, X.shape[0], batch_size)]
    return np.concatenate(out).astype(np.float32)
