"""A scikit-learn transformer: ``CAE`` learns codes in the slot of ``PCA`` or ``BernoulliRBM``.

``CAE`` wraps :class:`~contractive.models.Autoencoder` and :func:`~contractive.training.fit`; it adds only
what scikit-learn expects of an estimator: parameters stored untouched in ``__init__``, input validation with
scikit-learn's own utilities, fitted attributes ending in ``_``, dtype preservation, ``set_output`` and
pickling. ``save`` / ``load`` use the run-directory format of the CLI (safetensors + JSON, no pickle), so a
``contractive train`` run loads as an estimator and an estimator's run works with ``contractive encode``.

Examples
--------
>>> from sklearn.datasets import load_digits
>>> from contractive.sklearn import CAE
>>> X = load_digits().data / 16.0
>>> cae = CAE(n_components=16, max_iter=2, random_state=0).fit(X)
>>> cae.transform(X).shape
(1797, 16)
"""

from __future__ import annotations

import math
import numbers
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_array, check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import __version__, checkpoint, plots
from .config import DEFAULT_LAM, ModelConfig, TrainConfig
from .errors import ContractiveError
from .models import Autoencoder
from .runs import prepare_run_dir
from .training import evaluate, fit, make_optimizer

FLOAT_DTYPES = (np.float64, np.float32)
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
# Rows per forward pass at transform time; the same as ``contractive encode`` so codes match bit for bit.
_BATCH_ROWS = 4096


