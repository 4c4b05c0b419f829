"""The protocol of Rifai et al. (ICML 2011, Table 1) as a reproducible benchmark.

Every model sees the same data, the same hidden size and the same training budget:

- pretrained autoencoders (one sigmoid layer, tied weights, BCE reconstruction, Adam): AE, AE + weight
  decay, DAE with Gaussian noise (DAE-g), DAE with masking noise (DAE-b), CAE and CAE+H;
- references: scikit-learn's ``BernoulliRBM`` (same number of hidden units), ``PCA`` (the same number of
  components where possible, capped at the number of features) and the raw pixels;
- a randomly initialised encoder of the same shape (the baseline for fine-tuning).

For each model it reports the linear-probe test error (logistic regression on standardised frozen
features, with its convergence), the fine-tuned test error (encoder + softmax head trained end to end
with the same budget), the mean ‖J_f(x)‖_F on test data, the saturation % (units within ε of 0 or 1),
the reconstruction error and the training time. The hyperparameters (weight decay, σ, masking
probability, λ, γ) are chosen by a small grid on a validation split, with a shorter budget on a subset
of the training data; the test split is never used for any choice.

Data splits are fixed: an IDX directory with ``train-*`` and ``t10k-*`` files (Fashion-MNIST) keeps the
test files as the test set and holds a seeded random part of the training files out for validation;
any other dataset (the 10k MNIST test set alone, digits, arrays) is split once by a permutation with
seed 0 into 70% train, 10% validation and 20% test.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__, checkpoint, plots
from .config import ModelConfig, TrainConfig
from .data import Dataset, load_dataset
from .diagnostics import activation_bounds, average_spectrum, saturation, singular_values
from .errors import ContractiveError
from .models import Autoencoder
from .penalty import encode_with_penalty
from .runs import encode as encode_codes
from .stacked import SCHEDULES, finetune, random_like
from .training import as_tensor, evaluate, fit, seed_everything

PRETRAINED = ("AE", "AE+wd", "DAE-g", "DAE-b", "CAE", "CAE+H")
REFERENCES = ("RBM", "PCA", "raw", "random init")
SATURATION_EPS = 0.05
# Rifai et al. (ICML 2011), Table 1: MNIST test error (%) after fine-tuning, 1000 hidden units.
PAPER_ERRORS = {"CAE": 1.14, "DAE-g": 1.18, "RBM": 1.30, "DAE-b": 1.57, "AE+wd": 1.68, "AE": 1.78}
PAPER_ORDER = tuple(sorted(PAPER_ERRORS, key=PAPER_ERRORS.get))
# Fractions of a single-pool dataset (no separate test files): train / validation / test.
POOL_FRACTIONS = (0.7, 0.1, 0.2)
POOL_SEED = 0


@dataclass
class BenchmarkConfig:
    """Budget, grids and sizes of one benchmark run (all models share them).

    Parameters
    ----------
    hidden : int
        Hidden units of every model (PCA: components, capped at the number of features).
    epochs : int
        Pretraining epochs of each autoencoder, and training epochs (``n_iter``) of the RBM.
    finetune_epochs : int
        Epochs of supervised fine-tuning (encoder + softmax head), identical for every encoder.
    finetune_lr, finetune_schedule : float, {"constant", "cosine"}
        Its learning rate and schedule (cosine: decayed to 0 over all steps).
    grid_epochs, grid_train_size : int
        Budget of each validation-grid run: epochs, and the number of training samples it uses.
    *_grid : tuple of float
        Candidate values; CAE+H uses the λ chosen for the CAE and searches γ.
    probe_max_iter, grid_probe_max_iter : int
        ``max_iter`` of the final and of the grid's logistic regressions; a probe that hits it is reported
        as not converged (the grid records it per candidate).
    probe_train_size : int or None
        Samples the final linear probes train on (None: the whole training split).
    train_size, val_size, test_size : int or None
        Keep only the first N of each fixed split (None: all).
    spectrum_points : int
        Test points at which the Jacobian spectra are averaged.
    """

    hidden: int = 1000
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    finetune_epochs: int = 5
    finetune_lr: float = 3e-3
    finetune_schedule: str = "cosine"
    grid_epochs: int = 2
    grid_train_size: int = 5000
    weight_decay_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
    sigma_grid: tuple[float, ...] = (0.1, 0.3, 0.5)
    mask_grid: tuple[float, ...] = (0.1, 0.25, 0.5)
    lam_grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    gamma_grid: tuple[float, ...] = (0.1, 1.0, 10.0)
    caeh_sigma: float = 0.1
    caeh_corruptions: int = 1
    rbm_lr: float = 0.05
    probe_max_iter: int = 2000
    grid_probe_max_iter: int = 300
    probe_train_size: int | None = None
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    spectrum_points: int = 50
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        for name in ("hidden", "epochs", "batch_size", "finetune_epochs", "grid_epochs", "grid_train_size",
                     "caeh_corruptions", "probe_max_iter", "grid_probe_max_iter", "spectrum_points"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ContractiveError(f"{name.replace('_', '-')} must be an integer ≥ 1, got {value}")
        for name in ("train_size", "val_size", "test_size", "probe_train_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise ContractiveError(f"{name.replace('_', '-')} must be ≥ 2, got {value}")
        for name in ("lr", "finetune_lr", "rbm_lr", "caeh_sigma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ContractiveError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay_grid", "sigma_grid", "mask_grid", "lam_grid", "gamma_grid"):
            values = tuple(float(v) for v in getattr(self, name))
            if not values or not all(math.isfinite(v) and v > 0 for v in values):
                raise ContractiveError(f"{name.replace('_', '-')} must be a non-empty list of numbers > 0")
            setattr(self, name, values)
        if self.finetune_schedule not in SCHEDULES:
            raise ContractiveError(
                f"unknown finetune-schedule {self.finetune_schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if not all(p < 1 for p in self.mask_grid):
            raise ContractiveError("mask-grid probabilities must be < 1")

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> BenchmarkConfig:
        """A small budget that finishes in minutes on 2 CPU cores: a subset, 100 units, short runs, 2-point grids."""
        values: dict[str, Any] = dict(
            hidden=100, epochs=3, finetune_epochs=3, grid_epochs=2, grid_train_size=1000,
            weight_decay_grid=(1e-4, 1e-3), sigma_grid=(0.1, 0.3), mask_grid=(0.1, 0.25), lam_grid=(0.01, 0.1),
            gamma_grid=(0.1, 1.0), probe_max_iter=1000, train_size=3000, val_size=500, test_size=1000,
            spectrum_points=20, quick=True,
        )  # fmt: skip
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Splits:
    """Fixed train / validation / test parts of a labelled dataset, and how they were made."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)


