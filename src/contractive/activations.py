"""Elementwise activations and their derivatives, as used by the closed-form penalty.

For h = φ(z) the closed form needs φ'(z). Where φ' is cheaper from the output h (sigmoid, tanh) it is
computed from h, which the forward pass already has. Each derivative matches what autograd computes for
the corresponding ``torch.nn`` module, including the linear region of ``nn.Softplus`` above its threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import ContractiveError

ACTIVATION_NAMES = ("sigmoid", "tanh", "softplus", "relu", "identity")
# Modules whose derivative elementwise_derivative knows; the closed-form penalty accepts exactly these.
ELEMENTWISE_MODULES = (nn.Sigmoid, nn.Tanh, nn.Softplus, nn.ReLU, nn.Identity)


def make_activation(name: str) -> nn.Module:
    """Return a fresh ``nn.Module`` for an activation name from :data:`ACTIVATION_NAMES`."""
    modules = {
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "softplus": nn.Softplus,
        "relu": nn.ReLU,
        "identity": nn.Identity,
    }
    if name not in modules:
        raise ContractiveError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATION_NAMES)}")
    return modules[name]()


def elementwise_derivative(activation: nn.Module, z: Tensor, h: Tensor) -> Tensor | None:
    """φ'(z) for a supported elementwise activation module, or ``None`` if it is not supported.

    Parameters
    ----------
    activation : nn.Module
        The activation applied after the linear layer.
    z : Tensor, shape (batch, hidden)
        Pre-activation.
    h : Tensor, shape (batch, hidden)
        ``activation(z)``, reused so sigmoid and tanh need no extra transcendental call.
    """
    if isinstance(activation, nn.Sigmoid):
        return h * (1 - h)
    if isinstance(activation, nn.Tanh):
        return 1 - h * h
    if isinstance(activation, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(activation, nn.Softplus):
        # nn.Softplus(beta, threshold) is linear where beta*z > threshold; its derivative there is exactly 1.
        scaled = activation.beta * z
        return torch.where(scaled > activation.threshold, torch.ones_like(z), torch.sigmoid(scaled))
    if isinstance(activation, nn.Identity):
        return torch.ones_like(z)
    return None
