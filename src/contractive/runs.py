"""Train a model on a dataset into a run directory, and use a finished run: the CLI's library layer.

``train_run`` does what ``contractive train`` does, callable from Python: split, build, fit, checkpoint
every epoch, final metrics and figures. ``encode`` turns data into codes with a loaded run.
"""

from __future__ import annotations

import dataclasses
import itertools
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, checkpoint, plots
from .config import ModelConfig, TrainConfig
from .data import Dataset, take_rows, train_val_split, validate_features
from .distributed import Context, resolve_device
from .errors import ContractiveError
from .models import Autoencoder, build_model, input_filters
from .training import FitResult, as_tensor, evaluate, fit, seed_everything


@dataclasses.dataclass
class TrainedRun:
    """The outcome of :func:`train_run`."""

    run_dir: Path
    model: Autoencoder
    metrics: dict[str, Any]
    result: FitResult
    figures: list[Path]


def _never_trained(path: Path) -> bool:
    """Whether ``path`` holds only the config.json of a run stopped before its first epoch: nothing to lose."""
    if [p.name for p in path.iterdir()] != [checkpoint.CONFIG]:
        return False
    config = checkpoint.run_config(path)
    return config is not None and "contractive_version" in config  # written by train_run, not by someone else


def prepare_run_dir(run_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Create ``run_dir``; refuse to clobber an existing run unless ``overwrite``."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ContractiveError(f"output {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite and not _never_trained(path):
        raise ContractiveError(
            f"output directory {str(path)!r} is not empty; choose another one or overwrite it "
            "(--force on the command line, overwrite=True in Python)"
        )
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
    device: str | torch.device | None = "auto",
    context: Context | None = None,
    resume: bool = False,
) -> TrainedRun:
    """Train on ``data`` and write a complete run directory (see :mod:`contractive.checkpoint`).

    ``device`` picks where to train (``"auto"``: CUDA when available). Under torchrun pass the
    ``context`` from :func:`contractive.distributed.setup`: every rank trains, rank 0 alone writes.
    ``resume=True`` continues the run in ``run_dir`` from its newest checkpoint; the configs must be the
    ones in its ``config.json`` (see :func:`resume_settings`).
    """
    context = context or Context(device=resolve_device(device))
    n_features = data.X.shape[1]
    if model_config.n_features != n_features:
        raise ContractiveError(f"model expects {model_config.n_features} features, data has {n_features}")
    model_config = model_config.resolve_reconstruction(float(data.X.min()), float(data.X.max()))
    train_idx, val_idx = train_val_split(data.X.shape[0], train_config.val_fraction, train_config.seed)
    X_train, X_val = take_rows(data.X, train_idx), take_rows(data.X, val_idx)
    path = Path(run_dir)
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
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(context.device),
            "world_size": context.world_size,
        },
    }
    if model_config.layers and (resume or context.world_size > 1):
        raise ContractiveError("stacked models (--layers) train greedily in one process and cannot be resumed yet")
    if resume:
        _check_resumable(path, config)
    else:
        context.barrier()
        if context.is_main:
            prepare_run_dir(path, overwrite=overwrite)
            for stale in (checkpoint.WEIGHTS, checkpoint.HISTORY, checkpoint.METRICS):
                (path / stale).unlink(missing_ok=True)
            shutil.rmtree(path / checkpoint.CHECKPOINTS, ignore_errors=True)
            checkpoint.write_json(path / checkpoint.CONFIG, config)
        context.barrier()

    seed_everything(train_config.seed)
    model = build_model(model_config)
    has_val = val_idx.size > 0
    X_val_or_none = X_val if has_val else None
    if model_config.layers:
        from .stacked import pretrain  # greedy layer-wise: each layer fitted on the codes below it

        result = pretrain(model, X_train, X_val_or_none, train_config, run_dir=path, progress=progress)
    else:
        result = fit(
            model, X_train, X_val_or_none, train_config,
            run_dir=path, progress=progress, context=context, resume=resume,
        )  # fmt: skip
    if not result.history:
        return TrainedRun(path, model, {}, result, [])

    eval_X = X_val if has_val else X_train
    final = evaluate(model, eval_X, context=context)
    metrics = {
        "epochs_trained": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "interrupted": result.interrupted,
        "resumed_from_epoch": result.resumed_from_epoch,
        "train_time_s": result.train_time_s,
        "train_loss": result.history[-1]["train_loss"],
        "evaluated_on": "val" if has_val else "train",
        **{f"val_{k}": v for k, v in final.items()},
    }
    written: list[Path] = []
    context.barrier()
    if context.is_main:
        checkpoint.write_json(path / checkpoint.METRICS, metrics)
        if figures:
            written = write_figures(model, result.history, eval_X[:10], data.image_shape, path)
    context.barrier()
    return TrainedRun(path, model, metrics, result, written)


# Settings that may differ between an interrupted run and its resumption: they do not change the result.
_RESUME_FREE = {"environment", "contractive_version"}


