"""The general penalty (exact and projection) against independent computation: brute-force autograd Jacobians
per sample in float64, known values, the estimator's mean, variance and gradient, gradcheck, memory, errors."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from contractive import ContractiveError, jacobian_frobenius_sq
from contractive.penalty import choose_method, encode_with_penalty

# Tiny tensors: one thread is as fast, and far faster when other processes share the CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force(encoder, x: torch.Tensor) -> torch.Tensor:
    """‖J‖²_F per sample from a full autograd Jacobian of each sample separately."""
    values = []
    for xb in x:
        jac = torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0)).squeeze(0), xb)
        values.append(jac.pow(2).sum())
    return torch.stack(values)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def mixed_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(9, 8), nn.Tanh(), nn.Linear(8, 7), nn.Softplus(), nn.Linear(7, 5), nn.ReLU()
    ).double()  # fmt: skip


def conv_encoder() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Softplus(),
        nn.Conv2d(4, 6, 3, padding=1), nn.Tanh(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(24, 6), nn.Sigmoid(),
    ).double()  # fmt: skip


def affine_conv_encoder() -> nn.Sequential:
    """Convolutions, average pooling and reshapes only: the probes can ride along the forward pass."""
    torch.manual_seed(14)
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Softplus(),
        nn.AvgPool2d(2), nn.Conv2d(4, 6, 1), nn.Tanh(),
        nn.Flatten(), nn.Linear(24, 5), nn.Sigmoid(),
    ).double()  # fmt: skip


def layernorm_encoder() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 4), nn.LayerNorm(4)).double()


def opaque(module: nn.Module):
    """The same function as a plain callable, so only the general (torch.func) strategies apply."""
    return lambda z: module(z)


# --- exact equals brute force -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, n_in, strategy",
    [
        (mixed_mlp, 9, "chain"),
        (lambda: opaque(mixed_mlp()), 9, "jacrev"),
        (conv_encoder, 64, "jacrev"),
        (layernorm_encoder, 6, "jacrev"),
    ],
    ids=["mlp-chain", "mlp-vmap", "conv", "layernorm"],
)
def test_exact_equals_brute_force_per_sample_jacobian(make, n_in, strategy):
    encoder = make()
    torch.manual_seed(3)
    x = torch.randn(6, n_in, dtype=torch.float64)
    assert choose_method(encoder, x, method="exact").strategy == strategy
    got = jacobian_frobenius_sq(encoder, x, method="exact")
    want = brute_force(encoder, x)
    assert got.shape == (6,) and got.dtype == torch.float64
    assert rel_err(got, want) < 1e-8


def test_exact_chain_from_the_input_side_and_jacfwd_for_expanding_encoders():
    # D = 2 inputs, 30→40→50 units: accumulating from the input side is cheaper, and jacfwd for a black box.
    torch.manual_seed(4)
    encoder = nn.Sequential(nn.Linear(2, 30), nn.Sigmoid(), nn.Linear(30, 40), nn.Tanh(), nn.Linear(40, 50)).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    want = brute_force(encoder, x)
    assert rel_err(jacobian_frobenius_sq(encoder, x, method="exact"), want) < 1e-8
    assert choose_method(opaque(encoder), x, method="exact").strategy == "jacfwd"
    assert rel_err(jacobian_frobenius_sq(opaque(encoder), x, method="exact"), want) < 1e-8


@pytest.mark.parametrize("opaque_encoder", [False, True], ids=["chain", "vmap"])
def test_exact_in_small_chunks_of_samples_is_unchanged(opaque_encoder, monkeypatch):
    import contractive.penalty as penalty

    encoder = opaque(mixed_mlp()) if opaque_encoder else mixed_mlp()
    x = torch.randn(11, 9, dtype=torch.float64)
    whole = jacobian_frobenius_sq(encoder, x, method="exact")
    monkeypatch.setattr(penalty, "EXACT_CHUNK_ELEMENTS", 100)  # 2 samples' Jacobians per chunk
    chunked = jacobian_frobenius_sq(encoder, x, method="exact")
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)
    assert rel_err(chunked, brute_force(encoder, x)) < 1e-8


def test_batchnorm_in_eval_mode_is_exact():
    torch.manual_seed(5)
    encoder = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh()).double()
    encoder(torch.randn(32, 5, dtype=torch.float64))  # give it running statistics
    encoder.eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    assert rel_err(jacobian_frobenius_sq(encoder, x), brute_force(encoder, x)) < 1e-8


@pytest.mark.parametrize("make, n_in", [(mixed_mlp, 9), (conv_encoder, 64)], ids=["mlp", "conv"])
def test_exact_code_is_the_forward_pass_and_gradient_matches_brute_force(make, n_in):
    encoder = make()
    x = torch.randn(4, n_in, dtype=torch.float64)
    h, penalty = encode_with_penalty(encoder, x, method="exact")
    torch.testing.assert_close(h, encoder(x))
    params = list(encoder.parameters())
    ours = torch.autograd.grad(penalty.sum() + h.pow(2).sum(), params, allow_unused=True)
    brute = sum(
        torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0)).squeeze(0), xb, create_graph=True)
        .pow(2)
        .sum()
        for xb in x
    )
    reference = torch.autograd.grad(brute + encoder(x).pow(2).sum(), params, allow_unused=True)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# --- known values -----------------------------------------------------------------------------------------

W_KNOWN = torch.tensor([[1.0, 2.0], [3.0, -4.0]], dtype=torch.float64)


@pytest.mark.parametrize("method", ["auto", "closed_form", "exact", "projection"])
def test_linear_map_is_thirty_for_every_x(method):
    # ‖W‖²_F = 1 + 4 + 9 + 16 = 30, not ‖Σ_j ∂f_j/∂x‖² = (1+3)² + (2−4)² = 20.
    linear = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(W_KNOWN)
    x = torch.randn(7, 2, dtype=torch.float64) * 10
    if method == "projection":
        # Rademacher probes v ∈ {±1}²: ‖Wv‖² is 10 or 50 with equal probability, 30 on average.
        values = jacobian_frobenius_sq(linear, x.repeat(4000, 1), method="projection")
        assert values.mean().item() == pytest.approx(30.0, rel=0.02)
        return
    torch.testing.assert_close(jacobian_frobenius_sq(linear, x, method=method), torch.full((7,), 30.0).double())
    torch.testing.assert_close(
        jacobian_frobenius_sq(lambda z: z @ W_KNOWN.T, x, method="exact"), torch.full((7,), 30.0).double()
    )


def test_cat_of_linear_and_square_at_one_two_is_328():
    # J = [[2, 0], [0, 2], [8q₁, 0], [0, 8q₂]] at q = (1, 2): 4 + 4 + 64 + 256 = 328.
    q = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    value = jacobian_frobenius_sq(lambda v: torch.cat([2 * v, 4 * v**2], dim=1), q, method="exact")
    assert value.item() == pytest.approx(328.0, abs=1e-12)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


@pytest.mark.parametrize("method", ["closed_form", "exact", "projection"])
@pytest.mark.parametrize("kind", ["module", "function"])
def test_shape_and_memory_never_cross_samples(method, kind):
    torch.manual_seed(6)
    linear = nn.Linear(5, 2).double()
    if kind == "function" and method == "closed_form":
        pytest.skip("the closed form needs the module")
    encoder = nn.Sequential(linear, nn.Tanh()) if kind == "module" else (lambda z: torch.tanh(linear(z)))
    x = torch.randn(3, 5, dtype=torch.float64)
    assert jacobian_frobenius_sq(encoder, x, method=method).shape == (3,)
    # With B = 64 a batch-crossing Jacobian would hold B²·H·D = 40960 numbers; per-sample ones hold B·H·D = 640.
    x = torch.randn(64, 5, dtype=torch.float64)
    jacobian_frobenius_sq(encoder, x, method=method)  # warm caches outside the recorder
    with _LargestTensor() as recorder:
        jacobian_frobenius_sq(encoder, x, method=method).sum().backward()
    assert recorder.largest <= 64 * 2 * 5


def test_function_that_ignores_its_input_has_zero_penalty():
    weight = torch.randn(3, requires_grad=True)
    x = torch.randn(4, 5)
    for method in ("auto", "exact", "projection"):
        value = jacobian_frobenius_sq(lambda z: weight.expand(z.shape[0], 3) * 2, x, method=method)
        torch.testing.assert_close(value, torch.zeros(4))


# --- projection estimator ---------------------------------------------------------------------------------

PROJECTION_CASES = [
    (mixed_mlp, 9, "auto", "chain-jvp"),
    (affine_conv_encoder, 64, "auto", "chain-jvp"),
    (conv_encoder, 64, "auto", "jvp"),  # max pooling is not affine: torch.func.jvp
    (conv_encoder, 64, "reverse", "vjp"),
]
PROJECTION_IDS = ["mlp-chain-jvp", "conv-chain-jvp", "conv-jvp", "conv-vjp"]


@pytest.mark.parametrize("make, n_in, mode, strategy", PROJECTION_CASES, ids=PROJECTION_IDS)
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_projection_mean_is_within_three_standard_errors_of_exact(make, n_in, mode, strategy, probe):
    encoder = make()
    torch.manual_seed(7)
    x = torch.rand(3, n_in, dtype=torch.float64)
    assert choose_method(encoder, x, method="projection", mode=mode).strategy == strategy
    draws = 4000
    generator = torch.Generator().manual_seed(11)
    # Each row of the repeated batch gets its own probe: 4000 independent estimates per sample in one call.
    with torch.no_grad():
        values = jacobian_frobenius_sq(
            encoder, x.repeat(draws, 1), method="projection", mode=mode, probe=probe, generator=generator
        ).view(draws, 3)
    exact = brute_force(encoder, x)
    standard_error = values.std(dim=0) / draws**0.5
    assert (standard_error > 0).all()
    assert ((values.mean(dim=0) - exact).abs() < 3 * standard_error).all()


@pytest.mark.parametrize("make, n_in, mode, strategy", PROJECTION_CASES, ids=PROJECTION_IDS)
def test_projection_variance_falls_as_one_over_k(make, n_in, mode, strategy):
    encoder = make()
    torch.manual_seed(8)
    x = torch.rand(2, n_in, dtype=torch.float64)
    draws = 6000
    variances = {}
    for k in (1, 4):
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            values = jacobian_frobenius_sq(
                encoder, x.repeat(draws, 1), method="projection", n_projections=k, mode=mode, generator=generator
            ).view(draws, 2)
        variances[k] = values.var(dim=0)
    ratio = variances[4] / variances[1]
    assert ((ratio > 0.21) & (ratio < 0.29)).all(), ratio


@pytest.mark.parametrize("make, n_in, mode, strategy", PROJECTION_CASES, ids=PROJECTION_IDS)
def test_projection_gradient_is_unbiased(make, n_in, mode, strategy):
    encoder = make()
    weight = next(m for m in encoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d))).weight
    torch.manual_seed(9)
    x = torch.rand(4, n_in, dtype=torch.float64)
    (exact,) = torch.autograd.grad(jacobian_frobenius_sq(encoder, x, method="exact").mean(), weight)
    generator = torch.Generator().manual_seed(12)
    # 40 independent group means, each the gradient of 25 draws (the batch repeated 25 times, one probe per row).
    groups = []
    for _ in range(40):
        values = jacobian_frobenius_sq(encoder, x.repeat(25, 1), method="projection", mode=mode, generator=generator)
        groups.append(torch.autograd.grad(values.mean(), weight)[0])
    draws = torch.stack(groups)
    mean, standard_error = draws.mean(dim=0), draws.std(dim=0) / len(draws) ** 0.5
    z = (mean - exact).abs() / standard_error.clamp_min(1e-12)
    assert z.max() < 4.5, z.max()
    assert (mean - exact).norm() < 0.1 * exact.norm()


def test_reverse_mode_is_honoured_for_chains_too():
    x = torch.rand(2, 9, dtype=torch.float64)
    assert choose_method(mixed_mlp(), x, method="projection", mode="reverse").strategy == "vjp"
    x = torch.rand(2, 64, dtype=torch.float64)
    assert choose_method(affine_conv_encoder(), x, method="projection").strategy == "chain-jvp"


def test_projection_is_reproducible_with_a_generator_and_trains():
    encoder = mixed_mlp()
    x = torch.rand(5, 9, dtype=torch.float64)
    first = jacobian_frobenius_sq(encoder, x, method="projection", generator=torch.Generator().manual_seed(3))
    second = jacobian_frobenius_sq(encoder, x, method="projection", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, second)
    first.sum().backward()
    assert encoder[0].weight.grad.abs().sum() > 0


# --- gradcheck --------------------------------------------------------------------------------------------


class _PenaltyOf(nn.Module):
    def __init__(self, encoder: nn.Module, opaque_encoder: bool):
        super().__init__()
        self.encoder, self.opaque = encoder, opaque_encoder

    def forward(self, x):
        encoder = opaque(self.encoder) if self.opaque else self.encoder
        return jacobian_frobenius_sq(encoder, x, method="exact")


@pytest.mark.parametrize("opaque_encoder", [False, True], ids=["chain", "vmap"])
def test_gradcheck_of_exact_penalty_with_respect_to_two_layer_weights(opaque_encoder):
    torch.manual_seed(10)
    mlp = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2), nn.Sigmoid()).double()
    penalty = _PenaltyOf(mlp, opaque_encoder)
    x = torch.randn(3, 4, dtype=torch.float64)
    names = [f"encoder.{name}" for name, _ in mlp.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in mlp.parameters())

    def of_weights(*params):
        return torch.func.functional_call(penalty, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(of_weights, values)


# --- auto and errors --------------------------------------------------------------------------------------


def test_auto_choice_is_inspectable_and_logged(caplog):
    x = torch.rand(8, 784)
    single = nn.Sequential(nn.Linear(784, 64), nn.Sigmoid())
    small = nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 16), nn.Sigmoid())
    deep = nn.Sequential(nn.Linear(784, 500), nn.Sigmoid(), nn.Linear(500, 200), nn.Sigmoid())
    assert choose_method(single, x).method == "closed_form"
    assert choose_method(small, torch.rand(8, 64)).method == "exact"
    plan = choose_method(deep, x)
    assert (plan.method, plan.strategy) == ("projection", "chain-jvp") and "forward passes" in plan.reason
    with torch.no_grad():
        assert choose_method(deep, x).method == "exact"  # evaluation can afford it
    with caplog.at_level(logging.INFO, logger="contractive.penalty"):
        jacobian_frobenius_sq(deep, x)
    assert "projection (chain-jvp)" in caplog.text


def test_batchnorm_in_training_mode_is_a_clear_error():
    encoder = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Tanh()).train()
    for method in ("auto", "exact", "projection"):
        with pytest.raises(ContractiveError, match="BatchNorm1d '1'.*batch statistics.*eval mode.*LayerNorm"):
            jacobian_frobenius_sq(encoder, torch.randn(5, 4), method=method)


class _Distances(nn.Module):
    """Codes are distances to learned centres through torch.cdist, whose backward has no derivative."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 6)
        self.centres = nn.Parameter(torch.randn(2, 3))

    def forward(self, x):
        points = torch.tanh(self.linear(x)).view(-1, 2, 3)
        return torch.cdist(points, self.centres.expand(x.shape[0], 2, 3)).flatten(1)