class CAE(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Contractive autoencoder as a scikit-learn transformer: ``transform`` returns the codes h = φ(W x + b).

    Trained to minimise, per sample and averaged over each mini-batch,
    ``reconstruction(x, x̂) + lam · ‖J_f(x)‖²_F`` (see the README, "The loss convention and λ").

    Parameters
    ----------
    n_components : int, default=64
        Code size H (number of hidden units).
    lam : float, default=0.1
        Weight λ ≥ 0 of the contractive penalty; 0 gives a plain autoencoder.
    activation : {"sigmoid", "tanh", "softplus", "relu", "identity"}, default="sigmoid"
        Encoder nonlinearity φ.
    decoder : {"sigmoid", "linear"}, default="sigmoid"
        Decoder output nonlinearity. Use "linear" for data that are not scaled to [0, 1].
    tied : bool, default=True
        Decoder uses the encoder's weight transposed (Rifai et al. 2011).
    reconstruction : {"auto", "bce", "squared_error"}, default="auto"
        Per-sample reconstruction loss; "auto" picks BCE for data in [0, 1] with a sigmoid decoder,
        squared error otherwise (decided on the data of the first ``fit`` / ``partial_fit``).
    penalty_method : str, default="auto"
        How ‖J_f‖²_F is computed (see :func:`contractive.jacobian_frobenius_sq`).
    solver : {"adam", "sgd"}, default="adam"
        Optimiser.
    learning_rate_init : float, default=0.01
        Learning rate of the optimiser.
    batch_size : int, default=64
        Samples per gradient step.
    max_iter : int, default=50
        Epochs (passes over the data) per ``fit``; training always runs all of them.
    momentum : float, default=0.9
        Momentum for ``solver="sgd"``.
    weight_decay : float, default=0.0
        L2 weight decay of the optimiser.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation and shuffling. An int makes ``fit`` bit-reproducible on CPU.
    verbose : int, default=0
        If > 0, print one line per epoch.
    warm_start : bool, default=False
        If True, ``fit`` continues from the current weights (with a fresh optimiser) instead of
        re-initialising.
    device : {"cpu", "cuda", "auto"} or str, default="cpu"
        Where to train and encode; "auto" takes CUDA when available. Fitted attributes are NumPy arrays
        whatever the device.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features_in_)
        Encoder weight W (a copy: the model lives in ``autoencoder_``).
    intercept_hidden_ : ndarray of shape (n_components,)
        Encoder bias b.
    intercept_visible_ : ndarray of shape (n_features_in_,)
        Decoder bias c.
    decoder_components_ : ndarray of shape (n_components, n_features_in_)
        Decoder weight: x̂ = g(h @ decoder_components_ + c). Equal to ``components_`` when ``tied``.
    autoencoder_ : contractive.Autoencoder
        The fitted PyTorch module, in eval mode, on ``device``, in the dtype of the training data.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when ``X`` had string column names.
    loss_curve_ : list of float
        Mean training loss of every epoch, across ``fit`` and ``partial_fit`` calls.
    n_iter_ : int
        Number of epochs trained (``partial_fit`` counts one per call).

    Notes
    -----
    Model parameters (``n_components``, ``lam``, ``activation``, …) are read when the model is initialised,
    by ``fit`` (unless ``warm_start``) or the first ``partial_fit``; optimiser parameters are read when the
    optimiser is created.
    """

    def __init__(
        self,
        n_components=64,
        *,
        lam=DEFAULT_LAM,
        activation="sigmoid",
        decoder="sigmoid",
        tied=True,
        reconstruction="auto",
        penalty_method="auto",
        solver="adam",
        learning_rate_init=1e-2,
        batch_size=64,
        max_iter=50,
        momentum=0.9,
        weight_decay=0.0,
        random_state=None,
        verbose=0,
        warm_start=False,
        device="cpu",
    ):
        self.n_components = n_components
        self.lam = lam
        self.activation = activation
        self.decoder = decoder
        self.tied = tied
        self.reconstruction = reconstruction
        self.penalty_method = penalty_method
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.device = device

    # ------------------------------------------------------------------ training

    def fit(self, X, y=None):
        """Train on ``X`` for ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self
        """
        continuing = bool(self.warm_start) and hasattr(self, "autoencoder_")
        self._check_renamed_params()
        X = validate_data(self, X, dtype=FLOAT_DTYPES, reset=not continuing)
        self._train_config(_as_int(self.max_iter))  # reject bad training parameters before touching the model
        if continuing:
            self._check_data_range(X)
        else:
            self._initialize(X)
        self._optimizer = None  # every fit starts a fresh optimiser, as scikit-learn's MLPs do
        self._run_epochs(X, epochs=_as_int(self.max_iter))
        return self

    def partial_fit(self, X, y=None):
        """One epoch over ``X`` (in mini-batches of ``batch_size``), continuing the optimiser's state.

        ``fit`` with ``max_iter=k`` and ``k`` calls to ``partial_fit`` on the same data give the same weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self
        """
        first_call = not hasattr(self, "autoencoder_")
        self._check_renamed_params()
        X = validate_data(self, X, dtype=FLOAT_DTYPES, reset=first_call)
        self._train_config(1)  # reject bad training parameters before touching the model
        if first_call:
            self._initialize(X)
        else:
            self._check_data_range(X)
        self._run_epochs(X, epochs=1)
        return self

    def _check_renamed_params(self) -> None:
        """Check the parameters whose names differ from the configs' (hidden, epochs, lr, seed) here, so that
        an error names the parameter the user set; the configs check everything else."""
        for name in ("n_components", "max_iter"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ContractiveError(f"{name} must be an integer ≥ 1, got {value!r}")
        rate = self.learning_rate_init
        if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not (math.isfinite(rate) and rate > 0):
            raise ContractiveError(f"learning_rate_init must be a finite number > 0, got {rate!r}")
        try:
            check_random_state(self.random_state)
        except ValueError:
            raise ContractiveError(
                f"random_state must be None, an integer or a numpy RandomState, got {self.random_state!r}"
            ) from None

    def _initialize(self, X: np.ndarray) -> None:
        """Build a fresh model for ``X``'s width, dtype and range; reset the training state."""
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        config = ModelConfig(
            n_features=X.shape[1],
            hidden=_as_int(self.n_components),
            activation=self.activation,
            decoder=self.decoder,
            tied=bool(self.tied),
            lam=_as_float(self.lam),
            reconstruction=self.reconstruction,
            penalty_method=self.penalty_method,
        ).resolve_reconstruction(float(X.min()), float(X.max()))
        device = _resolve_device(self.device)
        # Initialise on the CPU generator of a forked RNG: the global torch seed is left alone, and the
        # initial weights are the same whichever device trains them.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Autoencoder(config)
        self.autoencoder_ = model.to(device=device, dtype=_TORCH_DTYPES[X.dtype]).eval()
        self._seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._optimizer = None
        self._history: list[dict[str, Any]] = []
        self.loss_curve_: list[float] = []
        self.n_iter_ = 0
        self._sync_fitted_attributes()

    def _train_config(self, epochs: int) -> TrainConfig:
        return TrainConfig(
            epochs=epochs,
            batch_size=_as_int(self.batch_size),
            lr=_as_float(self.learning_rate_init),
            optimizer=self.solver,
            momentum=_as_float(self.momentum),
            weight_decay=_as_float(self.weight_decay),
            seed=getattr(self, "_seed", 0),
            val_fraction=0.0,
            patience=0,
        )

    def _run_epochs(self, X: np.ndarray, epochs: int) -> None:
        config = self._train_config(epochs)
        if self._optimizer is None:
            self._optimizer = make_optimizer(self.autoencoder_, config)
        result = fit(
            self.autoencoder_,
            self._as_model_tensor(X),
            None,
            config,
            progress=False,
            on_epoch_end=self._record_epoch,
            device=self.autoencoder_.encoder[0].weight.device,
            optimizer=self._optimizer,
            generator=self._generator,
        )
        self.autoencoder_.eval()
        self._sync_fitted_attributes()
        if result.interrupted:
            warnings.warn(
                f"training interrupted by the user; keeping the weights after epoch {self.n_iter_}",
                RuntimeWarning,
                stacklevel=3,
            )

    def _record_epoch(self, row: dict[str, Any]) -> None:
        self.n_iter_ += 1
        row = {**row, "epoch": self.n_iter_}
        self._history.append(row)
        self.loss_curve_.append(row["train_loss"])
        if self.verbose:
            # A plain AE (lam = 0) does not compute the penalty during training: nothing to show.
            penalty = f"  penalty {row['train_penalty']:.6g}" if "train_penalty" in row else ""
            print(
                f"epoch {self.n_iter_:>4}  loss {row['train_loss']:.6g}  "
                f"reconstruction {row['train_reconstruction']:.6g}{penalty}  "
                f"({row['epoch_time_s']:.2f}s)",
                flush=True,
            )

    def _check_data_range(self, X: np.ndarray) -> None:
        # BCE was chosen for [0, 1] data; later data outside [0, 1] would make it meaningless.
        self.autoencoder_.config.resolve_reconstruction(float(X.min()), float(X.max()))

    def _sync_fitted_attributes(self) -> None:
        model = self.autoencoder_
        encoder = model.encoder[0]
        self.components_ = _to_numpy(encoder.weight)
        self.intercept_hidden_ = _to_numpy(encoder.bias)
        self.intercept_visible_ = _to_numpy(model.decoder.bias)
        self.decoder_components_ = self.components_ if model.config.tied else _to_numpy(model.decoder.weight).T

    # ------------------------------------------------------------------ using the model

    def transform(self, X):
        """Codes h = φ(W x + b).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples, n_components), dtype of ``X`` (float32 or float64; else float64)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=FLOAT_DTYPES, reset=False)
        return self._forward(self.autoencoder_.encode, X)

    def inverse_transform(self, X):
        """Reconstructions x̂ = g(h) of codes ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            Codes, e.g. from :meth:`transform`.

        Returns
        -------
        ndarray of shape (n_samples, n_features_in_)
        """
        check_is_fitted(self)
        H = check_array(X, dtype=FLOAT_DTYPES)
        if H.shape[1] != self.components_.shape[0]:
            raise ValueError(
                f"X has {H.shape[1]} features, but {type(self).__name__}.inverse_transform is expecting "
                f"{self.components_.shape[0]} codes (n_components) as input"
            )
        return self._forward(self.autoencoder_.decode, H)

    def score(self, X, y=None):
        """Negative mean reconstruction error, −mean ‖x − x̂‖² (summed over features): higher is better.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
        y : ignored

        Returns
        -------
        float
        """
        return -self._evaluate(X)["reconstruction_error"]

    def jacobian_norm(self, X):
        """Mean Frobenius norm of the encoder's Jacobian, mean ‖J_f(x)‖_F over the samples of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        float
        """
        return self._evaluate(X)["jacobian_norm"]

    def _evaluate(self, X) -> dict[str, float]:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=FLOAT_DTYPES, reset=False)
        return evaluate(self.autoencoder_, self._as_model_tensor(X), batch_size=_BATCH_ROWS)

    @torch.no_grad()
    def _forward(self, function, X: np.ndarray) -> np.ndarray:
        tensor = self._as_model_tensor(X)
        parts = [function(tensor[i : i + _BATCH_ROWS]).cpu().numpy() for i in range(0, X.shape[0], _BATCH_ROWS)]
        return np.concatenate(parts).astype(X.dtype, copy=False)

    def _as_model_tensor(self, X: np.ndarray) -> torch.Tensor:
        """``X`` as a tensor in the model's dtype and on its device, sharing memory where it can."""
        parameter = self.autoencoder_.encoder[0].weight
        # Read-only (memory-mapped) input is copied: torch cannot wrap non-writable arrays safely.
        X = np.require(X, requirements=("C_CONTIGUOUS", "WRITEABLE"))
        return torch.from_numpy(X).to(device=parameter.device, dtype=parameter.dtype)

    @property
    def _n_features_out(self) -> int:
        """Output width for ``get_feature_names_out`` (names ``cae0``, ``cae1``, …)."""
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ------------------------------------------------------------------ persistence

    def save(self, path, *, overwrite: bool = False, figures: bool = True) -> Path:
        """Write a run directory in the format of ``contractive train`` (safetensors + JSON, no pickle).

        ``contractive encode PATH`` and ``contractive info PATH`` work on it; :meth:`load` reads it back.

        Parameters
        ----------
        path : str or Path
            Run directory; it must not exist or be empty unless ``overwrite``.
        overwrite : bool, default=False
        figures : bool, default=True
            Also write ``learning_curves.png``.

        Returns
        -------
        Path
        """
        check_is_fitted(self)
        run_dir = prepare_run_dir(path, overwrite=overwrite)
        model_config = self.autoencoder_.config
        names = getattr(self, "feature_names_in_", None)
        config = {
            "contractive_version": __version__,
            "model": model_config.to_dict(),
            "training": self._train_config(max(_as_int(self.max_iter), 1)).to_dict(),
            "data": {
                "name": "array",
                "source": f"{type(self).__module__}.{type(self).__name__}",
                "n_features": int(self.n_features_in_),
                "image_shape": None,
            },
            "environment": {"torch": torch.__version__, "python": platform.python_version()},
            "estimator": {
                "params": _json_params(self.get_params()),
                "feature_names_in": None if names is None else [str(n) for n in names],
                "dtype": str(self.components_.dtype),
            },
        }
        checkpoint.write_json(run_dir / checkpoint.CONFIG, config)
        checkpoint.save_weights(run_dir / checkpoint.WEIGHTS, self.autoencoder_)
        checkpoint.write_jsonl(run_dir / checkpoint.HISTORY, self._history)
        last = self._history[-1] if self._history else {}
        metrics = {"epochs_trained": self.n_iter_, "train_loss": last.get("train_loss")}
        checkpoint.write_json(run_dir / checkpoint.METRICS, metrics)
        if figures and self._history:
            plots.learning_curves(self._history, run_dir / "learning_curves.png")
        return run_dir

    @classmethod
    def load(cls, path, *, device: str = "cpu") -> CAE:
        """Load a run directory written by :meth:`save` or by ``contractive train``.

        The weights keep their saved precision (float32 for CLI runs). Estimator parameters come from the
        run's config; the optimiser state is not saved, so ``partial_fit`` after loading starts a fresh one.

        Parameters
        ----------
        path : str or Path
        device : str, default="cpu"

        Returns
        -------
        CAE
            Fitted.
        """
        run = checkpoint.load_run(path)
        model = run.model
        saved = _saved_weights(run.path)
        dtype = next(iter(saved.values())).dtype
        if dtype != torch.float32:
            if dtype not in _TORCH_DTYPES.values():
                raise ContractiveError(f"{run.path / checkpoint.WEIGHTS}: unsupported weight dtype {dtype}")
            model.to(dtype)
            checkpoint.load_state_strict(model, saved, str(run.path / checkpoint.WEIGHTS))
        section = run.config.get("estimator") or {}
        params = section.get("params") or _params_from_cli_config(run.config)
        unknown = sorted(set(params) - set(cls().get_params()))
        if unknown:
            raise ContractiveError(f"{run.path / checkpoint.CONFIG}: unknown estimator parameters {unknown}")
        estimator = cls(**{**params, "device": device})
        estimator.autoencoder_ = model.to(_resolve_device(device)).eval()
        estimator.n_features_in_ = model.config.n_features
        if section.get("feature_names_in") is not None:
            estimator.feature_names_in_ = np.asarray(section["feature_names_in"], dtype=object)
        seed = run.config.get("training", {}).get("seed", 0)
        estimator._seed = int(seed)
        estimator._generator = torch.Generator().manual_seed(int(seed))
        estimator._optimizer = None
        estimator._history = list(run.history)
        estimator.loss_curve_ = [row["train_loss"] for row in run.history]
        estimator.n_iter_ = len(run.history)
        estimator._sync_fitted_attributes()
        return estimator

    def __getstate__(self):
        # Plain arrays and CPU tensors instead of live torch objects: a model fitted on CUDA unpickles on a
        # machine without one, and the generator's state survives (partial_fit continues identically).
        state = dict(super().__getstate__())
        model = state.pop("autoencoder_", None)
        if model is not None:
            state["autoencoder_"] = {
                "config": model.config.to_dict(),
                "dtype": str(model.encoder[0].weight.dtype).removeprefix("torch."),
                "device": model.encoder[0].weight.device.type,
                "weights": {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
            }
        optimizer = state.pop("_optimizer", None)
        if optimizer is not None:
            state["_optimizer"] = {"class": type(optimizer).__name__, "state": _to_cpu(optimizer.state_dict())}
        generator = state.pop("_generator", None)
        if generator is not None:
            state["_generator"] = generator.get_state()
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved_model = state.pop("autoencoder_", None)
        saved_optimizer = state.pop("_optimizer", None)
        generator_state = state.pop("_generator", None)
        super().__setstate__(state)
        if saved_model is None:
            return
        wanted = saved_model["device"]
        device = wanted if wanted == "cpu" or _device_available(wanted) else "cpu"
        model = Autoencoder(ModelConfig.from_dict(saved_model["config"])).to(getattr(torch, saved_model["dtype"]))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in saved_model["weights"].items()})
        self.autoencoder_ = model.to(device).eval()
        self._optimizer = None
        if saved_optimizer is not None:
            optimizer = getattr(torch.optim, saved_optimizer["class"])(model.parameters(), lr=1.0)
            optimizer.load_state_dict(saved_optimizer["state"])  # restores lr and the rest of the hyperparameters
            self._optimizer = optimizer
        if generator_state is not None:
            self._generator = torch.Generator()
            self._generator.set_state(generator_state)


