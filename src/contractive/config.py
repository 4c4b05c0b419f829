"""Hyperparameters as dataclasses that validate themselves and round-trip through JSON.

``config.json`` in a run directory is ``{"contractive_version", "model", "training", "data"}``; the model
and training parts are these dataclasses' ``to_dict()``. Loading rejects unknown or missing-but-required
keys with a clear error instead of guessing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .activations import ACTIVATION_NAMES
from .errors import ContractiveError
from .penalty import METHODS as PENALTY_METHODS

DECODERS = ("sigmoid", "linear")
ARCHS = ("dense", "conv")
DEFAULT_HIDDEN = 64
# Channels of the default convolutional encoder: two 3×3 stride-2 convolutions (28×28 → 14×14 → 7×7).
DEFAULT_CONV_CHANNELS = (16, 32)
RECONSTRUCTIONS = ("auto", "bce", "squared_error")
OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("32", "bf16")
# Which training criterion (see contractive.models.Autoencoder.loss and contractive.relatives).
MODELS = ("ae", "cae", "dae", "rcae", "caeh")
NOISES = ("gaussian", "masking")
PENALTY_TARGETS = ("encoder", "reconstruction")

# Default λ for the per-sample convention (see README, "The loss"), chosen on scikit-learn's digits with
# 64 sigmoid hidden units and 100 Adam epochs by a sweep over λ ∈ {0, 0.01, 0.03, 0.1, 0.3, 1}
# (validation ‖x − x̂‖² / mean ‖J_f‖_F): 0 → 0.16 / 7.5, 0.03 → 0.23 / 5.2, 0.1 → 0.41 / 3.7, 0.3 → 0.74 / 2.5.
# λ = 0.1 halves the Jacobian norm while still explaining 91% of the data variance (4.69).
DEFAULT_LAM = 0.1


# Seeds reach torch, NumPy and scikit-learn (benchmark baselines): sklearn's random_state is a legacy
# RandomState, which takes [0, 2**32 - 1] only, so that is the range every seed is held to.
MAX_SEED = 2**32 - 1


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ContractiveError(message)


def _is_integer(value: Any) -> bool:
    # bool is an int subclass, but True as a layer size is a mistake, not a 1.
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _integer(config: Any, name: str) -> int:
    """Check that field ``name`` is an integer (NumPy's too) and store it as a plain int, for JSON."""
    value = getattr(config, name)
    _check(_is_integer(value), f"{name} must be an integer, got {value!r}")
    setattr(config, name, int(value))
    return int(value)


def _number(config: Any, name: str) -> float:
    """Check that field ``name`` is a real number (ints and NumPy floats too) and store it as a float.

    Strings are rejected rather than parsed: ``lam="0.1"`` is a caller's bug, and the range messages
    that follow would otherwise print it as if it were the number 0.1.
    """
    value = getattr(config, name)
    _check(
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool),
        f"{name} must be a number, got {value!r}",
    )
    setattr(config, name, float(value))
    return float(value)