def _has_train_and_test_files(spec: str) -> bool:
    path = Path(spec)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return any(f"{prefix}-images-idx3-ubyte{gz}" in names for prefix in ("train",) for gz in ("", ".gz")) and any(
        f"t10k-images-idx3-ubyte{gz}" in names for gz in ("", ".gz")
    )


def _require_labels(data: Dataset, spec: str) -> np.ndarray:
    if data.y is None:
        raise ContractiveError(f"{spec}: the benchmark needs labels, and this dataset has none")
    return data.y


def _head(n: int | None, *arrays: np.ndarray) -> list[np.ndarray]:
    return [a if n is None else a[:n] for a in arrays]


def make_splits(spec: str, config: BenchmarkConfig) -> Splits:
    """Load ``spec`` and cut it into fixed train / validation / test parts (see the module docstring)."""
    if _has_train_and_test_files(spec):
        train = load_dataset(spec, split="train")
        test = load_dataset(spec, split="test")
        y_pool, y_test = _require_labels(train, spec), _require_labels(test, spec)
        n = train.X.shape[0]
        order = np.random.default_rng(POOL_SEED).permutation(n)
        n_val = max(1, n // 6)  # 60k → 50k train / 10k validation
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        X_train, y_train, X_val, y_val = train.X[train_idx], y_pool[train_idx], train.X[val_idx], y_pool[val_idx]
        X_test = test.X
        how = (
            f"the {n} training images split by a permutation (seed {POOL_SEED}) into {train_idx.size} train / "
            f"{val_idx.size} validation; the {X_test.shape[0]} t10k images are the test set"
        )
        name = train.description.get("name", spec)
    else:
        data = load_dataset(spec)
        y = _require_labels(data, spec)
        n = data.X.shape[0]
        order = np.random.default_rng(POOL_SEED).permutation(n)
        n_train, n_val = int(POOL_FRACTIONS[0] * n), int(POOL_FRACTIONS[1] * n)
        parts = np.split(order, [n_train, n_train + n_val])
        (X_train, y_train), (X_val, y_val), (X_test, y_test) = [(data.X[np.sort(p)], y[np.sort(p)]) for p in parts]
        how = (
            f"one pool of {n} labelled samples split once by a permutation (seed {POOL_SEED}) into "
            f"{n_train} train / {n_val} validation / {n - n_train - n_val} test (70/10/20%)"
        )
        name = data.description.get("name", spec)
    X_train, y_train = _head(config.train_size, X_train, y_train)
    X_val, y_val = _head(config.val_size, X_val, y_val)
    X_test, y_test = _head(config.test_size, X_test, y_test)
    if min(len(X_train), len(X_val), len(X_test)) < 2:
        raise ContractiveError(f"{spec}: too few samples for train / validation / test splits")
    limited = [f"{k} {v}" for k, v in (("train", config.train_size), ("validation", config.val_size),
                                        ("test", config.test_size)) if v is not None]  # fmt: skip
    if limited:
        how += "; then only the first samples of each part are kept (" + ", ".join(limited) + ")"
    description = {
        "spec": spec,
        "name": name,
        "how": how,
        "n_train": int(len(X_train)),
        "n_val": int(len(X_val)),
        "n_test": int(len(X_test)),
        "n_features": int(X_train.shape[1]),
    }
    if np.unique(y_train).size < 2:  # the probe and the softmax head need two classes to tell apart
        raise ContractiveError(f"{spec}: the benchmark needs at least 2 classes in its training split, found "
                               f"{np.unique(y_train).size}")  # fmt: skip
    return Splits(X_train, y_train, X_val, y_val, X_test, y_test, description)


# --- the models ---------------------------------------------------------------------------------------------


def model_setup(
    name: str, params: dict[str, float], config: BenchmarkConfig, n_features: int, *, epochs: int
) -> tuple[ModelConfig, TrainConfig]:
    """Model and training configs of one pretrained autoencoder with hyperparameters ``params``."""
    common = dict(n_features=n_features, hidden=config.hidden, activation="sigmoid", tied=True, reconstruction="bce")
    weight_decay = 0.0
    if name == "AE":
        model = ModelConfig(model="ae", **common)
    elif name == "AE+wd":
        model, weight_decay = ModelConfig(model="ae", **common), params["weight_decay"]
    elif name == "DAE-g":
        model = ModelConfig(model="dae", noise="gaussian", sigma=params["sigma"], **common)
    elif name == "DAE-b":
        model = ModelConfig(model="dae", noise="masking", mask_prob=params["mask_prob"], **common)
    elif name == "CAE":
        model = ModelConfig(model="cae", lam=params["lam"], **common)
    elif name == "CAE+H":
        model = ModelConfig(
            model="caeh", lam=params["lam"], gamma=params["gamma"], sigma=config.caeh_sigma,
            n_corruptions=config.caeh_corruptions, **common,
        )  # fmt: skip
    else:
        raise ContractiveError(f"unknown benchmark model {name!r}; choose one of {', '.join(PRETRAINED)}")
    train = TrainConfig(
        epochs=epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=weight_decay, seed=config.seed,
        val_fraction=0.0,
    )  # fmt: skip
    return model, train


def train_autoencoder(name: str, params: dict[str, float], config: BenchmarkConfig, X: np.ndarray, *, epochs: int):
    """Train one pretrained model from the shared seeded initialisation; return (model, wall s, s per epoch)."""
    model_config, train_config = model_setup(name, params, config, X.shape[1], epochs=epochs)
    seed_everything(config.seed)  # every model starts from the same Glorot-uniform weights
    model = Autoencoder(model_config)
    result = fit(model, X, None, train_config, progress=False)
    per_epoch = float(np.mean([row["epoch_time_s"] for row in result.history]))
    return model, result.train_time_s, per_epoch


def grids(config: BenchmarkConfig) -> dict[str, list[dict[str, float]]]:
    """Candidate hyperparameters per model (CAE+H's λ is filled in from the CAE's choice)."""
    return {
        "AE": [{}],
        "AE+wd": [{"weight_decay": v} for v in config.weight_decay_grid],
        "DAE-g": [{"sigma": v} for v in config.sigma_grid],
        "DAE-b": [{"mask_prob": v} for v in config.mask_grid],
        "CAE": [{"lam": v} for v in config.lam_grid],
        "CAE+H": [{"gamma": v} for v in config.gamma_grid],
    }


def linear_probe(
    F_train: np.ndarray, y_train: np.ndarray, F_test: np.ndarray, y_test: np.ndarray, *, max_iter: int, seed: int
) -> dict[str, Any]:
    """Logistic regression (L-BFGS, C = 1) on standardised features; test error and convergence.

    ``converged`` is False when L-BFGS stopped at ``max_iter`` rather than at its tolerance.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    scaler = StandardScaler().fit(F_train)
    classifier = LogisticRegression(max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        classifier.fit(scaler.transform(F_train), y_train)
    n_iter = int(np.max(classifier.n_iter_))
    converged = n_iter < max_iter and not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    error = float(np.mean(classifier.predict(scaler.transform(F_test)) != y_test))
    return {"error": error, "n_iter": n_iter, "converged": converged, "time_s": time.perf_counter() - started}


def select_hyperparameters(
    config: BenchmarkConfig, splits: Splits, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Grid search on validation: each candidate trains on a training subset with the grid budget, and the
    validation linear-probe error picks the winner (ties: the first listed). Test data are not touched."""
    X_sub, y_sub = splits.X_train[: config.grid_train_size], splits.y_train[: config.grid_train_size]
    selection: dict[str, dict[str, Any]] = {}
    for name, candidates in grids(config).items():
        if name == "AE":
            selection[name] = {"chosen": {}, "grid": []}
            continue
        if name == "CAE+H":
            candidates = [{"lam": selection["CAE"]["chosen"]["lam"], **c} for c in candidates]
        tried = []
        for params in candidates:
            model, _, _ = train_autoencoder(name, params, config, X_sub, epochs=config.grid_epochs)
            probe = linear_probe(
                encode_codes(model, X_sub), y_sub, encode_codes(model, splits.X_val), splits.y_val,
                max_iter=config.grid_probe_max_iter, seed=config.seed,
            )  # fmt: skip
            tried.append({"params": params, "val_error": probe["error"], "probe_converged": probe["converged"]})
            log(f"  grid {name:<6} {_format_params(params):<28} validation probe error {100 * probe['error']:.2f}%")
        best = min(tried, key=lambda t: t["val_error"])
        selection[name] = {"chosen": best["params"], "grid": tried}
    return selection


def _format_params(params: dict[str, float]) -> str:
    names = {"weight_decay": "wd", "sigma": "σ", "mask_prob": "p", "lam": "λ", "gamma": "γ"}
    return ", ".join(f"{names.get(k, k)}={v:g}" for k, v in params.items()) or "—"


# --- measurements on the test split -----------------------------------------------------------------------


def sigmoid_encoder(weight: np.ndarray, bias: np.ndarray, activation: nn.Module) -> nn.Sequential:
    """An ``nn.Sequential(Linear, activation)`` encoder with the given (H, D) weight and (H,) bias."""
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(np.asarray(weight, dtype=np.float32)))
        linear.bias.copy_(torch.as_tensor(np.asarray(bias, dtype=np.float32)))
    return nn.Sequential(linear, activation)