@pytest.mark.parametrize("method", ["exact", "projection"])
def test_operation_without_double_backward_is_named_with_an_alternative(method):
    with pytest.raises(ContractiveError, match=r"_cdist_backward.*differentiable primitives"):
        jacobian_frobenius_sq(_Distances(), torch.randn(3, 6), method=method)


class _Warp(nn.Module):
    """A spatial transformer: grid_sample has a double backward but no forward-mode derivative."""

    def __init__(self):
        super().__init__()
        self.image, self.theta, self.out = nn.Linear(16, 16), nn.Linear(16, 6), nn.Linear(16, 5)

    def forward(self, x):
        image = torch.tanh(self.image(x)).view(-1, 1, 4, 4)
        grid = F.affine_grid(self.theta(x).view(-1, 2, 3), [x.shape[0], 1, 4, 4], align_corners=False)
        return torch.tanh(self.out(F.grid_sample(image, grid, align_corners=False).flatten(1)))


def test_grid_sample_projection_uses_reverse_mode_and_forced_forward_mode_is_explained():
    torch.manual_seed(13)
    encoder = _Warp().double()
    x = torch.randn(3, 16, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # functorch has no batching rule for affine_grid: slower, still right
        assert choose_method(encoder, x, method="projection").strategy == "vjp"
        values = jacobian_frobenius_sq(encoder, x.repeat(3000, 1), method="projection").view(3000, 3)
        exact = jacobian_frobenius_sq(encoder, x, method="exact")
        assert rel_err(exact, brute_force(encoder, x)) < 1e-8
        assert ((values.mean(0) - exact).abs() < 3 * values.std(0) / 3000**0.5).all()
        with pytest.raises(ContractiveError, match=r"grid_sampler_2d.*forward-mode.*method='exact'.*mode='reverse'"):
            jacobian_frobenius_sq(encoder, x, method="projection", mode="forward")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "fast"}, "unknown penalty method 'fast'"),
        ({"method": "projection", "n_projections": 0}, "n_projections must be an integer ≥ 1"),
        ({"method": "projection", "probe": "uniform"}, "unknown probe distribution 'uniform'"),
        ({"method": "projection", "mode": "sideways"}, "unknown projection mode 'sideways'"),
        ({"method": "closed_form"}, "closed-form penalty needs Linear \\+ elementwise"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ContractiveError, match=message):
        jacobian_frobenius_sq(mixed_mlp(), torch.randn(2, 9, dtype=torch.float64), **kwargs)


@pytest.mark.parametrize("method", ["auto", "exact", "projection"])
@pytest.mark.parametrize(
    "encoder",
    [
        nn.Sequential(nn.Linear(5, 4), nn.Sigmoid()),
        nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.Sigmoid()),
        nn.Sequential(nn.Linear(5, 4), nn.GELU()),
    ],
    ids=["closed-form layer", "chain", "generic"],
)
def test_an_empty_batch_has_an_empty_penalty_for_every_encoder_and_method(encoder, method):
    penalty = jacobian_frobenius_sq(encoder, torch.zeros(0, 5), method=method)
    assert penalty.shape == (0,) and penalty.dtype == torch.float32
    with pytest.raises(ContractiveError, match="unknown penalty method 'nope'"):
        jacobian_frobenius_sq(encoder, torch.zeros(0, 5), method="nope")
