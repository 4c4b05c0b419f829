"""Stacked autoencoders: greedy layer-wise pretraining, then optional supervised fine-tuning.

The protocol of Rifai et al. (2011), after Hinton & Salakhutdinov (2006) and Bengio et al. (2007):

1. Train layer 1 (a CAE, or any criterion of :class:`~contractive.config.ModelConfig`) on the data.
2. Train layer k on the codes of layers 1..k−1, which stay fixed; repeat up to the top.
3. Optionally put a softmax layer on the top code and train the whole network on labels
   (:func:`finetune`). A network of identical shape from a random start, trained the same way, is the
   baseline that shows what pretraining contributed (:func:`compare_finetuning`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .config import ModelConfig, TrainConfig
from .errors import ContractiveError
from .models import Autoencoder
from .penalty import encode_with_penalty
from .training import FitResult, as_tensor, fit, make_optimizer, seed_everything

# Activations whose codes lie in [0, 1], so an upper layer may use the BCE reconstruction on them.
_UNIT_INTERVAL_CODES = ("sigmoid",)


def layer_configs(config: ModelConfig) -> list[ModelConfig]:
    """One single-layer config per level of the stack: layer k maps sizes[k] → layers[k].

    Every layer shares the stack's criterion and options. The bottom layer keeps the stack's
    reconstruction loss (resolved against the data); upper layers see codes, and use BCE only when the
    stack's loss is BCE and the codes are in [0, 1] (sigmoid), squared error otherwise.
    """
    if not config.layers:
        raise ContractiveError("a stacked autoencoder needs config.layers (hidden sizes, bottom to top)")
    sizes = [config.n_features, *config.layers]
    configs = []
    for k, hidden in enumerate(config.layers):
        reconstruction = config.reconstruction
        if k > 0 and reconstruction != "auto":
            codes_in_unit = config.activation in _UNIT_INTERVAL_CODES
            reconstruction = "bce" if reconstruction == "bce" and codes_in_unit else "squared_error"
        configs.append(
            dataclasses.replace(config, n_features=sizes[k], hidden=hidden, layers=[], reconstruction=reconstruction)
        )
    return configs


class StackedAutoencoder(nn.Module):
    """A stack of single-layer autoencoders; ``encode`` gives the top code, ``decode`` goes back down.

    Parameters
    ----------
    config : ModelConfig
        With ``layers`` = hidden sizes bottom to top; its ``reconstruction`` must be resolved.

    Attributes
    ----------
    layers : nn.ModuleList of Autoencoder
        ``layers[k]`` encodes the codes of ``layers[k-1]``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.check_resolved()
        self.config = config
        self.layers = nn.ModuleList(Autoencoder(c) for c in layer_configs(config))

    @property
    def encoder(self) -> nn.Sequential:
        """The whole encoder as one flat Sequential (Linear, activation, Linear, …) over the live layers.

        Built on access and not registered, so the state dict holds every weight once, under ``layers``.
        """
        return nn.Sequential(*(module for layer in self.layers for module in layer.encoder))

    def encode(self, x: Tensor) -> Tensor:
        """Top code, shape (batch, layers[-1])."""
        for layer in self.layers:
            x = layer.encode(x)
        return x

    def decode(self, h: Tensor) -> Tensor:
        """Back down through every decoder: shape (batch, n_features)."""
        for layer in reversed(self.layers):
            h = layer.decode(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Diagnostics of the whole stack: squared reconstruction error through all layers and mean ‖J_f‖²_F.

        The stack is trained layer by layer (:func:`pretrain`), each layer on its own criterion; this
        end-to-end loss is what :func:`contractive.training.evaluate` reports for it.
        """
        h, penalty = encode_with_penalty(
            self.encoder, x, method=self.config.penalty_method, n_projections=self.config.n_projections
        )
        reconstruction = (self.decode(h) - x).pow(2).sum(dim=1).mean()
        return {"loss": reconstruction, "reconstruction": reconstruction, "penalty": penalty.mean()}


def pretrain(
    stack: StackedAutoencoder,
    X_train: np.ndarray | Tensor,
    X_val: np.ndarray | Tensor | None,
    config: TrainConfig,
    *,
    run_dir=None,
    progress: bool = True,
) -> FitResult:
    """Greedy layer-wise training: each layer is fitted (by :func:`contractive.training.fit`) on the codes
    of the trained layers below it, which are not updated.

    Returns
    -------
    FitResult
        ``history`` concatenates the layers' epochs, numbered through the stack, each row tagged with
        ``layer`` (0-based) and ``layer_epoch``; ``best_epoch`` is the top layer's, in that numbering.
        When ``run_dir`` is given the whole stack is checkpointed after every layer.
    """
    from . import checkpoint

    X = as_tensor(X_train)
    V = as_tensor(X_val) if X_val is not None and len(X_val) else None
    combined = FitResult()
    started = time.perf_counter()
    for k, layer in enumerate(stack.layers):
        result = fit(layer, X, V, config, progress=progress)
        offset = len(combined.history)
        # Epochs are numbered through the whole stack so that curves and counts read left to right.
        combined.history += [
            {**row, "epoch": offset + row["epoch"], "layer": k, "layer_epoch": row["epoch"]} for row in result.history
        ]
        combined.best_epoch = None if result.best_epoch is None else offset + result.best_epoch
        combined.stopped_early |= result.stopped_early
        if run_dir is not None:
            checkpoint.save_weights(run_dir / checkpoint.WEIGHTS, stack)
            checkpoint.write_jsonl(run_dir / checkpoint.HISTORY, combined.history)
        if result.interrupted:
            combined.interrupted = True
            break
        with torch.no_grad():
            layer.eval()
            X = layer.encode(X)
            V = layer.encode(V) if V is not None else None
    combined.train_time_s = time.perf_counter() - started
    return combined


class Classifier(nn.Module):
    """An encoder with a softmax (linear + cross-entropy) head: logits of shape (batch, n_classes)."""

    def __init__(self, encoder: nn.Module, code_size: int, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(code_size, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def random_like(encoder: nn.Sequential, *, seed: int) -> nn.Sequential:
    """A copy of ``encoder`` with fresh Glorot-uniform weights and zero biases (the baseline's start)."""
    import copy

    fresh = copy.deepcopy(encoder)
    generator = torch.Generator().manual_seed(seed)
    for module in fresh.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):  # the dense and convolutional layers of any encoder
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 * bound - bound)
                module.bias.zero_()
    return fresh


SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total_steps``: 1, or ½(1 + cos(π·step/total))."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return 1.0


def code_size(encoder: nn.Module) -> int:
    """Width of the encoder's output: the ``out_features`` of its last ``nn.Linear``."""
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ContractiveError(f"cannot tell the code size of {type(encoder).__name__}: it has no nn.Linear")
    return linears[-1].out_features


def finetune(
    encoder: nn.Module,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    config: TrainConfig,
    *,
    schedule: str = "constant",
) -> dict[str, Any]:
    """Train ``encoder`` plus a softmax head on labels, end to end; return train and test error rates.

    ``encoder`` is trained in place (pass a copy to keep the original). Minimises the mean cross-entropy
    with the optimiser, learning rate, batch size, epochs and seed of ``config``. ``schedule="cosine"``
    decays the learning rate from ``config.lr`` to 0 along a half cosine over all steps (the last epochs then
    settle instead of bouncing around the minimum); ``"constant"`` keeps it fixed.
    """
    if schedule not in SCHEDULES:
        raise ContractiveError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    # Labels are class names, not indices: map them to 0..K−1 so that labels such as {3, 7} or 2e8 give a head
    # with as many outputs as there are classes.
    classes, codes = np.unique(np.concatenate([np.asarray(y_train), np.asarray(y_test)]), return_inverse=True)
    y_train, y_test = codes[: len(y_train)].astype(np.int64), codes[len(y_train) :].astype(np.int64)
    if np.unique(y_train).size < 2:
        raise ContractiveError(
            f"fine-tuning needs at least 2 classes in the training labels, found {np.unique(y_train).size}"
        )
    n_classes = len(classes)
    seed_everything(config.seed)
    model = Classifier(encoder, code_size(encoder), n_classes)
    nn.init.zeros_(model.head.weight)  # same head start for every encoder: only the encoder differs
    nn.init.zeros_(model.head.bias)
    X, y = as_tensor(X_train), torch.as_tensor(y_train)
    optimizer = make_optimizer(model, config)
    total_steps = config.epochs * math.ceil(X.shape[0] / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step, total_steps))
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(X.shape[0], generator=generator)
        for start in range(0, X.shape[0], config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = loss_fn(model(X[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    return {
        "train_error": error_rate(model, X_train, y_train),
        "test_error": error_rate(model, X_test, y_test),
        "train_time_s": time.perf_counter() - started,
    }


@torch.no_grad()
def error_rate(model: nn.Module, X: np.ndarray, y: np.ndarray, *, batch_size: int = 2048) -> float:
    """Fraction of samples whose arg-max logit is not the label."""
    wrong = 0
    for start in range(0, X.shape[0], batch_size):
        logits = model(as_tensor(X[start : start + batch_size]))
        wrong += int((logits.argmax(dim=1).cpu().numpy() != y[start : start + batch_size]).sum())
    return wrong / X.shape[0]


def compare_finetuning(
    encoder: nn.Sequential,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    config: TrainConfig,
    *,
    schedule: str = "constant",
) -> dict[str, dict[str, Any]]:
    """Fine-tune a copy of the pretrained ``encoder`` and a randomly initialised twin the same way.

    Returns ``{"pretrained": {...}, "random_init": {...}}`` with the results of :func:`finetune`.
    """
    import copy

    return {
        "pretrained": finetune(copy.deepcopy(encoder), X_train, y_train, X_test, y_test, config, schedule=schedule),
        "random_init": finetune(
            random_like(encoder, seed=config.seed), X_train, y_train, X_test, y_test, config, schedule=schedule
        ),
    }