@dataclass
class ModelConfig:
    """Architecture and loss of an autoencoder.

    Parameters
    ----------
    n_features : int
        Input dimension D (data are flattened to (n_samples, D)).
    hidden : int, optional
        Code dimension H. Default: the last of ``encoder_layers``, else 64.
    activation : str
        Encoder nonlinearity φ in h = φ(W x + b), used after every encoder layer.
    decoder : {"sigmoid", "linear"}
        Output nonlinearity of the decoder.
    tied : bool
        If True the decoder uses Wᵀ (Rifai et al. 2011); otherwise it has its own weight.
    lam : float
        Weight λ ≥ 0 of the contractive penalty, per sample (see README).
    reconstruction : {"auto", "bce", "squared_error"}
        Per-sample reconstruction loss, summed over features. ``"auto"`` is resolved by
        :meth:`resolve_reconstruction` from the decoder and the data range before training.
    penalty_method : {"auto", "closed_form", "exact", "projection"}
        Passed to :func:`contractive.jacobian_frobenius_sq` during training (evaluation uses ``"auto"``,
        which is exact wherever that is affordable, so validation metrics carry no projection noise).
    n_projections : int
        Probes per sample for the ``"projection"`` method.
    model : {"ae", "cae", "dae", "rcae", "caeh"}
        Training criterion: plain AE; CAE (λ‖J_f(x)‖²_F); denoising AE (reconstruct x from a corrupted
        x̃); reconstruction-contractive AE (λ‖J_r(x)‖²_F with r = g∘f); CAE+H (the CAE plus
        γ · mean over ``n_corruptions`` copies x̃ = x + ε, ε ~ N(0, σ²I), of ‖J_f(x) − J_f(x̃)‖²_F).
        Models without a Jacobian penalty (``ae``, ``dae``) store ``lam = 0``.
    penalty_on : {"encoder", "reconstruction"}
        What the λ term contracts. ``"reconstruction"`` is the same as ``model="rcae"``; either spelling
        is normalised to ``model="rcae", penalty_on="reconstruction"``.
    noise : {"gaussian", "masking"}
        Corruption of the denoising AE: x + ε with ε ~ N(0, σ²I), or each feature set to 0 with
        probability ``mask_prob``. CAE+H always uses Gaussian copies of std ``sigma``.
    sigma : float
        Standard deviation of Gaussian corruption (``dae`` with Gaussian noise, ``caeh``).
    mask_prob : float
        Probability of zeroing a feature (``dae`` with masking noise).
    gamma : float
        Weight γ ≥ 0 of the CAE+H higher-order term.
    n_corruptions : int
        Number of corrupted copies per sample for the CAE+H term.
    layers : list of int
        Hidden sizes of a stacked autoencoder, bottom to top (greedy layer-wise pretraining, see
        :mod:`contractive.stacked`). Empty for a single layer; when given, ``hidden`` is the top size.
    encoder_layers : list of int, optional
        Sizes of the dense encoder layers from the input (or, for ``arch="conv"``, from the convolutional
        features) to the code, e.g. ``[500, 200]`` for a deep CAE 784→500→200; the last is the code size
        ``hidden``. The penalty is on the Jacobian of the whole encoder; the decoder mirrors it.
        Default: one layer of ``hidden`` units.
    arch : {"dense", "conv"}
        ``"conv"`` puts 3×3 stride-2 convolutions (``conv_channels``) before the dense layers; data stay
        flattened and are reshaped to ``image_shape`` inside the model.
    image_shape : list of int, optional
        ``[height, width]`` or ``[channels, height, width]`` of each sample, for ``arch="conv"``.
        Default there: a square single-channel image (e.g. 28×28 for 784 features).
    conv_channels : list of int, optional
        Output channels of the convolutions (``arch="conv"`` only). Default: ``[16, 32]``.
    """

    n_features: int
    hidden: int | None = None
    activation: str = "sigmoid"
    decoder: str = "sigmoid"
    tied: bool = True
    lam: float = DEFAULT_LAM
    reconstruction: str = "auto"
    penalty_method: str = "auto"
    n_projections: int = 1
    model: str = "cae"
    penalty_on: str = "encoder"
    noise: str = "gaussian"
    sigma: float = 0.1
    mask_prob: float = 0.25
    gamma: float = 1.0
    n_corruptions: int = 4
    layers: list[int] = dataclasses.field(default_factory=list)
    encoder_layers: list[int] | None = None
    arch: str = "dense"
    image_shape: list[int] | None = None
    conv_channels: list[int] | None = None

    def __post_init__(self) -> None:
        _check(_integer(self, "n_features") >= 1, f"n_features must be ≥ 1, got {self.n_features}")
        self.encoder_layers = _int_list(self.encoder_layers, "encoder_layers", "each encoder layer size")
        if self.hidden is None:
            self.hidden = self.encoder_layers[-1] if self.encoder_layers else DEFAULT_HIDDEN
        _check(_integer(self, "hidden") >= 1, f"hidden size must be ≥ 1, got {self.hidden}")
        if self.encoder_layers:
            _check(
                self.encoder_layers[-1] == self.hidden,
                f"hidden ({self.hidden}) must equal the last of encoder_layers {self.encoder_layers}: both are the code size",
            )
        _check(self.arch in ARCHS, f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        self.image_shape = _int_list(self.image_shape, "image_shape", "each image dimension")
        if self.image_shape is not None:
            _check(
                len(self.image_shape) in (2, 3),
                f"image_shape must be [height, width] or [channels, height, width], got {self.image_shape}",
            )
            _check(
                math.prod(self.image_shape) == self.n_features,
                f"image_shape {self.image_shape} has {math.prod(self.image_shape)} values per sample, "
                f"but n_features is {self.n_features}",
            )
        self.conv_channels = _int_list(self.conv_channels, "conv_channels", "each channel count")
        if self.arch == "conv":
            if self.image_shape is None:
                side = math.isqrt(self.n_features)
                _check(
                    side * side == self.n_features,
                    f"arch 'conv' needs the image shape of the samples: {self.n_features} features are not a square "
                    "image, so give image_shape",
                )
                self.image_shape = [side, side]
            if self.conv_channels is None:
                self.conv_channels = list(DEFAULT_CONV_CHANNELS)
        _check(self.conv_channels is None or self.arch == "conv", "conv_channels only applies to arch 'conv'")
        _check(self.image_shape is None or self.arch == "conv", "image_shape only applies to arch 'conv'")
        _check(
            self.activation in ACTIVATION_NAMES,
            f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATION_NAMES)}",
        )
        _check(self.decoder in DECODERS, f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        lam = _number(self, "lam")
        _check(math.isfinite(lam) and lam >= 0, f"lam (λ) must be a finite number ≥ 0, got {lam}")
        _check(
            self.reconstruction in RECONSTRUCTIONS,
            f"unknown reconstruction loss {self.reconstruction!r}; choose one of {', '.join(RECONSTRUCTIONS)}",
        )
        _check(
            self.reconstruction != "bce" or self.decoder == "sigmoid",
            "reconstruction 'bce' needs decoder 'sigmoid'",
        )
        _check(
            self.penalty_method in PENALTY_METHODS,
            f"unknown penalty method {self.penalty_method!r}; choose one of {', '.join(PENALTY_METHODS)}",
        )
        _check(
            self.penalty_method != "closed_form" or (self.arch == "dense" and len(self.encoder_layers or [1]) == 1),
            "penalty method 'closed_form' needs a single dense layer; use 'exact', 'projection' or 'auto' for "
            "deep and convolutional encoders",
        )
        _check(_integer(self, "n_projections") >= 1, f"n_projections must be an integer ≥ 1, got {self.n_projections}")
        self._check_relatives()

    def _check_relatives(self) -> None:
        _check(self.model in MODELS, f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        _check(
            self.penalty_on in PENALTY_TARGETS,
            f"unknown penalty_on {self.penalty_on!r}; choose one of {', '.join(PENALTY_TARGETS)}",
        )
        if self.penalty_on == "reconstruction":
            _check(
                self.model in ("cae", "rcae"),
                f"penalty_on 'reconstruction' is the rcae model; it cannot be combined with model {self.model!r}",
            )
            self.model = "rcae"
        if self.model == "rcae":
            self.penalty_on = "reconstruction"
        if self.model in ("ae", "dae"):
            self.lam = 0.0  # no Jacobian penalty: record what is actually trained
        _check(self.noise in NOISES, f"unknown noise {self.noise!r}; choose one of {', '.join(NOISES)}")
        sigma = _number(self, "sigma")
        _check(math.isfinite(sigma) and sigma > 0, f"sigma (noise std) must be a finite number > 0, got {sigma}")
        _check(0 <= _number(self, "mask_prob") < 1, f"mask_prob must be in [0, 1), got {self.mask_prob}")
        gamma = _number(self, "gamma")
        _check(math.isfinite(gamma) and gamma >= 0, f"gamma (γ) must be a finite number ≥ 0, got {gamma}")
        _check(_integer(self, "n_corruptions") >= 1, f"n_corruptions must be ≥ 1, got {self.n_corruptions}")
        _check(
            isinstance(self.layers, (list, tuple)) and all(_is_integer(h) and h >= 1 for h in self.layers),
            f"layers must be a list of hidden sizes ≥ 1, got {self.layers}",
        )
        self.layers = [int(h) for h in self.layers]
        _check(
            not (self.layers and self.penalty_method == "closed_form"),
            "a stack's encoder has several layers, so penalty_method 'closed_form' cannot report its penalty; "
            "use 'auto' (each layer is still trained with its closed form)",
        )
        _check(
            not (self.layers and (self.encoder_layers or self.arch != "dense")),
            "layers (a stack, trained one layer at a time) cannot be combined with encoder_layers or arch 'conv' "
            "(one deep encoder trained jointly); choose one",
        )
        if self.layers:
            self.hidden = self.layers[-1]  # the code size of a stack is its top layer

    def check_resolved(self) -> None:
        """Raise unless ``reconstruction`` is decided: a model is built for one loss, and ``"auto"`` is not one."""
        _check(
            self.reconstruction != "auto",
            "ModelConfig.reconstruction is 'auto', which is decided from the data: pass reconstruction='bce' or "
            "'squared_error', or call config.resolve_reconstruction(X.min(), X.max()) first",
        )

    def resolve_reconstruction(self, data_min: float, data_max: float) -> ModelConfig:
        """Return a copy with ``reconstruction`` fixed: BCE for [0, 1] data and a sigmoid decoder."""
        in_unit_interval = data_min >= 0.0 and data_max <= 1.0
        if self.reconstruction == "auto":
            chosen = "bce" if self.decoder == "sigmoid" and in_unit_interval else "squared_error"
            return dataclasses.replace(self, reconstruction=chosen)
        _check(
            self.reconstruction != "bce" or in_unit_interval,
            f"reconstruction 'bce' needs data in [0, 1], but the data range is [{data_min:g}, {data_max:g}]",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, values, "model")


@dataclass
class TrainConfig:
    """How to train: optimiser, batches, epochs, seed, validation and early stopping.

    ``patience = 0`` disables early stopping; otherwise training stops after ``patience`` epochs without a
    lower validation loss and the best weights are restored. ``precision = "bf16"`` runs the forward pass
    under bfloat16 autocast (the contractive penalty stays float32).
    """

    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-2
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    patience: int = 0
    precision: str = "32"

    def __post_init__(self) -> None:
        _check(
            self.precision in PRECISIONS,
            f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}",
        )
        _check(_integer(self, "epochs") >= 1, f"epochs must be ≥ 1, got {self.epochs}")
        _check(_integer(self, "batch_size") >= 1, f"batch size must be ≥ 1, got {self.batch_size}")
        lr = _number(self, "lr")
        _check(math.isfinite(lr) and lr > 0, f"learning rate must be > 0, got {lr}")
        _check(
            self.optimizer in OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
        )
        _check(0 <= _number(self, "momentum") < 1, f"momentum must be in [0, 1), got {self.momentum}")
        weight_decay = _number(self, "weight_decay")
        _check(math.isfinite(weight_decay) and weight_decay >= 0, f"weight decay must be ≥ 0, got {weight_decay}")
        _check(
            0 <= _integer(self, "seed") <= MAX_SEED,
            f"seed must be an integer in [0, 2**32 - 1], got {self.seed}",
        )
        _check(
            0 <= _number(self, "val_fraction") < 1,
            f"validation fraction must be in [0, 1), got {self.val_fraction}",
        )
        _check(_integer(self, "patience") >= 0, f"patience must be ≥ 0, got {self.patience}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, values, "training")


def _int_list(values: Any, name: str, what: str) -> list[int] | None:
    """``None`` or a non-empty list of positive ints (tuples and JSON lists alike)."""
    if values is None:
        return None
    _check(
        isinstance(values, (list, tuple)) and len(values) > 0,
        f"{name} must be a non-empty list of integers, got {values!r}",
    )
    for value in values:
        _check(_is_integer(value) and value >= 1, f"{what} must be an integer ≥ 1, got {value!r} in {name}")
    return [int(value) for value in values]


def _from_dict(cls, values: dict[str, Any], section: str):
    if not isinstance(values, dict):
        raise ContractiveError(f"config section {section!r} must be an object, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    _check(not unknown, f"config section {section!r} has unknown keys: {', '.join(unknown)}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise ContractiveError(f"config section {section!r} is incomplete: {exc}") from None
