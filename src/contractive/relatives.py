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
    the BCE loss uses: the DAE↔RCAE link concerns r itself. The wrapper registers the autoencoder, so the
    penalty sees (and trains) its live parameters; it is built per call and never stored on the model,
    so the weights are not registered twice anywhere.
    """

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: Tensor) -> Tensor:
        return self.autoencoder.decode(self.autoencoder.encode(x))


class _JacobianDifference(nn.Module):
    """w_b = (u_b, x_b, x̃_b) ↦ f(x_b + u_b) − f(x̃_b + u_b), with x and x̃ detached.

    Its Jacobian with respect to w_b is [J_f(x_b) − J_f(x̃_b), 0, 0]: the derivative in u is the difference
    of the two Jacobians and x, x̃ are constants (detached), so ‖J_g(w_b)‖²_F = ‖J_f(x_b) − J_f(x̃_b)‖²_F
    and any general method of :func:`contractive.penalty.jacobian_frobenius_sq` applies (exact, or
    projected, whose probes on the constant parts contribute exactly 0). The points travel inside the
    input so that methods which vmap over samples see each sample's own x_b and x̃_b.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, w: Tensor) -> Tensor:
        u, x, x_tilde = w.unbind(dim=1)
        return self.encoder(x.detach() + u) - self.encoder(x_tilde.detach() + u)


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
    norm is one call of :func:`~contractive.penalty.jacobian_frobenius_sq` on that function (see
    ``_JacobianDifference``), with the K copies flattened into the batch.
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
    points = torch.stack([torch.zeros_like(flat_x), flat_x, flat_tilde], dim=1)  # (K·B, 3, *input_shape)
    values = jacobian_frobenius_sq(
        _JacobianDifference(encoder), points, method=method, n_projections=n_projections, generator=generator
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
    """Per-sample ‖J_r(x)‖²_F for the whole reconstruction r = g∘f, shape (batch,).

    Parameters
    ----------
    autoencoder : nn.Module
        Has ``encode`` and ``decode``. The closed form applies to a single-layer
        :class:`~contractive.models.Autoencoder` (Linear + elementwise encoder, untied ``nn.Linear`` or tied
        decoder, sigmoid or linear output).
    x : Tensor, shape (batch, n_features)
    method : str
        ``"auto"`` uses the closed form below for a single-layer autoencoder and the general methods of
        :func:`contractive.penalty.jacobian_frobenius_sq` (applied to :class:`ReconstructionFunction`)
        otherwise; ``"closed_form"`` insists on the closed form; other values go to the general path.

    Notes
    -----
    Closed form. With h = φ(Wx + b) and r = ψ(Vh + c) (V = Wᵀ when tied), J_r = diag(d) V diag(s) W where
    s = φ'(Wx + b) ∈ R^H and d = ψ'(Vh + c) ∈ R^D, so

        ‖J_r‖²_F = Σ_{k,l} s_k s_l (W Wᵀ)_{kl} (Vᵀ diag(d²) V)_{kl}.

    The per-sample matrix Vᵀ diag(d²) V is (H, H), built in O(B·D·H²); J_r itself, (B, D, D), is never
    formed. For a linear decoder d = 1 and that matrix is shared by the whole batch.
    """
    parts = _single_layer_parts(autoencoder)
    if method == "closed_form" and parts is None:
        raise ContractiveError(
            "the closed-form ‖J_r‖²_F needs a single-layer autoencoder (Linear + elementwise activation, "
            "a linear or tied decoder, sigmoid or linear output)"
        )
    if parts is not None and method in ("auto", "closed_form"):
        linear, activation, decoder_weight, decoder_output = parts
        z = linear(x)
        h = activation(z)
        s = elementwise_derivative(activation, z, h)  # (B, H)
        gram_encoder = linear.weight @ linear.weight.t()  # (H, H) = W Wᵀ
        if decoder_output == "linear":
            decoder_gram = (decoder_weight.t() @ decoder_weight).unsqueeze(0)  # (1, H, H)
        else:
            r = autoencoder.decode(h)
            d_sq = (r * (1 - r)).pow(2)  # ψ' of the sigmoid output, squared: (B, D)
            decoder_gram = torch.einsum("bi,ik,il->bkl", d_sq, decoder_weight, decoder_weight)
        return torch.einsum("bk,bkl,bl->b", s, decoder_gram * gram_encoder, s)
    return jacobian_frobenius_sq(
        ReconstructionFunction(autoencoder), x, method=method, n_projections=n_projections, generator=generator
    )


@torch.no_grad()
def denoising_excess(
    model: nn.Module,
    x: Tensor,
    *,
    sigma: float,
    n_draws: int = 1000,
    chunk: int = 250,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte Carlo estimate of (E_ε‖x − r(x + ε)‖² − ‖x − r(x)‖²) / σ², ε ~ N(0, σ²I), per sample.

    As σ → 0 this tends to ‖J_r(x)‖²_F − Σ_i e_i Δr_i(x) with e = x − r(x) (second-order Taylor
    expansion; the Laplacian term vanishes where r reconstructs x, which is the DAE↔RCAE link of Alain &
    Bengio). Draws come in antithetic pairs ±ε: the pair mean is an unbiased estimate of the same
    expectation in which the first-order term −2σ eᵀJε cancels exactly; without that its variance,
    O(1/σ²) after dividing by σ², would swamp the estimate at small σ. Use float64 models for small σ,
    where the difference of nearly equal losses would otherwise lose its digits.

    Parameters
    ----------
    model : nn.Module
        Reconstruction function r: (batch, D) → (batch, D) in data space (an autoencoder's forward).
    x : Tensor, shape (batch, D)
    sigma : float
    n_draws : int
        Number of antithetic pairs per sample.
    chunk : int
        Pairs evaluated at once (bounds memory at 2·chunk·batch·D).

    Returns
    -------
    Tensor, shape (batch,)
    """
    clean = (x - model(x)).pow(2).sum(dim=1)  # (B,)
    total = torch.zeros_like(clean)
    done = 0
    while done < n_draws:
        k = min(chunk, n_draws - done)
        eps = sigma * torch.randn((k, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
        noisy = torch.cat([x + eps, x - eps]).reshape(-1, x.shape[-1])
        losses = (x.repeat(2 * k, 1) - model(noisy)).pow(2).sum(dim=1).reshape(2, k, -1)
        total += (losses.mean(dim=0) - clean).sum(dim=0)
        done += k
    return total / n_draws / sigma**2


def _single_layer_parts(autoencoder: nn.Module):
    """(encoder linear, activation, decoder weight V of shape (D, H), output "sigmoid"/"linear") or None."""
    encoder = getattr(autoencoder, "encoder", None)
    config = getattr(autoencoder, "config", None)
    parts = linear_elementwise_parts(encoder) if isinstance(encoder, nn.Module) else None
    if (
        parts is None
        or getattr(config, "layers", None)
        or getattr(config, "decoder", None) not in ("sigmoid", "linear")
    ):
        return None
    decoder = getattr(autoencoder, "decoder", None)
    if isinstance(decoder, nn.Linear):
        weight = decoder.weight
    elif hasattr(decoder, "_tied_to"):
        weight = decoder._tied_to[0].weight.t()  # the tied decoder computes Wᵀh + c from the live W
    else:
        return None
    return parts[0], parts[1], weight, config.decoder