def resume_settings(run_dir: str | Path) -> tuple[dict[str, Any], ModelConfig, TrainConfig]:
    """What ``--resume RUN_DIR`` needs from its ``config.json``: data spec, model and training configs.

    Returns
    -------
    data : dict
        ``spec``, ``split`` and ``limit`` to pass to :func:`contractive.load_dataset`.
    model_config, train_config
    """
    path = checkpoint.require_run_dir(run_dir)
    config = checkpoint.read_json(path / checkpoint.CONFIG)
    if not isinstance(config, dict) or not {"model", "training", "data"} <= set(config):
        raise ContractiveError(f"{path / checkpoint.CONFIG} lacks a model, training or data section")
    if checkpoint.latest_training_checkpoint(path) is None:
        if _never_trained(path):
            raise ContractiveError(
                f"{path} stopped before its first epoch finished: nothing to resume; run the same command "
                "without --resume (the directory is reused)"
            )
        raise ContractiveError(
            f"{path} has no resumable checkpoint ({checkpoint.CHECKPOINTS}/epoch-*): nothing to resume"
        )
    described = config["data"]
    split = {"train": "train", "t10k": "test"}.get(described.get("split"), "auto")
    data = {"spec": described.get("spec"), "split": split, "limit": described.get("limit")}
    if not data["spec"]:
        raise ContractiveError(f"{path / checkpoint.CONFIG} does not record the data spec; cannot reload the data")
    source = path / checkpoint.CONFIG
    return (
        data,
        checkpoint.config_from(source, ModelConfig, config["model"]),
        checkpoint.config_from(source, TrainConfig, config["training"]),
    )


def _check_resumable(path: Path, config: dict[str, Any]) -> None:
    """The resumed run must train the same model on the same data as the run on disk."""
    stored = checkpoint.read_json(path / checkpoint.CONFIG)
    for section in sorted(set(stored) | set(config)):
        if section in _RESUME_FREE or stored.get(section) == config.get(section):
            continue
        old, new = stored.get(section) or {}, config.get(section) or {}
        differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        details = ", ".join(f"{k}: {old.get(k)!r} in the run, {new.get(k)!r} now" for k in differing)
        raise ContractiveError(f"cannot resume {path}: {section} settings differ ({details})")


def write_figures(
    model: Autoencoder, history: list[dict[str, Any]], X: np.ndarray, image_shape, run_dir: Path
) -> list[Path]:
    """Learning curves always; filters and reconstructions when samples are images."""
    written = [plots.learning_curves(history, run_dir / "learning_curves.png")]
    if image_shape:
        weight = input_filters(model)
        if weight is not None:  # dense models: rows of the first layer are images (conv: no such figure)
            written.append(
                plots.filters(weight.detach().cpu().float().numpy(), tuple(image_shape), run_dir / "filters.png")
            )
        X = np.asarray(X[:10], dtype=np.float32)
        device = next(model.parameters()).device
        with torch.no_grad():
            X_hat = model(as_tensor(X, device)).cpu().numpy()
        written.append(plots.reconstructions(X, X_hat, tuple(image_shape), run_dir / "reconstructions.png"))
    return written


@torch.no_grad()
def _encode_batches(model: Autoencoder, X, batch_size: int, device: str | torch.device | None):
    """Yield ``(start, codes)`` over ``X`` in row order; ``X`` is checked batch by batch (shape, finiteness)."""
    n_features = model.config.n_features
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != n_features:
        validate_features(np.asarray(X[:1]), n_features=n_features)  # raises the matching shape error
    device = resolve_device(device)
    model.to(device).eval()
    for start in range(0, X.shape[0], batch_size):
        block = np.asarray(X[start : start + batch_size], dtype=np.float32)
        if not np.isfinite(block).all():
            row = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise ContractiveError(f"data: contains NaN or infinite values (first at row {row})")
        yield start, model.encode(as_tensor(block, device)).float().cpu().numpy()


def encode(
    model: Autoencoder, X: np.ndarray, *, batch_size: int = 4096, device: str | torch.device | None = "auto"
) -> np.ndarray:
    """Codes of ``X`` (n_samples, n_features) → (n_samples, hidden), float32, computed in batches.

    ``X`` may be a :class:`~contractive.data.MappedArray`; see :func:`encode_to_npy` for outputs that
    should not be held in memory either.
    """
    blocks = [codes for _, codes in _encode_batches(model, X, batch_size, device)]
    return np.concatenate(blocks).astype(np.float32, copy=False)


def encode_to_npy(
    model: Autoencoder,
    X,
    output: str | Path,
    *,
    batch_size: int = 4096,
    device: str | torch.device | None = "auto",
) -> tuple[int, int]:
    """Stream the codes of ``X`` into the ``.npy`` file ``output``; return its shape (n_samples, hidden).

    The file is created with :func:`numpy.lib.format.open_memmap` under a temporary name and each
    batch of codes is written through a short-lived memory map of just its rows, so neither the input
    (when memory-mapped) nor the output is ever held in memory. The finished file is renamed onto
    ``output``: an interrupted run leaves no partial file behind.
    """
    output = Path(output)
    batches = _encode_batches(model, X, batch_size, device)
    start, first = next(batches)
    shape = (int(X.shape[0]), int(first.shape[1]))

    def write(tmp: str) -> None:
        created = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        offset = created.offset
        del created  # only the header (and the file's size) were needed
        for begin, codes in itertools.chain([(start, first)], batches):
            window = np.memmap(
                tmp, dtype=np.float32, mode="r+", offset=offset + begin * shape[1] * 4, shape=codes.shape
            )
            window[:] = codes
            window.flush()
            del window  # unmap: written pages leave this process's resident memory

    checkpoint.atomic_write(output, write)
    return shape
