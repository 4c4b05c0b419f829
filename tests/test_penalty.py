"""The closed-form penalty against independent computation: autograd Jacobians in float64, gradcheck, known values."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from contractive import ContractiveError, jacobian_frobenius_sq
from contractive.activations import ACTIVATION_NAMES, make_activation
from contractive.penalty import encode_with_penalty, linear_elementwise_parts


def brute_force(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """‖J‖²_F per sample from a full autograd Jacobian of each sample separately."""
    values = []
    for xb in x:
        jac = torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0)).squeeze(0), xb)
        values.append(jac.pow(2).sum())
    return torch.stack(values)


def dense(n_in: int, n_out: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), make_activation(activation)).double()


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 6),
    n_in=st.integers(1, 9),
    n_out=st.integers(1, 9),
    activation=st.sampled_from(ACTIVATION_NAMES),
    seed=st.integers(0, 2**16),
)
def test_closed_form_equals_autograd_jacobian(batch, n_in, n_out, activation, seed):
    torch.manual_seed(seed)
    encoder = dense(n_in, n_out, activation)
    x = torch.randn(batch, n_in, dtype=torch.float64) * 2
    got = jacobian_frobenius_sq(encoder, x, method="closed_form")
    want = brute_force(encoder, x)
    assert got.shape == (batch,)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_softplus_linear_region_matches_autograd():
    # nn.Softplus switches to the identity above its threshold; the closed form must follow.
    encoder = nn.Sequential(nn.Linear(2, 3), nn.Softplus(beta=2.0, threshold=5.0)).double()
    x = torch.tensor([[10.0, -3.0], [0.1, 0.2], [-10.0, 8.0]], dtype=torch.float64)
    torch.testing.assert_close(jacobian_frobenius_sq(encoder, x), brute_force(encoder, x), rtol=1e-10, atol=0)


def test_one_sigmoid_unit_at_zero_is_one_eighth():
    # h = σ(0) = 1/2 → (h(1−h))² · (1² + (−1)²) = (1/4)² · 2 = 0.125;
    # not the mean of the Jacobian entries (0), not (ΣW)² · ... (0).
    # In float32, ‖W_j‖² is read off a norm (sqrt, then squared: no (H, D) temporary), so it is 0.125 to
    # float32 rounding; in float64 it is 0.125 to 1e-15.
    for dtype, tolerance in ((torch.float64, 1e-15), (torch.float32, 1e-7)):
        linear = nn.Linear(2, 1).to(dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor([[1.0, -1.0]]))
            linear.bias.zero_()
        value = jacobian_frobenius_sq(nn.Sequential(linear, nn.Sigmoid()), torch.zeros(1, 2, dtype=dtype))
        assert value.item() == pytest.approx(0.125, abs=tolerance)


def test_relu_known_value_is_seven():
    # z = W x = [1, 1] (both active) → ‖W‖²_F = 1 + 4 + 0 + 0 + 1 + 1 = 7.
    linear = nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]]))
        linear.bias.zero_()
    value = jacobian_frobenius_sq(nn.Sequential(linear, nn.ReLU()), torch.tensor([[1.0, 0.0, 2.0]]))
    assert value.item() == pytest.approx(7.0)


def test_mnist_sized_batch_equals_exact_per_sample():
    torch.manual_seed(0)
    encoder = dense(784, 64, "sigmoid")
    x = torch.rand(32, 784, dtype=torch.float64)
    got = jacobian_frobenius_sq(encoder, x)
    assert got.shape == (32,)
    torch.testing.assert_close(got, brute_force(encoder, x), rtol=1e-10, atol=0)


def test_gradcheck_with_respect_to_weight_and_bias():
    torch.manual_seed(1)
    x = torch.randn(5, 4, dtype=torch.float64)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def penalty(w, b):
        linear = nn.Linear(4, 3).double()
        # Install the inputs as the layer's parameters so the penalty reads them through the module.
        del linear.weight, linear.bias
        linear.weight, linear.bias = w, b
        return jacobian_frobenius_sq(nn.Sequential(linear, nn.Sigmoid()), x)

    assert torch.autograd.gradcheck(penalty, (weight, bias))


def test_penalty_gradient_is_the_gradient_of_the_true_jacobian_norm():
    # The gradient flows into the live W and equals the gradient of the brute-force Jacobian norm.
    torch.manual_seed(2)
    encoder = dense(6, 4, "sigmoid").train()
    x = torch.rand(8, 6, dtype=torch.float64)
    penalty = jacobian_frobenius_sq(encoder, x).sum()
    assert penalty.requires_grad
    (ours,) = torch.autograd.grad(penalty, encoder[0].weight)
    brute = sum(
        torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0)).squeeze(0), xb, create_graph=True)
        .pow(2)
        .sum()
        for xb in x
    )
    (reference,) = torch.autograd.grad(brute, encoder[0].weight)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def _layer_outputs(weight, bias, x, activation):
    """Code and closed-form penalty of Linear(weight, bias) → activation, with the tensors as the live parameters."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).double()
    del linear.weight, linear.bias
    linear.weight, linear.bias = weight, bias
    return encode_with_penalty(nn.Sequential(linear, make_activation(activation)), x, method="closed_form")


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_code_and_penalty_gradients_match_brute_force_for_x_weight_and_bias(activation, with_bias):
    # Sigmoid and tanh layers have a hand-written backward: every input's gradient, through the code and the
    # penalty at once, must equal autograd through the encoder and its per-sample Jacobian.
    torch.manual_seed(4)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True) if with_bias else None
    code_weights, penalty_weights = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    inputs = [t for t in (x, weight, bias) if t is not None]

    h, penalty = _layer_outputs(weight, bias, x, activation)
    ours = torch.autograd.grad((h * code_weights).sum() + (penalty * penalty_weights).sum(), inputs)

    def encoder(v):
        return make_activation(activation)(nn.functional.linear(v, weight, bias))

    jacobians = [torch.autograd.functional.jacobian(encoder, xb, create_graph=True) for xb in x]
    brute = torch.stack([j.pow(2).sum() for j in jacobians])
    reference = torch.autograd.grad((encoder(x) * code_weights).sum() + (brute * penalty_weights).sum(), inputs)
    for got, want in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_gradcheck_and_gradgradcheck_of_the_fused_layer(activation):
    torch.manual_seed(5)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def layer(x, weight, bias):
        return _layer_outputs(weight, bias, x, activation)

    assert torch.autograd.gradcheck(layer, (x, weight, bias))
    assert torch.autograd.gradgradcheck(layer, (x, weight, bias))


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_closed_form_works_under_torch_func_vmap_and_grad(activation):
    # The closed-form layers are custom autograd Functions; they must compose with torch.func like any op.
    torch.manual_seed(6)
    encoder = dense(4, 3, activation)
    x = torch.randn(5, 4, dtype=torch.float64)
    per_sample = torch.func.vmap(lambda xb: jacobian_frobenius_sq(encoder, xb.unsqueeze(0)).squeeze(0))(x)
    torch.testing.assert_close(per_sample, brute_force(encoder, x), rtol=1e-10, atol=1e-12)
    leaf = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(jacobian_frobenius_sq(encoder, leaf).sum(), leaf)
    got = torch.func.grad(lambda v: jacobian_frobenius_sq(encoder, v).sum())(x)
    torch.testing.assert_close(got, reference, rtol=1e-10, atol=1e-12)


