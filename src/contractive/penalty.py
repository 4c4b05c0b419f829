"""The contractive penalty: the per-sample squared Frobenius norm of the encoder's Jacobian.

For an encoder f: R^D -> R^H and a batch x of shape (B, D), ``jacobian_frobenius_sq(f, x)`` returns the
B values ‖J_f(x_b)‖²_F = Σ_j Σ_i (∂f_j/∂x_i)², differentiable with respect to the encoder's *live*
parameters: the penalty calls the module, it never reads ``state_dict()``, ``.data`` or a detached copy,
so its gradient trains the weights (the bug of the widely copied Keras snippet). The graph it builds is an
ordinary first-order graph: callers train with a plain ``loss.backward()``.

Each sample's Jacobian is taken with respect to that sample only; no method ever forms a Jacobian that
crosses samples (no (B, H, B, D) tensor), so memory is O(B·H·D) at most.

Methods
-------
closed_form
    A single ``nn.Linear`` followed by an elementwise activation φ: h = φ(Wx + b) gives
    J = diag(φ'(z)) W, hence ‖J‖²_F = Σ_j φ'(z_j)² Σ_i W_ji². This costs O(B·H + H·D) on top of the
    forward pass and never builds the (B, H, D) Jacobian.
exact
    The exact value for any differentiable encoder. Two strategies:

    * ``chain`` — the encoder is a chain of ``nn.Linear`` layers and elementwise activations (an MLP with
      any depth and mix of sigmoid/tanh/softplus/relu/identity). Then J = S_m W_m ⋯ S_1 W_1 with S_l the
      diagonal of activation slopes, and the norm is accumulated from the code side,
      M_b = S_m W_m ⋯ W_2 S_1 of shape (B, H_m, H_1), finishing with the Gram matrix of the first layer,
      ‖J_b‖²_F = tr(M_b (W_1 W_1ᵀ) M_bᵀ) when H_1 < D (or ‖M_b W_1‖²_F otherwise), or from the input side
      when that is cheaper (small D). No autograd through a Jacobian transform, no vmap.
    * ``jacrev`` / ``jacfwd`` — any other encoder (convolutions, pooling, LayerNorm, BatchNorm in eval
      mode, plain functions): ``torch.func.vmap`` over samples of ``jacrev`` (when the code is smaller
      than the input) or ``jacfwd`` (otherwise), in chunks of samples that bound the transient memory.
projection
    An unbiased random-projection (Hutchinson) estimate with k = ``n_projections`` probes:
    ‖J‖²_F = E_v ‖J v‖² for v with E[v vᵀ] = I (Rademacher ±1 or Gaussian entries), averaged over k
    independent probes per sample, so its variance falls as 1/k. ``J v`` is a Jacobian-vector product
    (forward mode, ``mode="forward"``), ``Jᵀ u`` with u in the code space a vector-Jacobian product
    (reverse mode, ``mode="reverse"``). Forward mode costs about one extra forward pass and its gradient
    one extra ordinary backward pass, whereas reverse mode costs a backward pass and its gradient a
    double backward, so ``mode="auto"`` uses forward mode unless the encoder has an operation without a
    forward-mode derivative (e.g. ``grid_sample``). For chains of affine layers (Linear, Conv),
    elementwise activations, reshapes and average pooling (``chain-jvp``: MLPs, the default conv encoder)
    the probes ride along the forward pass as extra rows of the same batch.
auto
    Closed form where it applies; exact where it is affordable; projection otherwise. "Affordable" means
    the exact method costs at most :data:`AUTO_EXACT_MAX_COST` forward passes when gradients are needed
    (training), with the batch's Jacobians within :data:`AUTO_MAX_JACOBIAN_ELEMENTS` numbers, and at most
    :data:`AUTO_EXACT_MAX_COST_NO_GRAD` under ``torch.no_grad()`` (evaluation, computed in chunks of
    samples so memory stays bounded). :func:`choose_method` returns
    the choice and the reason; it is also logged (logger ``contractive.penalty``, level INFO) the first
    time an encoder uses it.

Errors
------
* BatchNorm that normalises with batch statistics (training mode, or ``track_running_stats=False``)
  makes every code depend on the whole batch, so a per-sample Jacobian does not exist:
  :class:`~contractive.errors.ContractiveError`, suggesting ``eval()`` or a per-sample normalisation.
* An operation the penalty's gradient cannot differentiate (no double backward, e.g. ``torch.cdist``;
  no forward-mode derivative when forward mode is forced, e.g. ``grid_sample``) is reported when the
  penalty is first computed for an encoder, naming the operation and what to use instead, instead of
  failing later inside ``loss.backward()``.
* An encoder that ignores its input has penalty 0.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .activations import ELEMENTWISE_MODULES, elementwise_derivative
from .errors import ContractiveError

METHODS = ("auto", "closed_form", "exact", "projection")
PROBES = ("rademacher", "gaussian")
MODES = ("auto", "forward", "reverse")

# "auto" uses the exact method when it costs at most this many forward passes of the encoder ...
AUTO_EXACT_MAX_COST = 16
# ... or this many when no gradient is needed (evaluation under torch.no_grad()).
AUTO_EXACT_MAX_COST_NO_GRAD = 1024
# ... and, when gradients are needed (the graph keeps them), the batch's per-sample Jacobians hold at most
# this many numbers (256 MiB in float32).
AUTO_MAX_JACOBIAN_ELEMENTS = 2**26
# The exact method processes samples in chunks whose Jacobians hold at most this many numbers (16 MiB in
# float32), which bounds its memory under torch.no_grad() and its transient memory otherwise.
EXACT_CHUNK_ELEMENTS = 2**22

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PenaltyPlan:
    """How :func:`jacobian_frobenius_sq` computes the penalty for a given encoder and input.

    Attributes
    ----------
    method : {"closed_form", "exact", "projection"}
        The method ("auto" resolved).
    strategy : str
        How: ``closed_form``; ``chain`` (structured exact for Linear + elementwise chains), ``jacrev`` or
        ``jacfwd`` (vmapped torch.func exact); ``chain-jvp`` (probes as extra rows of a chain of affine
        layers and activations), ``jvp`` or ``vjp`` (torch.func; projection).
    reason : str
        Why this was chosen, in words.
    """

    method: str
    strategy: str
    reason: str

    def __str__(self) -> str:
        return f"{self.method} ({self.strategy}): {self.reason}"


# ----------------------------------------------------------------------------------------------------------
# Public API


def jacobian_frobenius_sq(
    encoder,
    x: Tensor,
    *,
    method: str = "auto",
    n_projections: int = 1,
    generator: torch.Generator | None = None,
    probe: str = "rademacher",
    mode: str = "auto",
) -> Tensor:
    """Per-sample squared Frobenius norm of the encoder's Jacobian, ‖J_f(x_b)‖²_F.

    Parameters
    ----------
    encoder : nn.Module or callable
        Maps a batch of inputs to a batch of codes; called on ``x`` as is. Samples must not interact
        (no BatchNorm with batch statistics).
    x : Tensor, shape (batch, *input_shape)
        Inputs; each sample's Jacobian is taken only with respect to that sample.
    method : {"auto", "closed_form", "exact", "projection"}
        How to compute it (see the module docstring). ``"auto"`` picks the cheapest that applies.
    n_projections : int
        Number k of random probes per sample for ``"projection"``; the variance falls as 1/k.
    generator : torch.Generator, optional
        Source of the probes (seed it for reproducible estimates); default: torch's global generator.
    probe : {"rademacher", "gaussian"}
        Distribution of the probes' entries (±1 with equal probability, or standard normal).
    mode : {"auto", "forward", "reverse"}
        Projection by Jacobian-vector products (forward mode) or vector-Jacobian products (reverse mode).

    Returns
    -------
    Tensor, shape (batch,)
        Differentiable with respect to ``encoder``'s parameters and ``x``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from contractive import jacobian_frobenius_sq
    >>> linear = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = linear.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -4.0]]))
    >>> jacobian_frobenius_sq(linear, torch.randn(3, 2), method="exact").tolist()
    [30.0, 30.0, 30.0]
    """
    _, penalty = encode_with_penalty(
        encoder, x, method=method, n_projections=n_projections, generator=generator, probe=probe, mode=mode
    )
    return penalty


def encode_with_penalty(
    encoder,
    x: Tensor,
    *,
    method: str = "auto",
    n_projections: int = 1,
    generator: torch.Generator | None = None,
    probe: str = "rademacher",
    mode: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Return ``(encoder(x), jacobian_frobenius_sq(encoder, x, ...))`` from one shared forward pass.

    Training loops use this so the penalty costs no second encoder pass. Arguments as for
    :func:`jacobian_frobenius_sq`.
    """
    if probe not in PROBES:
        raise ContractiveError(f"unknown probe distribution {probe!r}; choose one of {', '.join(PROBES)}")
    if isinstance(x, Tensor) and x.dim() >= 2 and x.shape[0] == 0:
        # An empty batch has an empty penalty whatever the method; the strategies below (and the one-sample
        # probe of the encoder's output) all assume at least one sample.
        _check_options(method, mode, n_projections)
        return encoder(x), x.new_zeros((0,))
    plan = choose_method(encoder, x, method=method, n_projections=n_projections, mode=mode)
    _log_plan(encoder, x, plan)
    if plan.strategy == "closed_form":
        return closed_form(*linear_elementwise_parts(encoder), x)
    if plan.strategy == "chain":
        return _exact_chain(_chain_stages(encoder), x)
    if plan.strategy == "chain-jvp":
        return _projection_affine(_affine_ops(encoder), x, n_projections, generator, probe)
    # torch.func strategies: check once per encoder that the penalty's own gradient can be taken.
    _check_differentiable_twice(encoder, x, plan.strategy, probe)
    return _run_generic(encoder, x, plan.strategy, n_projections, generator, probe)


