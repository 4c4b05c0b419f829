"""The CAE's relatives: input corruption (denoising AE), the reconstruction Jacobian (RCAE) and CAE+H.

Denoising AE (Vincent et al. 2008)
    Train r = g∘f to map a corrupted x̃ back to x. :func:`corrupt` draws x̃: Gaussian x + ε, ε ~ N(0, σ²I),
    or masking noise (each feature set to 0 with probability p).
Reconstruction-contractive AE
    Penalise ‖J_r(x)‖²_F instead of ‖J_f(x)‖²_F. For small Gaussian noise the denoising criterion is
    E_ε‖x − r(x + ε)‖² = ‖x − r(x)‖² + σ²‖J_r(x)‖²_F + O(σ⁴) (Alain & Bengio 2014), so a DAE with noise σ
    behaves like an RCAE with λ = σ² (``examples/dae_cae_link.py`` measures both sides).
    :class:`ReconstructionFunction` exposes r as a module so the general penalty methods of
    :mod:`contractive.penalty` compute ‖J_r‖²_F by calling it.
CAE+H (Rifai et al., ECML 2011)
    Adds γ · mean over K Gaussian copies x̃_k = x + ε_k of ‖J_f(x) − J_f(x̃_k)‖²_F, which flattens the
    Jacobian in a neighbourhood of each sample (a stochastic stand-in for penalising the Hessian).
    :func:`jacobian_difference_sq` computes it; see there for the single-layer closed form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .activations import elementwise_derivative
from .errors import ContractiveError
from .penalty import jacobian_frobenius_sq, linear_elementwise_parts


def corrupt(
    x: Tensor,
    noise: str = "gaussian",
    *,
    sigma: float = 0.1,
    mask_prob: float = 0.25,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A corrupted copy x̃ of ``x`` (same shape), independent across samples and features.

    Parameters
    ----------
    x : Tensor, shape (batch, n_features)
    noise : {"gaussian", "masking"}
        ``"gaussian"``: x̃ = x + σ ε, ε ~ N(0, I). ``"masking"``: x̃ = x ⊙ m, m_i ~ Bernoulli(1 − p),
        i.e. each feature is zeroed with probability p (no rescaling, as in Vincent et al. 2008).
    sigma : float
        Standard deviation σ of Gaussian noise.
    mask_prob : float
        Probability p of zeroing a feature.
    generator : torch.Generator, optional
        Source of randomness, on ``x``'s device.
    """
    if noise == "gaussian":
        return x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if noise == "masking":
        keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= mask_prob
        return x * keep.to(x.dtype)
    raise ContractiveError(f"unknown noise {noise!r}; choose gaussian or masking")


def gaussian_copies(x: Tensor, n_copies: int, sigma: float, *, generator: torch.Generator | None = None) -> Tensor:
    """K = ``n_copies`` Gaussian corruptions of each sample, stacked: shape (K, batch, n_features)."""
    shape = (n_copies, *x.shape)
    return x.unsqueeze(0) + sigma * torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)


class ReconstructionFunction(nn.Module):
    """r(x) = decode(encode(x)) of an autoencoder as a module, for ‖J_r(x)‖²_F.

    The output is the reconstruction in data space (after the decoder's sigmoid, if any), not the logits
    the BCE loss uses: the DAE↔RCAE link concerns r itself. The autoencoder is held in a tuple so its
    parameters are not registered a second time; the penalty still calls the live model.
    """

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self._autoencoder = (autoencoder,)

    def forward(self, x: Tensor) -> Tensor:
        model = self._autoencoder[0]
        return model.decode(model.encode(x))


class _JacobianDifference(nn.Module):
    """u ↦ f(x + u) − f(x̃ + u), whose Jacobian at u = 0 is J_f(x) − J_f(x̃), sample by sample.

    This turns ‖J_f(x) − J_f(x̃)‖²_F into the squared Jacobian norm of one function of a batch, so any
    general method of :func:`contractive.penalty.jacobian_frobenius_sq` applies (exact or projected).
    Sample b of the output depends only on u_b, so per-sample Jacobians still never cross samples.
    """

    def __init__(self, encoder: nn.Module, x: Tensor, x_tilde: Tensor):
        super().__init__()
        self._encoder = (encoder,)
        self.x, self.x_tilde = x, x_tilde

    def forward(self, u: Tensor) -> Tensor:
        encoder = self._encoder[0]
        return encoder(self.x + u) - encoder(self.x_tilde + u)


