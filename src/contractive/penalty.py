"""The contractive penalty: the per-sample squared Frobenius norm of the encoder's Jacobian.

For an encoder f: R^D -> R^H and a batch x of shape (B, D), ``jacobian_frobenius_sq(f, x)`` returns the
B values ‖J_f(x_b)‖²_F = Σ_j Σ_i (∂f_j/∂x_i)², differentiable with respect to the encoder's *live*
parameters: the penalty calls the module, it never reads ``state_dict()``, ``.data`` or a detached copy,
so its gradient trains the weights (the bug of the widely copied Keras snippet).

Methods
-------
closed_form
    A single ``nn.Linear`` followed by an elementwise activation φ: h = φ(Wx + b) gives
    J = diag(φ'(z)) W, hence ‖J‖²_F = Σ_j φ'(z_j)² Σ_i W_ji². This costs O(B·H + H·D) on top of the
    forward pass and never builds the (B, H, D) Jacobian.
auto
    The cheapest method that applies to the encoder.
"""

from __future__ import annotations

from torch import Tensor, nn

from .activations import ELEMENTWISE_MODULES, elementwise_derivative
from .errors import ContractiveError

METHODS = ("auto", "closed_form")


def linear_elementwise_parts(encoder: nn.Module) -> tuple[nn.Linear, nn.Module] | None:
    """Split an encoder of the form Linear → elementwise activation, or return ``None``.

    Accepted forms: ``nn.Linear`` alone, or ``nn.Sequential(nn.Linear)`` / ``nn.Sequential(nn.Linear, act)``
    where ``act`` is one of the activations that :func:`contractive.activations.elementwise_derivative`
    knows (sigmoid, tanh, softplus, relu, identity).
    """
    if isinstance(encoder, nn.Linear):
        return encoder, nn.Identity()
    if isinstance(encoder, nn.Sequential) and 1 <= len(encoder) <= 2 and isinstance(encoder[0], nn.Linear):
        activation = encoder[1] if len(encoder) == 2 else nn.Identity()
        if isinstance(activation, ELEMENTWISE_MODULES):
            return encoder[0], activation
    return None


def closed_form(linear: nn.Linear, activation: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Code and per-sample ‖J‖²_F for h = activation(linear(x)), sharing one forward pass.

    Returns
    -------
    h : Tensor, shape (batch, hidden)
    penalty : Tensor, shape (batch,)
    """
    z = linear(x)
    h = activation(z)
    slope = elementwise_derivative(activation, z, h)
    # Σ_i W_ji² once per step (H·D work), then a (B,H)·(H,) product: no (B,H,D) tensor is formed.
    row_norms_sq = linear.weight.pow(2).sum(dim=1)
    return h, slope.pow(2) @ row_norms_sq


def encode_with_penalty(
    encoder: nn.Module,
    x: Tensor,
    *,
    method: str = "auto",
    n_projections: int = 1,
    generator=None,
) -> tuple[Tensor, Tensor]:
    """Return ``(encoder(x), jacobian_frobenius_sq(encoder, x))`` with one shared forward pass.

    Training loops use this so the penalty costs no second encoder pass.
    """
    if method not in METHODS:
        raise ContractiveError(f"unknown penalty method {method!r}; choose one of {', '.join(METHODS)}")
    if x.dim() < 2:
        raise ContractiveError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    parts = linear_elementwise_parts(encoder)
    if parts is None:
        raise ContractiveError(
            f"the closed-form penalty needs Linear + elementwise activation; got {type(encoder).__name__} "
            f"({_describe(encoder)})"
        )
    return closed_form(*parts, x)


def jacobian_frobenius_sq(
    encoder: nn.Module,
    x: Tensor,
    *,
    method: str = "auto",
    n_projections: int = 1,
    generator=None,
) -> Tensor:
    """Per-sample squared Frobenius norm of the encoder's Jacobian, ‖J_f(x_b)‖²_F.

    Parameters
    ----------
    encoder : nn.Module
        Maps a batch of inputs to a batch of codes; called on ``x`` as is.
    x : Tensor, shape (batch, *input_shape)
        Inputs; each sample's Jacobian is taken only with respect to that sample.
    method : {"auto", "closed_form"}
        How to compute it (see the module docstring). ``"auto"`` picks the cheapest that applies.
    n_projections : int
        Number of random probes for stochastic methods.
    generator : torch.Generator, optional
        Source of randomness for stochastic methods.

    Returns
    -------
    Tensor, shape (batch,)
        Differentiable with respect to ``encoder``'s parameters and ``x``.
    """
    _, penalty = encode_with_penalty(encoder, x, method=method, n_projections=n_projections, generator=generator)
    return penalty


def _describe(module: nn.Module) -> str:
    children = [type(m).__name__ for m in module.children()]
    return " → ".join(children) if children else "no submodules"
