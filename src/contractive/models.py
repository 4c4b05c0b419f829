"""Autoencoders as plain ``nn.Module``s: an encoder, a decoder, and a ``loss(x)`` with named terms.

The encoder is an ``nn.Sequential`` (Linear → activation for the classic CAE), so the penalty in
:mod:`contractive.penalty` sees an ordinary module and any other encoder can slot in.

The loss convention (Rifai et al. 2011), per sample then averaged over the batch::

    loss = mean_b [ reconstruction(x_b, r(x_b)) + λ ‖J_f(x_b)‖²_F ]

where ``reconstruction`` is summed over features. λ therefore does not depend on the batch size.
"""

from __future__ import annotations

from contextlib import nullcontext

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
        if config.reconstruction == "auto":
            raise ContractiveError("resolve config.reconstruction (config.resolve_reconstruction) before building")
        self.config = config
        linear = nn.Linear(config.n_features, config.hidden)
        self.encoder = nn.Sequential(linear, make_activation(config.activation))
        self.decoder = TiedDecoder(linear) if config.tied else nn.Linear(config.hidden, config.n_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Glorot-uniform weights and zero biases, the usual start for sigmoid autoencoders.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if isinstance(self.decoder, TiedDecoder):
            nn.init.zeros_(self.decoder.bias)

    @property
    def uses_logits(self) -> bool:
        """True when the loss is BCE on decoder logits (numerically stable, no log(0))."""
        return self.config.reconstruction == "bce"

    def encode(self, x: Tensor) -> Tensor:
        """Codes h = f(x), shape (batch, hidden)."""
        return self.encoder(x)

    def decode(self, h: Tensor) -> Tensor:
        """Reconstruction x̂ = g(h), shape (batch, n_features)."""
        out = self.decoder(h)
        return torch.sigmoid(out) if self.config.decoder == "sigmoid" else out

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def reconstruction_per_sample(self, x: Tensor, h: Tensor) -> Tensor:
        """Reconstruction loss of each sample, summed over features; shape (batch,)."""
        out = self.decoder(h)
        if self.uses_logits:
            return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(dim=1)
        x_hat = torch.sigmoid(out) if self.config.decoder == "sigmoid" else out
        return (x_hat - x).pow(2).sum(dim=1)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Batch-mean loss and its terms: ``loss``, ``reconstruction``, ``penalty`` (mean ‖J_f‖²_F).

        The penalty is computed on the same forward pass as the code. With λ = 0 it is not computed
        during training (a plain AE costs nothing extra) and is reported as NaN.

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
        if lam > 0 or not self.training:
            # The penalty (squared derivatives summed over H·D terms) is kept in float32 even under
            # bf16 autocast: bfloat16's 8-bit mantissa would swamp it in rounding error.
            autocasting = torch.is_autocast_enabled(x.device.type)
            with torch.autocast(device_type=x.device.type, enabled=False) if autocasting else nullcontext():
                h, penalty = encode_with_penalty(
                    self.encoder,
                    x.float() if autocasting else x,
                    method=self.config.penalty_method,
                    n_projections=self.config.n_projections,
                )
            penalty = penalty.mean()
        else:
            h, penalty = self.encode(x), torch.full((), float("nan"))
        reconstruction = self.reconstruction_per_sample(x, h).mean()
        total = reconstruction + lam * penalty if lam > 0 else reconstruction
        return {"loss": total, "reconstruction": reconstruction, "penalty": penalty}

    def _relative_loss(self, x: Tensor, kind: str) -> dict[str, Tensor]:
        cfg = self.config
        generator = None if self.training else torch.Generator(device=x.device).manual_seed(0)
        options = {"method": cfg.penalty_method, "n_projections": cfg.n_projections, "generator": generator}
        if kind == "dae":
            x_tilde = relatives.corrupt(x, cfg.noise, sigma=cfg.sigma, mask_prob=cfg.mask_prob, generator=generator)
            reconstruction = self.reconstruction_per_sample(x, self.encode(x_tilde)).mean()
            if self.training:
                penalty = torch.full((), float("nan"))
            else:
                penalty = encode_with_penalty(self.encoder, x, method=cfg.penalty_method)[1].mean()
            return {"loss": reconstruction, "reconstruction": reconstruction, "penalty": penalty}
        if kind == "rcae":
            reconstruction = self.reconstruction_per_sample(x, self.encode(x)).mean()
            if cfg.lam > 0 or not self.training:
                penalty = relatives.reconstruction_jacobian_sq(self, x, **options).mean()
            else:
                penalty = torch.full((), float("nan"))
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


def build_model(config: ModelConfig) -> nn.Module:
    """An :class:`Autoencoder`, or a :class:`~contractive.stacked.StackedAutoencoder` when ``config.layers``."""
    if config.layers:
        from .stacked import StackedAutoencoder  # stacked builds on this module

        return StackedAutoencoder(config)
    return Autoencoder(config)