def jacobian_difference_sq(
    encoder: nn.Module,
    x: Tensor,
    x_tilde: Tensor,
    *,
    method: str = "auto",
    n_projections: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample ‖J_f(x) − J_f(x̃_k)‖²_F for K corrupted copies, shape (K, batch).

    Parameters
    ----------
    encoder : nn.Module
    x : Tensor, shape (batch, n_features)
    x_tilde : Tensor, shape (K, batch, n_features)
        Corrupted copies, e.g. from :func:`gaussian_copies`.
    method : str
        ``"auto"`` uses the closed form below when the encoder is Linear → elementwise activation and the
        general path otherwise; ``"closed_form"`` insists on the closed form; any other value is passed to
        :func:`contractive.penalty.jacobian_frobenius_sq` for the general path.

    Notes
    -----
    Closed form. For h = φ(Wx + b), J_f(x) = diag(s(x)) W with s = φ'(Wx + b), so
    J_f(x) − J_f(x̃) = diag(s − s̃) W and

        ‖J_f(x) − J_f(x̃)‖²_F = Σ_j (s_j − s̃_j)² ‖W_j‖²,

    where ‖W_j‖² is the squared norm of row j. What the math requires per copy is only the (K, B, H)
    slopes; the Jacobians themselves, (B, H, D) per copy, are never formed. Memory is O(K·B·(H + D)), the
    same as one forward pass over the K·B corrupted inputs, and the row norms are computed once and shared
    by the clean and every corrupted pass. Gradients flow through s, s̃ and W to the live parameters.

    General path. The difference is the Jacobian at u = 0 of u ↦ f(x + u) − f(x̃ + u), so its squared
    norm is one call of :func:`~contractive.penalty.jacobian_frobenius_sq` on that function, with the K
    copies flattened into the batch.
    """
    if x_tilde.dim() != x.dim() + 1 or x_tilde.shape[1:] != x.shape:
        raise ContractiveError(f"x_tilde must have shape (K, *{tuple(x.shape)}), got {tuple(x_tilde.shape)}")
    n_copies = x_tilde.shape[0]
    parts = linear_elementwise_parts(encoder)
    if method == "closed_form" and parts is None:
        raise ContractiveError(
            f"the closed-form CAE+H term needs Linear + elementwise activation; got {type(encoder).__name__}"
        )
    if parts is not None and method in ("auto", "closed_form"):
        linear, activation = parts
        row_norms_sq = linear.weight.pow(2).sum(dim=1)  # (H,)
        slope = _slopes(linear, activation, x)  # (B, H)
        slope_tilde = _slopes(linear, activation, x_tilde.reshape(-1, x.shape[-1])).reshape(n_copies, *slope.shape)
        return (slope.unsqueeze(0) - slope_tilde).pow(2) @ row_norms_sq
    flat_x = x.unsqueeze(0).expand_as(x_tilde).reshape(-1, *x.shape[1:])
    flat_tilde = x_tilde.reshape(-1, *x.shape[1:])
    difference = _JacobianDifference(encoder, flat_x, flat_tilde)
    general = "auto" if method == "closed_form" else method
    values = jacobian_frobenius_sq(
        difference, torch.zeros_like(flat_x), method=general, n_projections=n_projections, generator=generator
    )
    return values.reshape(n_copies, x.shape[0])


def _slopes(linear: nn.Linear, activation: nn.Module, x: Tensor) -> Tensor:
    z = linear(x)
    return elementwise_derivative(activation, z, activation(z))


def higher_order_penalty(
    encoder: nn.Module,
    x: Tensor,
    *,
    sigma: float,
    n_corruptions: int,
    method: str = "auto",
    n_projections: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The CAE+H term per sample: mean over K Gaussian copies of ‖J_f(x) − J_f(x̃_k)‖²_F, shape (batch,)."""
    x_tilde = gaussian_copies(x, n_corruptions, sigma, generator=generator)
    return jacobian_difference_sq(
        encoder, x, x_tilde, method=method, n_projections=n_projections, generator=generator
    ).mean(dim=0)


def reconstruction_jacobian_sq(
    autoencoder: nn.Module,
    x: Tensor,
    *,
    method: str = "auto",
    n_projections: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample ‖J_r(x)‖²_F for the whole reconstruction r = g∘f, shape (batch,)."""
    return jacobian_frobenius_sq(
        ReconstructionFunction(autoencoder), x, method=method, n_projections=n_projections, generator=generator
    )
