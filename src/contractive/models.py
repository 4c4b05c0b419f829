"""Autoencoders as plain ``nn.Module``s: an encoder, a decoder, and a ``loss(x)`` with named terms.

The encoder is an ``nn.Sequential``, so the penalty in :mod:`contractive.penalty` sees an ordinary module
and any other encoder can slot in:

- classic CAE: Linear → activation (closed-form penalty);
- deep CAE (``encoder_layers=[500, 200]``): Linear → act → Linear → act, penalty on the Jacobian of the
  whole encoder (exact by the structured chain method, or projections when that is too costly);
- convolutional CAE (``arch="conv"``): Unflatten → (Conv2d 3×3 stride 2 → act)* → Flatten → Linear → act;
  data stay flattened (B, D) and are reshaped inside the encoder.

Decoders mirror the encoder layer by layer, either tied (each layer reuses its encoder twin's weight:
Wᵀ for Linear layers, the transposed convolution for Conv2d layers) or untied.

The loss convention (Rifai et al. 2011), per sample then averaged over the batch::

    loss = mean_b [ reconstruction(x_b, r(x_b)) + λ ‖J_f(x_b)‖²_F ]

where ``reconstruction`` is summed over features. λ therefore does not depend on the batch size.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import relatives
from .activations import make_activation
from .config import ModelConfig
from .errors import ContractiveError
from .penalty import encode_with_penalty


class TiedDecoder(nn.Module):
    """Decoder that reuses the encoder's weight transposed: x̂ = g(Wᵀ h + c).

    The encoder's ``nn.Linear`` is held in a tuple so it is *not* registered twice: the state dict holds
    W once (safetensors refuses shared tensors) and gradients from both uses add up on the same parameter.
    """

    def __init__(self, encoder_linear: nn.Linear):
        super().__init__()
        self._tied_to = (encoder_linear,)
        self.bias = nn.Parameter(torch.zeros(encoder_linear.in_features))

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, self._tied_to[0].weight.t(), self.bias)


class TiedConvTranspose(nn.Module):
    """The transpose of an encoder ``nn.Conv2d``, reusing its weight: a tied convolutional decoder layer.

    ``conv_transpose2d`` with the convolution's own weight is its adjoint, as Wᵀ is for a Linear layer;
    ``output_padding`` restores the exact spatial size that the strided convolution rounded down.
    """

    def __init__(self, conv: nn.Conv2d, output_padding: tuple[int, int]):
        super().__init__()
        self._tied_to = (conv,)
        self.output_padding = output_padding
        self.bias = nn.Parameter(torch.zeros(conv.in_channels))

    def forward(self, h: Tensor) -> Tensor:
        conv = self._tied_to[0]
        return F.conv_transpose2d(
            h, conv.weight, self.bias, stride=conv.stride, padding=conv.padding, output_padding=self.output_padding
        )


def _conv_output_size(size: int) -> int:
    # 3×3 kernel, stride 2, padding 1: ⌈size / 2⌉.
    return (size - 1) // 2 + 1


def build_encoder_decoder(config: ModelConfig) -> tuple[nn.Sequential, nn.Module]:
    """The encoder and its mirrored decoder for a config (the decoder outputs logits / linear values).

    A single dense layer keeps the classic layout (``encoder.0`` Linear, ``decoder`` a
    :class:`TiedDecoder` or Linear), so run directories written before deep and conv models still load.
    """
    dense_sizes = config.encoder_layers or [config.hidden]
    if config.arch == "dense" and len(dense_sizes) == 1:
        linear = nn.Linear(config.n_features, config.hidden)
        decoder = TiedDecoder(linear) if config.tied else nn.Linear(config.hidden, config.n_features)
        return nn.Sequential(linear, make_activation(config.activation)), decoder

    act = config.activation
    encoder: list[nn.Module] = []
    conv_transposes: list[nn.Module] = []  # in encoder order: conv_transposes[i] undoes the i-th convolution
    features = config.n_features
    if config.arch == "conv":
        shape = list(config.image_shape) if len(config.image_shape) == 3 else [1, *config.image_shape]
        encoder.append(nn.Unflatten(1, tuple(shape)))
        channels, height, width = shape
        for out_channels in config.conv_channels:
            conv = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
            new_height, new_width = _conv_output_size(height), _conv_output_size(width)
            padding = (height - 2 * new_height + 1, width - 2 * new_width + 1)
            encoder += [conv, make_activation(act)]
            conv_transposes.append(
                TiedConvTranspose(conv, padding)
                if config.tied
                else nn.ConvTranspose2d(out_channels, channels, 3, stride=2, padding=1, output_padding=padding)
            )
            channels, height, width = out_channels, new_height, new_width
        encoder.append(nn.Flatten())
        features = channels * height * width
    linear_transposes: list[nn.Module] = []
    for size in dense_sizes:
        linear = nn.Linear(features, size)
        encoder += [linear, make_activation(act)]
        linear_transposes.append(TiedDecoder(linear) if config.tied else nn.Linear(size, features))
        features = size

    decoder: list[nn.Module] = []
    for module in reversed(linear_transposes):
        decoder += [module, make_activation(act)]
    if config.arch == "conv":
        decoder.append(nn.Unflatten(1, (channels, height, width)))
        for module in reversed(conv_transposes):
            decoder += [module, make_activation(act)]
    decoder.pop()  # the last layer outputs logits / linear values: decode() applies the output nonlinearity
    if config.arch == "conv":
        decoder.append(nn.Flatten())
    return nn.Sequential(*encoder), nn.Sequential(*decoder)


class Autoencoder(nn.Module):
    """A (contractive) autoencoder built from a :class:`~contractive.config.ModelConfig`.

    ``lam = 0`` gives a plain autoencoder (the penalty is then not computed at all).

    Examples
    --------
    >>> import torch
    >>> from contractive import Autoencoder, ModelConfig
    >>> model = Autoencoder(ModelConfig(n_features=64, hidden=16, lam=0.1, reconstruction="bce"))
    >>> terms = model.loss(torch.rand(8, 64))
    >>> sorted(terms)
    ['loss', 'penalty', 'reconstruction']
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        # Not resolved here from the first data seen: the same config must always build the same model,
        # and fit / train_run / the estimator resolve it from the whole training set before building.
        config.check_resolved()
        self.config = config
        self.encoder, self.decoder = build_encoder_decoder(config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Glorot-uniform weights and zero biases, the usual start for sigmoid autoencoders.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (TiedDecoder, TiedConvTranspose)):
                nn.init.zeros_(module.bias)

    @property
    def uses_logits(self) -> bool:
        """True when the loss is BCE on decoder logits (numerically stable, no log(0))."""
        return self.config.reconstruction == "bce"

    def _as_input(self, x: Tensor | np.ndarray, width: int, what: str) -> Tensor:
        """``x`` itself if it is a tensor, else an array-like converted to the model's dtype and device.

        Tensors pass unchecked: they are what the training loop sends every step. Arrays come from users,
        so their shape is checked here rather than surfacing as a matrix-multiplication error.
        """
        if isinstance(x, Tensor):
            return x
        array = np.asarray(x)
        if array.dtype.kind not in "biuf":
            raise ContractiveError(f"{what} must be numbers, got an array of dtype {array.dtype}")
        weight = next(self.parameters())
        x = torch.as_tensor(array, dtype=weight.dtype, device=weight.device)
        if x.ndim != 2 or x.shape[1] != width:
            raise ContractiveError(f"{what} must have shape (n_samples, {width}), got {tuple(x.shape)}")
        return x

    def encode(self, x: Tensor | np.ndarray) -> Tensor:
        """Codes h = f(x), shape (batch, hidden). Array-likes are converted to the model's dtype and device."""
        return self.encoder(self._as_input(x, self.config.n_features, "data to encode"))

    def decode(self, h: Tensor | np.ndarray) -> Tensor:
        """Reconstruction x̂ = g(h), shape (batch, n_features). Array-likes are converted like in :meth:`encode`."""
        out = self.decoder(self._as_input(h, self.config.hidden, "codes to decode"))
        return torch.sigmoid(out) if self.config.decoder == "sigmoid" else out

    def forward(self, x: Tensor | np.ndarray) -> Tensor:
        return self.decode(self.encode(x))

    def reconstruction_per_sample(self, x: Tensor, h: Tensor) -> Tensor:
        """Reconstruction loss of each sample, summed over features; shape (batch,)."""
        out = self.decoder(h)
        if self.uses_logits:
            return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(dim=1)
        x_hat = torch.sigmoid(out) if self.config.decoder == "sigmoid" else out
        return (x_hat - x).pow(2).sum(dim=1)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Batch-mean loss and its terms: ``loss``, ``reconstruction``, ``penalty`` (mean ‖J_f‖²_F), and in
        eval mode ``jacobian_norm`` (mean ‖J_f‖_F).

        The penalty is computed on the same forward pass as the code. With λ = 0 it is not computed
        during training (a plain AE costs nothing extra) and the key is left out. Training uses
        ``config.penalty_method``; eval mode uses ``"auto"`` (exact wherever affordable), so validation
        metrics carry no projection noise.

        ``config.model`` selects the criterion (see :mod:`contractive.relatives`): ``"dae"`` reconstructs
        x from a corrupted x̃; ``"rcae"`` reports and penalises ‖J_r‖²_F (r = g∘f) as ``penalty``;
        ``"caeh"`` adds ``higher_order`` (mean ‖J_f(x) − J_f(x̃)‖²_F) with weight γ. Corruption is drawn
        from the global torch generator in training mode and from a fixed seed in eval mode, so that
        validation losses are deterministic.
        """
        kind = self.config.model
        if kind in ("dae", "rcae", "caeh"):
            return self._relative_loss(x, kind)
        lam = self.config.lam
        terms: dict[str, Tensor] = {}
        if lam > 0 or not self.training:
            method = self.config.penalty_method if self.training else "auto"
            # The penalty (squared derivatives summed over H·D terms) is kept in float32 even under
            # bf16 autocast: bfloat16's 8-bit mantissa would swamp it in rounding error.
            autocasting = torch.is_autocast_enabled(x.device.type)
            with torch.autocast(device_type=x.device.type, enabled=False) if autocasting else nullcontext():
                h, per_sample = encode_with_penalty(
                    self.encoder,
                    x.float() if autocasting else x,
                    method=method,
                    n_projections=self.config.n_projections,
                )
            terms["penalty"] = per_sample.mean()
            if not self.training:
                terms["jacobian_norm"] = per_sample.clamp_min(0).sqrt().mean()
        else:
            h = self.encode(x)  # a plain AE in training: the penalty is not computed, so not reported
        reconstruction = self.reconstruction_per_sample(x, h).mean()
        total = reconstruction + lam * terms["penalty"] if lam > 0 else reconstruction
        return {"loss": total, "reconstruction": reconstruction, **terms}

    def _relative_loss(self, x: Tensor, kind: str) -> dict[str, Tensor]:
        cfg = self.config
        generator = None if self.training else torch.Generator(device=x.device).manual_seed(0)
        options = {"method": cfg.penalty_method, "n_projections": cfg.n_projections, "generator": generator}
        if kind == "dae":
            x_tilde = relatives.corrupt(x, cfg.noise, sigma=cfg.sigma, mask_prob=cfg.mask_prob, generator=generator)
            reconstruction = self.reconstruction_per_sample(x, self.encode(x_tilde)).mean()
            terms = {"loss": reconstruction, "reconstruction": reconstruction}
            if not self.training:  # a DAE has no penalty to train: it is only measured
                terms["penalty"] = encode_with_penalty(self.encoder, x, method=cfg.penalty_method)[1].mean()
            return terms
        if kind == "rcae":
            reconstruction = self.reconstruction_per_sample(x, self.encode(x)).mean()
            if not (cfg.lam > 0 or not self.training):
                return {"loss": reconstruction, "reconstruction": reconstruction}  # penalty not computed
            penalty = relatives.reconstruction_jacobian_sq(self, x, **options).mean()
            total = reconstruction + cfg.lam * penalty if cfg.lam > 0 else reconstruction
            return {"loss": total, "reconstruction": reconstruction, "penalty": penalty}
        h, penalty = encode_with_penalty(self.encoder, x, method=cfg.penalty_method, n_projections=cfg.n_projections)
        penalty = penalty.mean()
        reconstruction = self.reconstruction_per_sample(x, h).mean()
        higher_order = relatives.higher_order_penalty(
            self.encoder, x, sigma=cfg.sigma, n_corruptions=cfg.n_corruptions, **options
        ).mean()
        total = reconstruction + cfg.lam * penalty + cfg.gamma * higher_order
        return {"loss": total, "reconstruction": reconstruction, "penalty": penalty, "higher_order": higher_order}


def input_filters(model: nn.Module) -> Tensor | None:
    """The weight of the first layer when it is dense and reads the input (one row per unit, shaped like a
    sample: the "filters" figure), or ``None`` for convolutional encoders."""
    first = model.encoder[0]
    return first.weight if isinstance(first, nn.Linear) else None


def build_model(config: ModelConfig) -> nn.Module:
    """An :class:`Autoencoder`, or a :class:`~contractive.stacked.StackedAutoencoder` when ``config.layers``."""
    if config.layers:
        from .stacked import StackedAutoencoder  # stacked builds on this module

        return StackedAutoencoder(config)
    return Autoencoder(config)