@torch.no_grad()
def encoder_measures(encoder: nn.Module, X: np.ndarray, n_spectrum: int) -> dict[str, Any]:
    """Codes, mean ‖J_f(x)‖_F, saturation % (where the activation is bounded) and average spectrum on ``X``."""
    norms, codes = [], []
    for start in range(0, X.shape[0], 2048):
        h, penalty = encode_with_penalty(encoder, as_tensor(X[start : start + 2048]))
        norms.append(penalty.clamp_min(0).sqrt().numpy())
        codes.append(h.numpy())
    H = np.concatenate(codes)
    try:
        sat = 100.0 * float(saturation(H, activation_bounds(encoder), SATURATION_EPS).mean())
    except ContractiveError:
        sat = None  # an unbounded (linear) code has no saturation
    spectrum = average_spectrum(singular_values(encoder, X[:n_spectrum]))
    return {"codes": H, "jacobian_norm": float(np.concatenate(norms).mean()), "saturation": sat, "spectrum": spectrum}


def _row(name: str, **values: Any) -> dict[str, Any]:
    row = {
        "model": name, "params": {}, "probe_error": None, "probe_converged": None, "probe_iter": None,
        "finetune_error": None, "jacobian_norm": None, "saturation_percent": None, "reconstruction_error": None,
        "train_time_s": None, "time_per_epoch_s": None,
    }  # fmt: skip
    row.update(values)
    return row


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "contractive": __version__,
    }


