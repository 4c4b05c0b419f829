"""The run directory: weights, config and metrics, written atomically and read strictly.

Layout::

    RUN_DIR/
      model.safetensors   weights (no pickle)
      config.json         {"contractive_version", "model", "training", "data"}
      metrics.jsonl       one JSON object per completed epoch
      metrics.json        final numbers
      *.png               figures

Every file is written to a temporary name in the same directory and then renamed over the old one
(``os.replace`` is atomic on POSIX), so an interrupted write never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import ContractiveError
from .models import Autoencoder, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HISTORY = "metrics.jsonl"
METRICS = "metrics.json"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` only if it succeeded."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
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


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu") -> Run:
    """Load a run directory written by :func:`contractive.training.fit` / ``contractive train``."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ContractiveError(f"run directory {str(run_dir)!r} does not exist")
    config = read_json(path / CONFIG)
    if not isinstance(config, dict) or "model" not in config:
        raise ContractiveError(f"{path / CONFIG} has no 'model' section")
    model = build_model(ModelConfig.from_dict(config["model"]))
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
    return Run(path, model, config, metrics, history)