# ---------------------------------------------------------------------- helpers


def _as_int(value):
    # GridSearchCV may hand over NumPy integers; the configs insist on Python ints.
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _as_float(value):
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _device_available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return kind == "cpu"


def _resolve_device(device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else must name an available device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ContractiveError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'") from None
    if not _device_available(resolved.type):
        raise ContractiveError(f"device {device!r} is not available on this machine; use 'cpu' or 'auto'")
    return resolved


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Estimator parameters for config.json; a RandomState instance cannot be stored and becomes None."""
    out = {}
    for key, value in params.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not (value is None or isinstance(value, (bool, int, float, str))):
            value = None
        out[key] = value
    return out


def _params_from_cli_config(config: dict[str, Any]) -> dict[str, Any]:
    """Estimator parameters equivalent to the ``model`` and ``training`` sections of a CLI run."""
    model = ModelConfig.from_dict(config["model"])
    training = TrainConfig.from_dict(config.get("training", {}))
    return {
        "n_components": model.hidden,
        "lam": model.lam,
        "activation": model.activation,
        "decoder": model.decoder,
        "tied": model.tied,
        "reconstruction": model.reconstruction,
        "penalty_method": model.penalty_method,
        "solver": training.optimizer,
        "learning_rate_init": training.lr,
        "batch_size": training.batch_size,
        "max_iter": training.epochs,
        "momentum": training.momentum,
        "weight_decay": training.weight_decay,
        "random_state": training.seed,
    }


def _saved_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = run_dir / checkpoint.WEIGHTS
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ContractiveError(f"cannot read {path}: {exc}") from None


__all__ = ["CAE"]