def _check_options(method: str, mode: str, n_projections: int) -> None:
    if method not in METHODS:
        raise ContractiveError(f"unknown penalty method {method!r}; choose one of {', '.join(METHODS)}")
    if mode not in MODES:
        raise ContractiveError(f"unknown projection mode {mode!r}; choose one of {', '.join(MODES)}")
    if not isinstance(n_projections, int) or isinstance(n_projections, bool) or n_projections < 1:
        raise ContractiveError(f"n_projections must be an integer ≥ 1, got {n_projections!r}")


def choose_method(
    encoder,
    x: Tensor,
    *,
    method: str = "auto",
    n_projections: int = 1,
    mode: str = "auto",
) -> PenaltyPlan:
    """Decide how the penalty of ``encoder`` at inputs shaped like ``x`` is computed, and why.

    Inspects the encoder's structure and sizes only (a non-chain encoder is run once on one sample to
    learn its code size, and that is cached). Raises :class:`ContractiveError` for an unknown method, a
    method that does not apply (closed form on anything but Linear + elementwise), or BatchNorm with batch
    statistics.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from contractive.penalty import choose_method
    >>> print(choose_method(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()), torch.zeros(2, 4)))
    closed_form (closed_form): a single Linear + Sigmoid has a closed form
    """
    _check_options(method, mode, n_projections)
    if not isinstance(x, Tensor) or x.dim() < 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ContractiveError(f"x must be a tensor with a batch dimension, got {shape}")
    if not callable(encoder):
        raise ContractiveError(f"encoder must be an nn.Module or a callable, got {type(encoder).__name__}")

    parts = linear_elementwise_parts(encoder)
    if method == "closed_form":
        if parts is None:
            raise ContractiveError(
                f"the closed-form penalty needs Linear + elementwise activation; got {type(encoder).__name__} "
                f"({_describe(encoder)}); use method 'exact' or 'projection' for other encoders"
            )
        return PenaltyPlan("closed_form", "closed_form", "requested")
    if method == "auto" and parts is not None and x.dim() == 2:
        # Decided before the costlier structural checks below: this runs on every training step.
        return PenaltyPlan(
            "closed_form", "closed_form", f"a single Linear + {type(parts[1]).__name__} has a closed form"
        )
    _reject_batch_statistics(encoder)

    stages = _chain_stages(encoder) if x.dim() == 2 else None
    structured = mode != "reverse" and _affine_ops(encoder) is not None

    def projection_strategy() -> str:
        return "chain-jvp" if structured else _projection_strategy(encoder, x, mode)

    needs_grad = _needs_grad(encoder, x)
    budget = AUTO_EXACT_MAX_COST if needs_grad else AUTO_EXACT_MAX_COST_NO_GRAD
    when = "with gradients" if needs_grad else "without gradients"

    if stages is not None:
        batch, in_features = x.shape[0], x.shape[1]
        exact_cost, forward_cost = _chain_costs(stages, in_features)
        if method == "exact":
            return PenaltyPlan("exact", "chain", "requested; Linear + elementwise chain")
        if method == "projection":
            return PenaltyPlan("projection", projection_strategy(), f"requested with {n_projections} probe(s)")
        ratio = exact_cost / forward_cost
        elements = batch * _chain_jacobian_elements(stages, in_features)
        if ratio <= budget and (elements <= AUTO_MAX_JACOBIAN_ELEMENTS or not needs_grad):
            return PenaltyPlan(
                "exact",
                "chain",
                f"Linear + elementwise chain; exact costs ≈{ratio:.3g} forward passes ≤ {budget} {when}",
            )
        return PenaltyPlan(
            "projection",
            projection_strategy(),
            f"Linear + elementwise chain; exact would cost ≈{ratio:.3g} forward passes (> {budget} {when}) "
            f"or {elements} Jacobian entries; {n_projections} probe(s) instead",
        )

    in_size = math.prod(x.shape[1:])
    out_size = _code_size(encoder, x)
    exact_strategy = "jacrev" if out_size <= in_size else "jacfwd"
    if method == "exact":
        return PenaltyPlan("exact", exact_strategy, f"requested; {out_size} outputs, {in_size} inputs per sample")
    if method == "projection":
        return PenaltyPlan("projection", projection_strategy(), f"requested with {n_projections} probe(s)")
    ratio = min(in_size, out_size)
    elements = x.shape[0] * in_size * out_size
    if ratio <= budget and (elements <= AUTO_MAX_JACOBIAN_ELEMENTS or not needs_grad):
        return PenaltyPlan(
            "exact",
            exact_strategy,
            f"general encoder, {out_size} outputs × {in_size} inputs; exact costs ≈{ratio} passes ≤ {budget} {when}",
        )
    return PenaltyPlan(
        "projection",
        projection_strategy(),
        f"general encoder, {out_size} outputs × {in_size} inputs; exact would cost ≈{ratio} passes "
        f"(> {budget} {when}) or {elements} Jacobian entries; {n_projections} probe(s) instead",
    )