def test_code_and_penalty_share_one_forward_pass():
    torch.manual_seed(3)
    encoder = dense(5, 3, "tanh")
    x = torch.randn(4, 5, dtype=torch.float64)
    h, penalty = encode_with_penalty(encoder, x)
    torch.testing.assert_close(h, encoder(x))
    torch.testing.assert_close(penalty, jacobian_frobenius_sq(encoder, x))


def test_bare_linear_is_constant_frobenius_norm():
    linear = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -4.0]]))
    values = jacobian_frobenius_sq(linear, torch.randn(3, 2, dtype=torch.float64))
    torch.testing.assert_close(values, torch.full((3,), 30.0, dtype=torch.float64))


def test_unsupported_encoder_gets_a_clear_error():
    encoder = nn.Sequential(nn.Linear(3, 3), nn.GELU())
    assert linear_elementwise_parts(encoder) is None
    with pytest.raises(ContractiveError, match="GELU"):
        jacobian_frobenius_sq(encoder, torch.randn(2, 3), method="closed_form")


def test_unknown_method_is_rejected():
    with pytest.raises(ContractiveError, match="unknown penalty method"):
        jacobian_frobenius_sq(dense(2, 2, "sigmoid"), torch.zeros(1, 2, dtype=torch.float64), method="fast")