def run_benchmark(
    spec: str,
    config: BenchmarkConfig,
    out: str | Path,
    *,
    command: str = "",
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the whole protocol on ``spec`` and write ``results.json``, ``results.md`` and two figures to ``out``.

    With ``resume``, ``out/results.json`` from an earlier run of the same configuration on the same data
    (one that was stopped) supplies the hyperparameter selection and every finished row; only the missing
    models are trained. Every model starts from the same seed, so a resumed run's rows are the rows an
    uninterrupted run would have written (same machine and thread count).

    Returns the JSON-ready results (``rows`` holds one dict per model, see :func:`format_table`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    previous = load_resumable(out, config) if resume else None
    splits = make_splits(spec, config)
    d = splits.description
    log(f"data: {d['how']}")
    if previous is not None:
        if previous["data"] != d:
            raise ContractiveError(
                f"cannot resume: {out / 'results.json'} was made on other data ({previous['data']['how']})"
            )
        done = [row["model"] for row in previous["rows"]]
        log(
            f"resuming {out / 'results.json'}: keeping its selection and {len(done)} finished rows ({', '.join(done) or 'none'})"
        )
        selection = previous["selection"]
        command = previous["command"] or command
    else:
        log(
            f"selecting hyperparameters on validation (grid: {config.grid_epochs} epoch(s) on {min(config.grid_train_size, d['n_train'])} samples)"
        )
        selection = select_hyperparameters(config, splits, log)

    probe_n = config.probe_train_size
    X_probe, y_probe = _head(probe_n, splits.X_train, splits.y_train)
    finetune_config = TrainConfig(
        epochs=config.finetune_epochs, batch_size=config.batch_size, lr=config.finetune_lr, seed=config.seed,
        val_fraction=0.0,
    )  # fmt: skip

    def probe(F_probe: np.ndarray, F_test: np.ndarray) -> dict[str, Any]:
        result = linear_probe(F_probe, y_probe, F_test, splits.y_test, max_iter=config.probe_max_iter, seed=config.seed)
        return {"probe_error": result["error"], "probe_converged": result["converged"], "probe_iter": result["n_iter"]}

    def tune(encoder: nn.Module) -> float:
        result = finetune(copy.deepcopy(encoder), splits.X_train, splits.y_train, splits.X_test, splits.y_test,
                          finetune_config, schedule=config.finetune_schedule)  # fmt: skip
        return result["test_error"]

    rows, spectra = [], {}
    finished = {row["model"]: row for row in previous["rows"]} if previous else {}
    earlier_spectra = {k: np.asarray(v) for k, v in previous["spectra"].items()} if previous else {}
    earlier_time = previous["total_time_s"] if previous else 0.0
    resumed = [*previous.get("resumed", []), sorted(finished)] if previous else []
    # The kept rows' timings were measured on the earlier run's machine: keep its description next to ours.
    earlier_machines = [*previous.get("earlier_machines", []), previous["machine"]] if previous else []

    def reuse(name: str) -> bool:
        """Take ``name``'s row (and spectrum) from the run being resumed, if it finished there."""
        if name not in finished:
            return False
        rows.append(finished[name])
        if name in earlier_spectra:
            spectra[name] = earlier_spectra[name]
        log(_progress_line(finished[name]) + "  (from the resumed run)")
        return True

    def save(row: dict[str, Any] | None = None, *, complete: bool = False) -> dict[str, Any]:
        """Write results.json, results.md and the figures after every model, so a stopped run keeps what finished."""
        if row is not None:
            rows.append(row)
            log(_progress_line(row))
        results = {
            "command": command, "contractive_version": __version__, "machine": machine_description(),
            "config": config.to_dict(), "data": d, "selection": selection, "rows": rows,
            "spectra": {k: np.asarray(v).tolist() for k, v in spectra.items()},
            "total_time_s": earlier_time + time.perf_counter() - started, "complete": complete,
        }  # fmt: skip
        if resumed:
            results["resumed"], results["earlier_machines"] = resumed, earlier_machines
        checkpoint.write_json(out / "results.json", results)
        error_vs_jacobian_figure(rows, out / "error_vs_jacobian.png")
        if spectra:
            plots.spectrum(spectra, out / "spectra.png", fraction=0.1)
        checkpoint.atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(format_report(results), "utf-8"))
        return results

    for name in PRETRAINED:
        if reuse(name):
            continue
        params = selection[name]["chosen"]
        model, wall, per_epoch = train_autoencoder(name, params, config, splits.X_train, epochs=config.epochs)
        measures = encoder_measures(model.encoder, splits.X_test, config.spectrum_points)
        spectra[name] = measures["spectrum"]
        save(_row(
            name, params=params, **probe(encode_codes(model, X_probe), measures["codes"]),
            finetune_error=tune(model.encoder), jacobian_norm=measures["jacobian_norm"],
            saturation_percent=measures["saturation"],
            reconstruction_error=evaluate(model, as_tensor(splits.X_test))["reconstruction_error"],
            train_time_s=wall, time_per_epoch_s=per_epoch,
        ))  # fmt: skip
    _references(config, splits, X_probe, probe, tune, log, save, spectra, reuse)
    results = save(complete=True)
    log(f"wrote results.md, results.json, error_vs_jacobian.png and spectra.png to {out}")
    return results


def _references(config, splits, X_probe, probe, tune, log, save, spectra, reuse):
    from sklearn.decomposition import PCA
    from sklearn.neural_network import BernoulliRBM

    X_train, X_test = splits.X_train, splits.X_test

    # BernoulliRBM: same hidden size; PCD training for `epochs` passes; fine-tuned as a sigmoid encoder.
    if reuse("RBM"):
        pass
    elif X_train.min() >= 0 and X_train.max() <= 1:
        rbm = BernoulliRBM(
            n_components=config.hidden, learning_rate=config.rbm_lr, batch_size=config.batch_size,
            n_iter=config.epochs, random_state=config.seed,
        )  # fmt: skip
        t0 = time.perf_counter()
        rbm.fit(X_train)
        wall = time.perf_counter() - t0
        encoder = sigmoid_encoder(rbm.components_, rbm.intercept_hidden_, nn.Sigmoid())
        measures = encoder_measures(encoder, X_test, config.spectrum_points)
        spectra["RBM"] = measures["spectrum"]
        # Mean-field reconstruction: E[v | h = E[h | x]].
        X_hat = 1 / (1 + np.exp(-(measures["codes"] @ rbm.components_ + rbm.intercept_visible_)))
        save(_row(
            "RBM", params={"learning_rate": config.rbm_lr}, **probe(rbm.transform(X_probe), measures["codes"]),
            finetune_error=tune(encoder), jacobian_norm=measures["jacobian_norm"],
            saturation_percent=measures["saturation"],
            reconstruction_error=float(((X_hat - X_test) ** 2).sum(axis=1).mean()),
            train_time_s=wall, time_per_epoch_s=wall / config.epochs,
        ))  # fmt: skip
    else:
        log("  RBM skipped: BernoulliRBM needs data in [0, 1]")

    # PCA with as many components as hidden units where possible.
    k = min(config.hidden, X_train.shape[1], X_train.shape[0])
    if not reuse(f"PCA-{k}"):
        t0 = time.perf_counter()
        pca = PCA(n_components=k, random_state=config.seed).fit(X_train)
        wall = time.perf_counter() - t0
        encoder = sigmoid_encoder(pca.components_, -pca.components_ @ pca.mean_, nn.Identity())
        measures = encoder_measures(encoder, X_test, config.spectrum_points)
        X_hat = pca.inverse_transform(measures["codes"])
        save(_row(
            f"PCA-{k}", params={"n_components": k}, **probe(pca.transform(X_probe), measures["codes"]),
            jacobian_norm=measures["jacobian_norm"],
            reconstruction_error=float(((X_hat - X_test) ** 2).sum(axis=1).mean()), train_time_s=wall,
        ))  # fmt: skip

    if not reuse("raw"):
        raw_norm = math.sqrt(X_train.shape[1])
        save(_row("raw", **probe(X_probe, X_test), jacobian_norm=raw_norm, reconstruction_error=0.0))

    # The same encoder shape from a random start: its frozen features, and fine-tuning without pretraining.
    if reuse("random init"):
        return
    seed_everything(config.seed)
    template = Autoencoder(model_setup("AE", {}, config, X_train.shape[1], epochs=1)[0]).encoder
    encoder = random_like(template, seed=config.seed)
    measures = encoder_measures(encoder, X_test, config.spectrum_points)
    save(_row(
        "random init", **probe(encode_codes_module(encoder, X_probe), measures["codes"]),
        finetune_error=tune(encoder), jacobian_norm=measures["jacobian_norm"],
        saturation_percent=measures["saturation"],
    ))  # fmt: skip


@torch.no_grad()
def encode_codes_module(encoder: nn.Module, X: np.ndarray) -> np.ndarray:
    return np.concatenate([encoder(as_tensor(X[i : i + 4096])).numpy() for i in range(0, X.shape[0], 4096)])


def _progress_line(row: dict[str, Any]) -> str:
    cells = format_row(row)
    return "  " + "  ".join(f"{h} {c}" for h, c in zip(TABLE_HEADER, cells, strict=True))


# --- output -------------------------------------------------------------------------------------------------

TABLE_HEADER = (
    "model", "chosen on validation", "linear probe test error %", "fine-tuned test error %", "mean ‖J_f‖_F",
    "SAT %", "recon. error", "train s", "s / epoch",
)  # fmt: skip


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_row(row: dict[str, Any]) -> list[str]:
    probe = _num(None if row["probe_error"] is None else 100 * row["probe_error"], ".2f")
    if row["probe_converged"] is False:
        probe += " (not converged)"
    return [
        row["model"],
        _format_params({k: v for k, v in row["params"].items() if k not in ("n_components", "learning_rate")}),
        probe,
        _num(None if row["finetune_error"] is None else 100 * row["finetune_error"], ".2f"),
        _num(row["jacobian_norm"], ".3g"),
        _num(row["saturation_percent"], ".1f"),
        _num(row["reconstruction_error"], ".2f"),
        _num(row["train_time_s"], ".1f"),
        _num(row["time_per_epoch_s"], ".2f"),
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, one row per model."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(format_row(row)) + " |" for row in rows]
    return "\n".join(lines)


def _machine_line(m: dict[str, Any]) -> str:
    return f"{m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads), {m['platform']}"


def format_report(results: dict[str, Any]) -> str:
    """``results.md``: command, versions, machine, protocol, the selection grids and the table."""
    c, d, m = results["config"], results["data"], results["machine"]
    lines = [
        f"# Benchmark: {d['name']}",
        "",
        f"Command: `{results['command']}`" if results["command"] else "Command: (called from Python)",
        "",
        f"contractive {results['contractive_version']}, torch {m['torch']}, Python {m['python']}; "
        f"{_machine_line(m)}. Total wall time {results['total_time_s'] / 60:.1f} min.",
        "",
    ]
    earlier_machines = results.get("earlier_machines", [])
    for i, kept in enumerate(results.get("resumed", []), start=1):
        where = f" Run {i} ran on {_machine_line(earlier_machines[i - 1])}." if i <= len(earlier_machines) else ""
        lines += [f"Resumed (run {i + 1}) after a stop, keeping the selection and the finished rows: "
                  f"{', '.join(kept) or 'none'}; the other rows come from the resumed run.{where}", ""]  # fmt: skip
    if not results.get("complete", True):
        lines += ["**Partial results**: the run has not finished (or was stopped); only the rows below exist.", ""]
    if c["quick"]:
        lines += [
            "**Quick mode**: a subset of the data, a small hidden layer, few epochs and 2-point grids. "
            "These numbers check that the protocol runs; they are not the paper-scale comparison.",
            "",
        ]
    lines += [
        f"Data: {d['how']}. Train {d['n_train']}, validation {d['n_val']}, test {d['n_test']} samples, "
        f"{d['n_features']} features.",
        "",
        f"Protocol: {c['hidden']} sigmoid hidden units for every model (PCA: capped at the number of features), "
        f"tied weights, BCE reconstruction, Adam (lr {c['lr']:g}, batch {c['batch_size']}) for {c['epochs']} epochs; "
        f"the RBM trains {c['epochs']} PCD epochs (lr {c['rbm_lr']:g}). Fine-tuning: encoder + softmax head, "
        f"{c['finetune_epochs']} epochs of Adam (lr {c['finetune_lr']:g}, {c.get('finetune_schedule', 'constant')} schedule) for every encoder. Linear probe: "
        f"logistic regression (L-BFGS, C = 1, max_iter {c['probe_max_iter']}) on standardised frozen features"
        + (f", trained on the first {c['probe_train_size']} training samples" if c["probe_train_size"] else "")
        + f". ‖J_f‖_F and SAT % (units within {SATURATION_EPS} of 0 or 1) on the test split; reconstruction "
        "error is the mean over test samples of ‖x − x̂‖² summed over features. CAE+H: "
        f"σ = {c['caeh_sigma']:g}, {c['caeh_corruptions']} corrupted copy per sample.",
        "",
        f"Hyperparameters chosen on the validation split by linear-probe error, each candidate trained "
        f"{c['grid_epochs']} epoch(s) on the first {min(c['grid_train_size'], d['n_train'])} training samples "
        f"(probe max_iter {c['grid_probe_max_iter']}):",
        "",
    ]
    for name, chosen in results["selection"].items():
        if not chosen["grid"]:
            continue
        tried = ", ".join(f"{_format_params(t['params'])}: {100 * t['val_error']:.2f}%" for t in chosen["grid"])
        lines.append(f"- {name}: chosen {_format_params(chosen['chosen'])} (validation error {tried})")
    grid = [t for chosen in results["selection"].values() for t in chosen["grid"]]
    stopped = sum(t.get("probe_converged") is False for t in grid)
    if stopped:
        # The choices then rest on probes cut short: worth knowing before reading much into close calls.
        lines += ["", f"{stopped} of {len(grid)} validation-grid probes reached max_iter "
                      f"({c['grid_probe_max_iter']}) without converging (--grid-probe-max-iter raises it)."]  # fmt: skip
    lines += ["", format_table(results["rows"]), ""]
    unconverged = [r["model"] for r in results["rows"] if r["probe_converged"] is False]
    if unconverged:
        lines += [f"Linear probes that reached max_iter without converging: {', '.join(unconverged)}.", ""]
    lines += compare_with_paper(results["rows"])
    return "\n".join(lines)


def compare_with_paper(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: which pairwise orderings of Rifai et al.'s Table 1 hold here, and by how much.

    For every pair (a, b) with a better than b in the paper, the pair reproduces when a's error here is
    lower than b's; the margin is b − a in percentage points (negative: reversed). Also the Spearman rank
    correlation between mean ‖J_f‖_F and error over the pretrained models and the RBM.
    """
    by_name = {r["model"]: r for r in rows}
    present = [m for m in PAPER_ORDER if m in by_name]
    lines = [
        "Paper ordering (Rifai et al. 2011, Table 1, MNIST fine-tuned test error): "
        + " < ".join(f"{m} {PAPER_ERRORS[m]:.2f}%" for m in PAPER_ORDER)
        + ".",
        "",
    ]
    for key, label in (("finetune_error", "fine-tuned"), ("probe_error", "linear probe")):
        held, pairs = 0, []
        for i, a in enumerate(present):
            for b in present[i + 1 :]:
                ea, eb = by_name[a][key], by_name[b][key]
                if ea is None or eb is None:
                    continue
                margin = 100 * (eb - ea)
                held += margin > 0
                verdict = "yes" if margin > 0 else ("tie" if margin == 0 else "no")
                pairs.append(f"{a} < {b}: {verdict} ({margin:+.2f} pt)")
        order_here = sorted((m for m in present if by_name[m][key] is not None), key=lambda m: by_name[m][key])
        lines += [
            f"- {label} error, ordering here: "
            + " < ".join(f"{m} {100 * by_name[m][key]:.2f}%" for m in order_here)
            + f". Pairs of the paper's ordering that hold: {held} of {len(pairs)}.",
            "  " + "; ".join(pairs) + ".",
        ]
        models = [m for m in present if by_name[m][key] is not None and by_name[m]["jacobian_norm"] is not None]
        if len(models) >= 3:
            norms, errors = [by_name[m]["jacobian_norm"] for m in models], [by_name[m][key] for m in models]
            # A rank correlation with a constant list is undefined (scipy warns and returns NaN): say so instead.
            rho = "undefined (equal for every model)" if len(set(norms)) < 2 or len(set(errors)) < 2 else (
                f"{_spearman(norms, errors):+.2f}")  # fmt: skip
            lines.append(f"  Spearman rank correlation of mean ‖J_f‖_F with {label} error over {len(models)} models: "
                         f"{rho}.")  # fmt: skip
    return [*lines, ""]


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr  # a scikit-learn dependency; handles ties by average ranks

    return float(spearmanr(a, b).statistic)


def rewrite_report(out: str | Path) -> Path:
    """Regenerate ``results.md`` in ``out`` from its ``results.json`` (e.g. after the report format changed)."""
    out = Path(out)
    results = load_results(out / "results.json")
    checkpoint.atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(format_report(results), "utf-8"))
    return out / "results.md"


def error_vs_jacobian_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """Test error (probe and fine-tuned) against mean ‖J_f‖_F, one labelled point per model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("probe_error", "finetune_error"), ("linear probe", "fine-tuned"), strict=True):
        points = [r for r in rows if r[key] is not None and r["jacobian_norm"] is not None and r["model"] != "raw"]
        for r in points:
            ax.scatter(r["jacobian_norm"], 100 * r[key])
            ax.annotate(r["model"], (r["jacobian_norm"], 100 * r[key]), textcoords="offset points", xytext=(4, 3))
        ax.set_xlabel("mean ‖J_f(x)‖_F on test data")
        ax.set_ylabel("test error %")
        ax.set_title(f"{title} test error vs encoder contraction")
        ax.set_xscale("log")
    return plots._save(fig, path)


def load_resumable(out: Path, config: BenchmarkConfig) -> dict[str, Any]:
    """The ``results.json`` in ``out`` if a run with ``config`` can continue it; else a clear error."""
    path = out / "results.json"
    if not path.is_file():
        raise ContractiveError(f"cannot resume: no results.json in {str(out)!r}; run without --resume")
    try:
        previous = load_results(path)
        keys = ("config", "data", "selection", "rows", "spectra", "total_time_s", "command")
        missing = [k for k in keys if k not in previous]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractiveError(f"cannot resume: {path} is not a readable results file ({exc})") from None
    if not isinstance(previous, dict) or missing:
        raise ContractiveError(f"cannot resume: {path} is not a benchmark results file (missing {', '.join(missing)})")
    # JSON turns tuples into lists; compare both configurations as JSON.
    wanted = json.loads(json.dumps(config.to_dict()))
    differs = sorted(k for k in wanted.keys() | previous["config"].keys() if wanted.get(k) != previous["config"].get(k))
    if differs:
        raise ContractiveError(
            f"cannot resume: {path} was made with other options ({', '.join(d.replace('_', '-') for d in differs)} "
            "differ); pass the same options, or start afresh with --force"
        )
    return previous


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` written by :func:`run_benchmark`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