# ----------------------------------------------------------------------------------------------------------
# Closed form (single Linear + elementwise activation)


def linear_elementwise_parts(encoder) -> tuple[nn.Linear, nn.Module] | None:
    """Split an encoder of the form Linear → elementwise activation, or return ``None``.

    Accepted forms: ``nn.Linear`` alone, or ``nn.Sequential(nn.Linear)`` / ``nn.Sequential(nn.Linear, act)``
    where ``act`` is one of the activations that :func:`contractive.activations.elementwise_derivative`
    knows (sigmoid, tanh, softplus, relu, identity).
    """
    stages = _chain_stages(encoder)
    if stages is None or len(stages) != 1:
        return None
    linear, activations = stages[0]
    if len(activations) > 1:
        return None
    return linear, (activations[0] if activations else nn.Identity())


def closed_form(linear: nn.Linear, activation: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Code and per-sample ‖J‖²_F for h = activation(linear(x)), sharing one forward pass.

    Returns
    -------
    h : Tensor, shape (batch, hidden)
    penalty : Tensor, shape (batch,)
    """
    if type(activation) in (nn.Sigmoid, nn.Tanh) and x.dim() == 2:
        h, penalty, _ = _SaturatingLayerPenalty.apply(x, linear.weight, linear.bias, type(activation) is nn.Tanh)
        return h, penalty
    z, weight_row_norms_sq = linear_and_row_norms_sq(x, linear.weight, linear.bias)
    h = activation(z)
    slope = elementwise_derivative(activation, z, h)
    # Σ_i W_ji² once per step (H·D work), then a (B,H)·(H,) product: no (B,H,D) tensor is formed.
    return h, slope.pow(2) @ weight_row_norms_sq


def _signature_cached(function_class: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """Cache ``forward``'s signature on a setup_context-style Function.

    torch's ``Function.apply`` binds the arguments with ``inspect.signature(forward)`` on every call for such
    Functions, and inspect rebuilds the signature each time (~40 µs: ~0.4% of a 784→1000 training step).
    ``inspect`` returns a function's ``__signature__`` as is, so one is set here.
    """
    function_class.forward.__signature__ = inspect.signature(function_class.forward)
    return function_class


@_signature_cached
class _SaturatingLayerPenalty(torch.autograd.Function):
    """``(h, p)`` with h = φ(x Wᵀ + b) and p_b = Σ_j φ'(z_bj)² ‖W_j‖², for φ = sigmoid or tanh, as one op.

    The same numbers as the composition in :func:`closed_form`, but with a hand-written backward. Composed
    from autograd ops, the penalty's backward is about ten small (B, H) tensors, each freshly allocated; at
    784→1000, batch 128, those allocations and passes cost ~12% of a training step, the bulk of what the
    penalty added. Here the backward makes three (B, H) tensors and works in place on them:

        φ' = h(1−h),  φ'' = φ'(1−2h)     (sigmoid)
        φ' = 1−h²,    φ'' = −2hφ'         (tanh)
        ∂p_b/∂z_bj = 2 φ'_bj φ''_bj ‖W_j‖²,   ∂p_b/∂W_j = 2 φ'_bj² W_j  (+ the first term through z).

    When a graph of the gradient itself is being built (double backward), it falls back to autograd over
    the composed ops, so higher derivatives stay exact.
    """

    generate_vmap_rule = True  # usable under torch.func.vmap / jacrev as well

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, tanh: bool) -> tuple[Tensor, Tensor, Tensor]:
        z = F.linear(x, weight, bias)
        h = torch.tanh(z) if tanh else torch.sigmoid(z)
        norms = torch.linalg.vector_norm(weight, dim=1).square()
        slope = _saturating_slope(h, tanh)
        return h, slope.mul_(slope) @ norms, norms

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, tanh = inputs
        h, _, norms = output
        ctx.mark_non_differentiable(norms)
        ctx.save_for_backward(x, weight, bias, h, norms)
        ctx.tanh = tanh

    @staticmethod
    def backward(ctx, grad_h: Tensor, grad_penalty: Tensor, _grad_norms: Tensor | None):
        x, weight, bias, h, norms = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _saturating_layer_backward_composed(ctx, x, weight, bias, grad_h, grad_penalty)
        slope = _saturating_slope(h, ctx.tanh)
        grad_z = grad_h * slope
        slope_sq = slope.square_()  # slope is not needed any more
        grad_norms = slope_sq.t() @ grad_penalty if ctx.needs_input_grad[1] else None
        # ∂(φ'²)/∂z = 2φ'φ'' = 2φ'²(1−2h) for sigmoid, −4hφ'² for tanh; computed in place on φ'².
        if ctx.tanh:
            slope_sq.mul_(h).mul_(-2)
        else:
            slope_sq.addcmul_(slope_sq, h, value=-2)
        grad_z.addcmul_(slope_sq.mul_(grad_penalty.unsqueeze(1)), norms, value=2)
        grad_x = grad_z @ weight if ctx.needs_input_grad[0] else None
        grad_weight = None
        if grad_norms is not None:
            grad_weight = (grad_z.t() @ x).addcmul_(weight, grad_norms.unsqueeze(1), value=2)
        grad_bias = grad_z.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def _saturating_slope(h: Tensor, tanh: bool) -> Tensor:
    """φ'(z) from h = φ(z): 1 − h² for tanh, h − h² for sigmoid (a fresh tensor either way)."""
    return (h * h).neg_().add_(1) if tanh else torch.addcmul(h, h, h, value=-1)


def _saturating_layer_backward_composed(ctx, x, weight, bias, grad_h, grad_penalty):
    """The backward of :class:`_SaturatingLayerPenalty` by autograd over the composed forward (double backward)."""
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
    activation = nn.Tanh() if ctx.tanh else nn.Sigmoid()
    z, norms = linear_and_row_norms_sq(x, weight, bias)
    h = activation(z)
    penalty = elementwise_derivative(activation, z, h).pow(2) @ norms
    grads = iter(torch.autograd.grad((h, penalty), inputs, (grad_h, grad_penalty), create_graph=True))
    return tuple(next(grads) if t is not None and t.requires_grad else None for t in (x, weight, bias)) + (None,)


@_signature_cached
class _LinearAndRowNormsSq(torch.autograd.Function):
    """``z = x Wᵀ + b`` and ``r_j = Σ_i W_ji²`` in one op, so the penalty's gradient 2·r̄_j·W_j is added
    *in place* into the (H, D) weight gradient that the linear layer's backward allocates anyway.

    Computed as separate autograd ops, ``W.pow(2).sum(1)`` costs a fresh (H, D) tensor in the forward and
    another in the backward, which autograd then adds to the encoder's gradient: on a 784→1000 layer those
    freshly allocated 3 MB buffers (page faults on first touch) made a CAE step ~25% slower than a plain AE
    step. Here the only extra (H, D) work is one reduction forward and one in-place ``addcmul_`` backward.
    The backward is written with differentiable ops, so double backward (gradgradcheck, CAE+H) still works.
    """

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        z = F.linear(x, weight, bias)
        # A reduction with no (H, D) temporary; sqrt-then-square costs at most ~2 ulp of rounding.
        return z, torch.linalg.vector_norm(weight, dim=1).square()

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_norms: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        flat_grad_z = grad_z.reshape(-1, grad_z.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = grad_z @ weight
        if ctx.needs_input_grad[1]:
            grad_weight = flat_grad_z.t() @ x.reshape(-1, x.shape[-1])
            grad_weight.addcmul_(weight, grad_norms.unsqueeze(1), value=2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad_z.sum(0)
        return grad_x, grad_weight, grad_bias


def linear_and_row_norms_sq(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(F.linear(x, weight, bias), Σ_i weight_ji²)``: shapes (..., H) and (H,); differentiable twice."""
    return _LinearAndRowNormsSq.apply(x, weight, bias)


def row_norms_sq(weight: Tensor) -> Tensor:
    """Squared Euclidean norm of each row of ``weight`` (shape (H, D) → (H,)), differentiable twice."""
    return torch.linalg.vecdot(weight, weight, dim=1)


# ----------------------------------------------------------------------------------------------------------
# Exact, structured: chains of Linear + elementwise activations

# A chain is a list of stages (linear, activations applied after it); J = S_m W_m ⋯ S_1 W_1.
Stage = tuple[nn.Linear, tuple[nn.Module, ...]]


def _plain(module: nn.Module, base: type) -> bool:
    """``module`` is exactly ``base``'s forward (no subclass override) and has no hooks that change it."""
    return (
        type(module).forward is base.forward
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and not getattr(module, "_forward_hooks_with_kwargs", None)
    )


def _global_hooks_active() -> bool:
    """Module hooks registered for every module would be skipped by the structured paths."""
    module = torch.nn.modules.module
    return bool(getattr(module, "_global_forward_hooks", None) or getattr(module, "_global_forward_pre_hooks", None))


def _chain_stages(encoder) -> list[Stage] | None:
    """The encoder as Linear + elementwise stages, or ``None`` if it is anything else.

    Accepts ``nn.Linear`` and (nested) ``nn.Sequential``s of ``nn.Linear`` and the elementwise activations
    of :data:`contractive.activations.ELEMENTWISE_MODULES`, starting with a Linear.
    """
    if not isinstance(encoder, nn.Module) or _global_hooks_active():
        return None
    flat: list[nn.Module] = []

    def visit(module: nn.Module) -> bool:
        if isinstance(module, nn.Sequential):
            if not _plain(module, nn.Sequential):
                return False
            return all(visit(child) for child in module)
        flat.append(module)
        return True

    if not visit(encoder):
        return None
    stages: list[list] = []
    for module in flat:
        if isinstance(module, nn.Linear) and _plain(module, nn.Linear):
            stages.append([module, []])
        elif type(module) in ELEMENTWISE_MODULES and _plain(module, type(module)) and stages:
            if not isinstance(module, nn.Identity):
                stages[-1][1].append(module)
        else:
            return None
    if not stages:
        return None
    return [(linear, tuple(acts)) for linear, acts in stages]


def _chain_costs(stages: list[Stage], in_features: int) -> tuple[float, float]:
    """(exact cost, forward cost) per sample in multiply-adds, for the cheaper accumulation order."""
    sizes = [in_features] + [linear.out_features for linear, _ in stages]
    forward = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return min(_reverse_cost(sizes), _forward_cost(sizes)), forward


def _reverse_cost(sizes: list[int]) -> int:
    # M = S_m W_m ⋯ W_2 S_1 (H_m × H_1 per sample), then M W_1 or tr(M G Mᵀ) with G = W_1 W_1ᵀ.
    out, first = sizes[-1], sizes[1]
    middle = sum(out * a * b for a, b in zip(sizes[1:-2], sizes[2:-1], strict=True))
    return middle + out * first * min(first, sizes[0])


def _forward_cost(sizes: list[int]) -> int:
    # U = S_l W_l ⋯ S_1 W_1 (H_l × D per sample), built from the input side.
    return sum(sizes[0] * a * b for a, b in zip(sizes[1:-1], sizes[2:], strict=True))


def _chain_jacobian_elements(stages: list[Stage], in_features: int) -> int:
    sizes = [in_features] + [linear.out_features for linear, _ in stages]
    return sizes[-1] * sizes[1] if _reverse_cost(sizes) <= _forward_cost(sizes) else max(sizes[1:]) * in_features


def _chain_forward(stages: list[Stage], x: Tensor) -> tuple[Tensor, list[Tensor | None]]:
    """Run the chain; return the code and each stage's activation slopes (``None`` for the identity)."""
    h, slopes = x, []
    for linear, activations in stages:
        z = linear(h)
        slope = None
        for activation in activations:
            out = activation(z)
            derivative = elementwise_derivative(activation, z, out)
            slope = derivative if slope is None else slope * derivative
            z = out
        h = z
        slopes.append(slope)
    return h, slopes


def _exact_chain(stages: list[Stage], x: Tensor) -> tuple[Tensor, Tensor]:
    h, slopes = _chain_forward(stages, x)
    weights = [linear.weight for linear, _ in stages]
    batch = x.shape[0]
    if len(stages) == 1:
        # The closed form: ‖diag(s) W‖²_F = Σ_j s_j² ‖W_j‖².
        norms = row_norms_sq(weights[0])
        penalty = slopes[0].pow(2) @ norms if slopes[0] is not None else norms.sum().expand(batch)
        return h, penalty
    sizes = [x.shape[1]] + [w.shape[0] for w in weights]
    reverse = _reverse_cost(sizes) <= _forward_cost(sizes)
    first = weights[0]
    # Gram matrix of the smaller side, once per batch: ‖M W_1‖²_F = tr(M (W_1 W_1ᵀ) Mᵀ) costs H_1² per row
    # of M instead of H_1·D.
    gram = None
    if reverse and first.shape[0] < first.shape[1]:
        gram = first @ first.t()
        gram = (gram + gram.t()) / 2  # exactly symmetric, as _GramTrace's backward assumes
    # Chunks of samples bound the size of the per-sample matrices (all that evaluation keeps in memory).
    chunk = max(1, EXACT_CHUNK_ELEMENTS // _chain_jacobian_elements(stages, x.shape[1]))
    pieces = []
    for start in range(0, batch, chunk):
        part = [None if slope is None else slope[start : start + chunk] for slope in slopes]
        piece = _chain_reverse(weights, part, gram) if reverse else _chain_from_input(weights, part)
        pieces.append(piece.expand(min(chunk, batch - start)))
    return h, torch.cat(pieces)


def _chain_reverse(weights: list[Tensor], slopes: list[Tensor | None], gram: Tensor | None) -> Tensor:
    """‖J‖²_F from the code side: M = S_m W_m S_{m-1} ⋯ W_2 S_1, shape (b or 1, H_m, H_1), then W_1."""
    m = weights[-1].unsqueeze(0)
    if slopes[-1] is not None:
        m = slopes[-1].unsqueeze(2) * m
    for weight, slope in zip(reversed(weights[1:-1]), reversed(slopes[1:-1]), strict=True):
        if slope is not None:
            m = m * slope.unsqueeze(1)
        m = m @ weight
    if slopes[0] is not None:
        m = m * slopes[0].unsqueeze(1)
    if gram is not None:
        return _GramTrace.apply(m, gram)
    return (m @ weights[0]).pow(2).sum(dim=(1, 2))


class _GramTrace(torch.autograd.Function):
    """q_b = tr(M_b G M_bᵀ) for a symmetric G, with a backward that reuses M G.

    Autograd would spend two matrix products on the backward of ``((M @ G) * M).sum()``; here
    ∂q_b/∂M_b = 2 M_b G is already known from the forward pass and only ∂/∂G = Σ_b g_b M_bᵀ M_b costs one.
    First-order only (the penalty's gradient is all that training needs).
    """

    @staticmethod
    def forward(ctx, m: Tensor, gram: Tensor) -> Tensor:
        mg = m @ gram
        ctx.save_for_backward(m, mg)
        return (mg * m).sum(dim=(1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        m, mg = ctx.saved_tensors
        weight = grad.view(-1, 1, 1)
        grad_m = 2 * weight * mg if ctx.needs_input_grad[0] else None
        grad_gram = None
        if ctx.needs_input_grad[1]:
            grad_gram = (weight * m).flatten(0, 1).t() @ m.flatten(0, 1)
        return grad_m, grad_gram


def _chain_from_input(weights: list[Tensor], slopes: list[Tensor | None]) -> Tensor:
    """‖J‖²_F from the input side: U = S_l W_l ⋯ S_1 W_1, shape (b or 1, H_l, D); cheaper when D is small."""
    u = weights[0].unsqueeze(0)
    for index, weight in enumerate(weights):
        if index:
            u = weight @ u
        if slopes[index] is not None:
            u = slopes[index].unsqueeze(2) * u
    return u.pow(2).sum(dim=(1, 2))


# ----------------------------------------------------------------------------------------------------------
# Projection, structured: probes ride along the chain's forward pass


def _draw_probes(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None, probe: str) -> Tensor:
    """k probe vectors with E[v vᵀ] = I: Rademacher (±1) or standard Gaussian entries."""
    device = generator.device if generator is not None else like.device
    if probe == "rademacher":
        draws = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int8)
        values = draws.to(like.dtype).mul_(2).sub_(1)
    else:
        values = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return values.to(like.device)


# Modules that act on each sample linearly (the tangent goes through them unchanged) or as a reshape.
_LINEAR_PER_SAMPLE = (nn.Identity, nn.Flatten, nn.Unflatten, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _affine_ops(encoder) -> list[nn.Module] | None:
    """The encoder as a flat list of affine layers (Linear, Conv), elementwise activations and per-sample
    linear maps (Flatten, Unflatten, average pooling), or ``None`` if it contains anything else."""
    if not isinstance(encoder, nn.Module) or _global_hooks_active():
        return None
    flat: list[nn.Module] = []

    def visit(module: nn.Module) -> bool:
        if isinstance(module, nn.Sequential):
            return _plain(module, nn.Sequential) and all(visit(child) for child in module)
        flat.append(module)
        return True

    if not visit(encoder):
        return None
    for module in flat:
        kind = type(module)
        if not _plain(module, kind):
            return None
        if kind in _CONVOLUTIONS and module.padding_mode != "zeros":
            return None
        if kind is nn.Flatten and module.start_dim == 0 or kind is nn.Unflatten and module.dim == 0:
            return None  # would mix the batch dimension
        if kind not in (nn.Linear, *_CONVOLUTIONS, *_LINEAR_PER_SAMPLE) and kind not in ELEMENTWISE_MODULES:
            return None
    return flat


def _projection_affine(
    ops: list[nn.Module], x: Tensor, k: int, generator: torch.Generator | None, probe: str
) -> tuple[Tensor, Tensor]:
    """Forward-mode projection along a chain of affine layers and elementwise activations.

    The k probes per sample ride along the forward pass as extra rows of the same batch: each Linear or
    Conv layer is applied once to [x; v] without its bias (added to the primal rows only), each
    activation multiplies the tangent rows by its slope, so t = J v costs one pass over a (1 + k)·B batch.
    """
    batch = x.shape[0]
    h = x
    tangent = _draw_probes((k * batch, *x.shape[1:]), x, generator, probe)
    for op in ops:
        if isinstance(op, (nn.Linear, *_CONVOLUTIONS)):
            both = torch.cat([h, tangent])
            if isinstance(op, nn.Linear):
                both, bias_shape = torch.nn.functional.linear(both, op.weight), (-1,)
            else:
                both, bias_shape = op._conv_forward(both, op.weight, None), (-1, *([1] * (both.dim() - 2)))
            h, tangent = both.split([batch, k * batch])
            if op.bias is not None:
                h = h + op.bias.view(bias_shape)
        elif type(op) in ELEMENTWISE_MODULES:
            out = op(h)
            slope = elementwise_derivative(op, h, out)
            tangent = (tangent.view(k, *h.shape) * slope).view(k * batch, *h.shape[1:])
            h = out
        else:
            h, tangent = op(torch.cat([h, tangent])).split([batch, k * batch])
    return h, tangent.reshape(k, batch, -1).pow(2).sum(dim=2).mean(dim=0)


# ----------------------------------------------------------------------------------------------------------
# General encoders: torch.func


def _single(encoder):
    """The encoder as a function of one sample, returning (code, code) for ``has_aux``."""

    def apply(sample: Tensor) -> tuple[Tensor, Tensor]:
        h = encoder(sample.unsqueeze(0)).squeeze(0)
        return h, h

    return apply


def _run_generic(
    encoder, x: Tensor, strategy: str, k: int, generator: torch.Generator | None, probe: str
) -> tuple[Tensor, Tensor]:
    from torch.func import jacfwd, jacrev, jvp, vjp, vmap

    batch = x.shape[0]
    try:
        if strategy in ("jacrev", "jacfwd"):
            in_size = math.prod(x.shape[1:])
            out_size = _code_size(encoder, x)
            chunk = max(1, EXACT_CHUNK_ELEMENTS // max(1, in_size * out_size))
            if strategy == "jacrev":
                jacobian = jacrev(_single(encoder), has_aux=True)
            else:
                jacobian = jacfwd(_single(encoder), has_aux=True, randomness="same")
            jac, h = vmap(jacobian, chunk_size=chunk if chunk < batch else None, randomness="different")(x)
            return h, jac.reshape(batch, -1).pow(2).sum(dim=1)
        if strategy == "jvp":
            probes = _draw_probes((k, *x.shape), x, generator, probe)
            if k == 1:
                h, tangent = jvp(encoder, (x,), (probes[0],))
                return h, tangent.reshape(batch, -1).pow(2).sum(dim=1)
            hs, tangents = vmap(lambda v: jvp(encoder, (x,), (v,)), randomness="same")(probes)
            return hs[0], tangents.reshape(k, batch, -1).pow(2).sum(dim=2).mean(dim=0)
        # "vjp": cotangent probes u in the code space, ‖Jᵀu‖² has expectation ‖J‖²_F as well.
        h, pullback = vjp(encoder, x)
        probes = _draw_probes((k, *h.shape), h, generator, probe)
        if k == 1:
            (back,) = pullback(probes[0])
            return h, back.reshape(batch, -1).pow(2).sum(dim=1)
        (backs,) = vmap(pullback)(probes)
        return h, backs.reshape(k, batch, -1).pow(2).sum(dim=2).mean(dim=0)
    except (RuntimeError, NotImplementedError) as exc:
        explained = _explain_autograd_error(exc, strategy)
        if explained is None:
            raise
        raise explained from None


# Operations known to lack a derivative the penalty needs, with what to use instead.
_OP_ADVICE = {
    "cdist": "compute distances with differentiable primitives, e.g. "
    "(a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1).clamp_min(1e-12).sqrt()",
    "scaled_dot_product": "write attention explicitly, softmax(q @ k.transpose(-2, -1) / d**0.5) @ v, or "
    "select the math kernel with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)",
    "grid_sampler": "use method='exact', or projections by vector-Jacobian products (mode='reverse'), which "
    "grid_sample supports",
}


def _explain_autograd_error(exc: BaseException, strategy: str) -> ContractiveError | None:
    """Turn PyTorch's 'derivative not implemented' errors into a ContractiveError naming the operation."""
    text = str(exc)
    forward = re.search(r"forward AD with (\S+) that does not support it", text)
    backward = re.search(r"derivative for '?(?:aten::)?([\w.]+)'? is not implemented", text)
    if forward is None and backward is None:
        return None
    op = (forward or backward).group(1)
    advice = next((tip for key, tip in _OP_ADVICE.items() if key in op), None)
    if forward is not None:
        what = f"the encoder uses {op}, which has no forward-mode (JVP) derivative in PyTorch {torch.__version__}"
        advice = advice or "use method='exact' or projections by vector-Jacobian products (mode='reverse')"
    else:
        what = (
            f"the encoder uses an operation whose backward, {op}, cannot be differentiated again in PyTorch "
            f"{torch.__version__}; the gradient of a Jacobian penalty ({strategy}) needs that"
        )
        advice = advice or "replace the operation with ones PyTorch can differentiate twice (its explicit formula)"
    return ContractiveError(f"{what}: {advice}")


def _check_differentiable_twice(encoder, x: Tensor, strategy: str, probe: str) -> None:
    """Once per encoder and strategy: take the penalty's gradient on one sample, so a missing double
    backward is reported now, with a clear message, rather than inside the caller's ``loss.backward()``."""
    if not _needs_grad(encoder, x):
        return
    cache = _cache_for(encoder)
    key = ("differentiable", strategy, tuple(x.shape[1:]), x.dtype, x.device)
    if cache is not None and key in cache:
        return
    sample = x[:1].detach().requires_grad_(x.requires_grad)
    params = [p for p in encoder.parameters() if p.requires_grad] if isinstance(encoder, nn.Module) else []
    targets = params + ([sample] if sample.requires_grad else [])
    generator = torch.Generator(device=x.device).manual_seed(0)
    _, penalty = _run_generic(encoder, sample, strategy, 1, generator, probe)
    if targets and penalty.requires_grad:
        try:
            torch.autograd.grad(penalty.sum(), targets, allow_unused=True)
        except (RuntimeError, NotImplementedError) as exc:
            explained = _explain_autograd_error(exc, strategy)
            if explained is None:
                raise
            raise explained from None
    if cache is not None:
        cache[key] = True


def _projection_strategy(encoder, x: Tensor, mode: str) -> str:
    """``jvp`` unless reverse mode is requested or the encoder lacks forward-mode derivatives."""
    if mode == "reverse":
        return "vjp"
    if mode == "forward" or _supports_forward_ad(encoder, x):
        return "jvp"
    return "vjp"


def _supports_forward_ad(encoder, x: Tensor) -> bool:
    """Whether a JVP through the encoder works (tried once on one sample, then cached)."""
    from torch.func import jvp

    cache = _cache_for(encoder)
    key = ("forward_ad", tuple(x.shape[1:]), x.dtype, x.device)
    if cache is not None and key in cache:
        return cache[key]
    sample = x[:1].detach()
    try:
        with torch.no_grad():
            jvp(encoder, (sample,), (torch.ones_like(sample),))
        supported = True
    except (RuntimeError, NotImplementedError) as exc:
        if _explain_autograd_error(exc, "jvp") is None:
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.info("%s has no forward-mode derivative (%s); projections use reverse mode", _name(encoder), reason)
        supported = False
    if cache is not None:
        cache[key] = supported
    return supported


def _code_size(encoder, x: Tensor) -> int:
    """Numbers per sample in the encoder's output (runs it once on one sample; cached)."""
    cache = _cache_for(encoder)
    key = ("code_size", tuple(x.shape[1:]), x.dtype, x.device)
    if cache is not None and key in cache:
        return cache[key]
    with torch.no_grad():
        out = encoder(x[:1].detach())
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != 1:
        raise ContractiveError(f"the encoder must return one tensor with a batch dimension, got {type(out).__name__}")
    size = math.prod(out.shape[1:])
    if cache is not None:
        cache[key] = size
    return size


# ----------------------------------------------------------------------------------------------------------
# Helpers

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache_for(encoder) -> dict | None:
    """Per-encoder memo (sizes, capabilities, last plan); ``None`` if the encoder cannot be weakly referenced."""
    try:
        return _CACHE.setdefault(encoder, {})
    except TypeError:
        return None


def _needs_grad(encoder, x: Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad:
        return True
    if isinstance(encoder, nn.Module):
        return any(p.requires_grad for p in encoder.parameters())
    return True  # a plain function may close over parameters we cannot see


def _reject_batch_statistics(encoder) -> None:
    if not isinstance(encoder, nn.Module):
        return
    for name, module in encoder.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_mean is None):
            where = f"{type(module).__name__} {name!r}" if name else type(module).__name__
            raise ContractiveError(
                f"{where} normalises with batch statistics (training mode or track_running_stats=False), so each "
                "code depends on the whole batch and a per-sample Jacobian is not defined; put it in eval mode "
                "(running statistics) for the penalty, or use a per-sample normalisation such as nn.LayerNorm or "
                "nn.GroupNorm"
            )


def _log_plan(encoder, x: Tensor, plan: PenaltyPlan) -> None:
    cache = _cache_for(encoder)
    key = ("plan", tuple(x.shape[1:]), torch.is_grad_enabled())
    if cache is None or cache.get(key) != plan:
        logger.info("penalty for %s on inputs %s: %s", _name(encoder), tuple(x.shape[1:]), plan)
        if cache is not None:
            cache[key] = plan


def _name(encoder) -> str:
    return type(encoder).__name__ if isinstance(encoder, nn.Module) else getattr(encoder, "__name__", "encoder")


def _describe(module) -> str:
    if not isinstance(module, nn.Module):
        return "not an nn.Module"
    children = [type(m).__name__ for m in module.children()]
    return " → ".join(children) if children else "no submodules"
