"""The run directory: weights, config and metrics, written atomically and read strictly.

Layout::

    RUN_DIR/
      model.safetensors   weights (no pickle)
      config.json         {"contractive_version", "model", "training", "data"}
      metrics.jsonl       one JSON object per completed epoch
      metrics.json        final numbers
      *.png               figures
      checkpoints/epoch-NNNNNN/      the last complete epoch, for ``contractive train --resume``
          model.safetensors          weights, with the epoch in the safetensors metadata
          training_state.pt          optimizer state, RNG states, history, early-stopping state
                                     (tensors and plain containers only: loads with weights_only=True)

Every file is written to a temporary name in the same directory and then renamed over the old one
(``os.replace`` is atomic on POSIX), so an interrupted write never leaves a half-written checkpoint.
A resumable checkpoint is a whole directory built under a temporary name and renamed into place, so
its weights and optimizer state always belong to the same epoch (which both files also record).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import ContractiveError
from .models import Autoencoder, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HISTORY = "metrics.jsonl"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
TRAINING_STATE = "training_state.pt"
_EPOCH_DIR = re.compile(r"epoch-(\d{6,})")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` only if it succeeded."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # missing directory, no permission, read-only or pseudo file system
        raise ContractiveError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # e.g. the disk filled up, or path is a directory: the old file is untouched
        Path(tmp).unlink(missing_ok=True)
        raise ContractiveError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, allow_nan=True)
            fh.write("\n")

    atomic_write(path, write)


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")

    atomic_write(path, write)


def save_weights(path: str | Path, model: torch.nn.Module) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ContractiveError(f"{path} is missing: is {path.parent} a contractive run directory?") from None
    except (OSError, ValueError) as exc:
        raise ContractiveError(f"cannot read {path}: {exc}") from None


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    model: Autoencoder
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def load_state_strict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load ``tensors`` into ``model`` only if names and shapes match exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ContractiveError(f"{source} does not match its config: missing {missing}, unexpected {unexpected}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ContractiveError(
                f"{source} does not match its config: {name} has shape {tuple(tensor.shape)}, "
                f"config implies {tuple(expected[name].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise ContractiveError(f"{source}: {name} contains NaN or infinite values")
    model.load_state_dict(tensors, strict=True)


def run_config(path: str | Path) -> dict[str, Any] | None:
    """The config.json of the run in ``path`` (an object with a model section), or None if it holds none."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and "model" in config else None


def require_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path, or a clear error when it is missing or is not a directory."""
    path = Path(run_dir)
    if not path.exists():
        raise ContractiveError(f"run directory {str(run_dir)!r} does not exist")
    if not path.is_dir():
        raise ContractiveError(f"{str(run_dir)!r} is a file, not a run directory")
    return path


def config_from(source: Path, config_class, fields: Any):
    """``config_class.from_dict(fields)``, with an invalid value blamed on the file it came from."""
    try:
        return config_class.from_dict(fields)
    except ContractiveError as exc:
        raise ContractiveError(f"{source}: {exc}") from None


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu", allow_unfinished_stack: bool = False) -> Run:
    """Load a run directory written by :func:`contractive.training.fit` / ``contractive train``.

    A stacked run that was interrupted has untrained layers above the one it stopped in, and stacks cannot
    be resumed: such a run is refused unless ``allow_unfinished_stack`` (``contractive info`` shows it).
    """
    path = require_run_dir(run_dir)
    config = read_json(path / CONFIG)
    if not isinstance(config, dict) or "model" not in config:
        raise ContractiveError(f"{path / CONFIG} has no 'model' section")
    model = build_model(config_from(path / CONFIG, ModelConfig, config["model"]))
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ContractiveError(f"{weights} is missing: the run has no completed epoch yet")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ContractiveError(f"cannot read {weights}: {exc}") from None
    load_state_strict(model, tensors, str(weights))
    model.to(device).eval()
    metrics = read_json(path / METRICS) if (path / METRICS).is_file() else {}
    history = []
    if (path / HISTORY).is_file():
        with open(path / HISTORY, encoding="utf-8") as fh:
            history = [json.loads(line) for line in fh if line.strip()]
    layers = config["model"].get("layers") or []
    if layers and metrics.get("interrupted") and not allow_unfinished_stack:
        stopped_in = history[-1]["layer"] + 1 if history else 1
        raise ContractiveError(
            f"{path} is a stacked run interrupted while training layer {stopped_in} of {len(layers)}: the layers "
            "above it were never trained and stacks cannot be resumed; train it again (with --force)"
        )
    return Run(path, model, config, metrics, history)


def save_training_checkpoint(run_dir: str | Path, epoch: int, model: torch.nn.Module, state: dict[str, Any]) -> Path:
    """Write ``checkpoints/epoch-NNNNNN/`` atomically and delete older epochs; return its path.

    ``state`` holds what besides the weights is needed to continue bit-identically (optimizer state
    dict, RNG states, history, ...): tensors, numbers, strings and containers of them only.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(exist_ok=True)
    final = root / f"epoch-{epoch:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "epoch": str(epoch)})
        torch.save({**state, "epoch": epoch}, tmp / TRAINING_STATE)
        if final.exists():  # the same epoch written by an earlier, interrupted attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.iterdir():
        if old != final and (_EPOCH_DIR.fullmatch(old.name) or old.name.endswith(".tmp")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_training_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/epoch-*`` directory of a run, or None."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _EPOCH_DIR.fullmatch(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def load_training_checkpoint(run_dir: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load the newest checkpoint's weights into ``model`` and return its training state (no pickle).

    Raises :class:`ContractiveError` when there is none or when its two files disagree on the epoch.
    """
    directory = latest_training_checkpoint(run_dir)
    if directory is None:
        raise ContractiveError(f"{run_dir} has no resumable checkpoint ({CHECKPOINTS}/epoch-*): nothing to resume")
    weights, state_file = directory / WEIGHTS, directory / TRAINING_STATE
    try:
        tensors = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as fh:
            weights_epoch = int((fh.metadata() or {}).get("epoch", -1))
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ContractiveError(f"cannot read checkpoint {directory}: {exc}") from None
    if not isinstance(state, dict) or state.get("epoch") != weights_epoch:
        raise ContractiveError(
            f"checkpoint {directory} is inconsistent: weights are from epoch {weights_epoch}, "
            f"training state from epoch {state.get('epoch') if isinstance(state, dict) else '?'}"
        )
    load_state_strict(model, tensors, str(weights))
    return state
