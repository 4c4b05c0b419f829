"""The CAE's relatives: corruption, CAE+H against explicit Jacobians, RCAE, config handling, the DAE↔RCAE link."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from contractive import Autoencoder, ModelConfig, TrainConfig, fit, load_dataset, relatives
from contractive.errors import ContractiveError

# These models are tiny: a second thread only adds synchronisation (shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_model():
    """A tied sigmoid AE trained briefly on digits with squared error, in float64, and held-out digits."""
    X = torch.as_tensor(load_dataset("digits").X, dtype=torch.float64)
    torch.manual_seed(0)
    config = ModelConfig(n_features=64, hidden=32, lam=0.01, reconstruction="squared_error")
    model = Autoencoder(config).double()
    fit(model, X[:1500], None, TrainConfig(epochs=5, batch_size=64, lr=1e-2), progress=False)
    return model.eval(), X[1500:]


def explicit_jacobians(f, x: torch.Tensor) -> torch.Tensor:
    """(B, out, in) Jacobians, one autograd call per sample: the brute-force reference."""
    return torch.stack([jacobian(f, x[b], create_graph=True) for b in range(x.shape[0])])


# --- corruption -------------------------------------------------------------------------------------


def test_gaussian_corruption_has_the_requested_mean_and_std():
    x = torch.rand(400, 50)
    noise = relatives.corrupt(x, "gaussian", sigma=0.3, generator=torch.Generator().manual_seed(1)) - x
    n = noise.numel()
    # mean of n N(0, σ²) draws: std σ/√n; sample std: relative std ≈ 1/√(2n); both within 5 standard errors.
    assert abs(float(noise.mean())) < 5 * 0.3 / math.sqrt(n)
    assert abs(float(noise.std()) / 0.3 - 1) < 5 / math.sqrt(2 * n)


def test_masking_corruption_zeroes_a_fraction_p_and_keeps_the_rest():
    x = torch.rand(300, 60) + 0.5  # strictly positive, so a zero can only come from the mask
    x_tilde = relatives.corrupt(x, "masking", mask_prob=0.25, generator=torch.Generator().manual_seed(2))
    zeroed = x_tilde == 0
    n = x.numel()
    assert abs(float(zeroed.float().mean()) - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)
    assert torch.equal(x_tilde[~zeroed], x[~zeroed])


def test_unknown_noise_is_a_user_error():
    with pytest.raises(ContractiveError, match="unknown noise"):
        relatives.corrupt(torch.zeros(2, 3), "salt")


def test_dae_loss_reconstructs_clean_input_from_corrupted_one():
    torch.manual_seed(0)
    config = ModelConfig(n_features=12, hidden=5, model="dae", noise="masking", mask_prob=0.5, reconstruction="bce")
    model = Autoencoder(config).eval()
    x = torch.rand(7, 12)
    generator = torch.Generator().manual_seed(0)  # the eval-mode corruption: a fixed seed
    x_tilde = relatives.corrupt(x, "masking", mask_prob=0.5, generator=generator)
    expected = model.reconstruction_per_sample(x, model.encode(x_tilde)).mean()
    with torch.no_grad():
        terms = model.loss(x)
        clean = model.reconstruction_per_sample(x, model.encode(x)).mean()
    torch.testing.assert_close(terms["reconstruction"], expected)
    assert float(terms["loss"]) != pytest.approx(float(clean))
    torch.testing.assert_close(model.loss(x)["loss"], terms["loss"])  # eval mode is deterministic


# --- CAE+H ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", [nn.Sigmoid(), nn.Tanh(), nn.Softplus()])
def test_caeh_closed_form_equals_explicit_jacobians_in_float64(activation):
    torch.manual_seed(3)
    encoder = nn.Sequential(nn.Linear(7, 5), activation).double()
    x = torch.randn(4, 7, dtype=torch.float64)
    x_tilde = relatives.gaussian_copies(x, 3, 0.5, generator=torch.Generator().manual_seed(4)).double()

    got = relatives.jacobian_difference_sq(encoder, x, x_tilde, method="closed_form")

    J = explicit_jacobians(encoder, x)
    expected = torch.stack([(J - explicit_jacobians(encoder, x_tilde[k])).pow(2).sum(dim=(1, 2)) for k in range(3)])
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    # Same gradient with respect to the live weights as the brute force (both flow through the module).
    grad_got = torch.autograd.grad(got.sum(), encoder[0].weight, retain_graph=True)[0]
    grad_expected = torch.autograd.grad(expected.sum(), encoder[0].weight)[0]
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-10, atol=1e-12)


def test_caeh_loss_term_is_gamma_times_mean_over_copies():
    torch.manual_seed(5)
    config = ModelConfig(
        n_features=6, hidden=4, model="caeh", lam=0.2, gamma=0.7, sigma=0.4, n_corruptions=5, reconstruction="bce"
    )
    model = Autoencoder(config).double().eval()
    x = torch.rand(9, 6, dtype=torch.float64)
    x_tilde = relatives.gaussian_copies(x, 5, 0.4, generator=torch.Generator().manual_seed(0))
    J = explicit_jacobians(model.encoder, x)
    higher = torch.stack([(J - explicit_jacobians(model.encoder, x_tilde[k])).pow(2).sum(dim=(1, 2)) for k in range(5)])
    terms = model.loss(x)
    torch.testing.assert_close(terms["higher_order"], higher.mean(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(terms["penalty"], J.pow(2).sum(dim=(1, 2)).mean(), rtol=1e-10, atol=1e-14)
    expected = terms["reconstruction"] + 0.2 * terms["penalty"] + 0.7 * terms["higher_order"]
    torch.testing.assert_close(terms["loss"], expected)


@pytest.mark.parametrize("method", ["auto", "exact"])
def test_caeh_general_path_equals_explicit_jacobians_for_a_deep_encoder(method):
    torch.manual_seed(8)
    encoder = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.Sigmoid()).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    x_tilde = relatives.gaussian_copies(x, 2, 0.5, generator=torch.Generator().manual_seed(1))
    got = relatives.jacobian_difference_sq(encoder, x, x_tilde, method=method)
    J = explicit_jacobians(encoder, x)
    expected = torch.stack([(J - explicit_jacobians(encoder, x_tilde[k])).pow(2).sum(dim=(1, 2)) for k in range(2)])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    weight = encoder[2].weight
    torch.testing.assert_close(
        torch.autograd.grad(got.sum(), weight, retain_graph=True)[0],
        torch.autograd.grad(expected.sum(), weight)[0],
        rtol=1e-9,
        atol=1e-11,
    )


def test_caeh_projection_estimate_is_unbiased():
    torch.manual_seed(9)
    encoder = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.Sigmoid()).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    x_tilde = relatives.gaussian_copies(x, 1, 0.5, generator=torch.Generator().manual_seed(2))
    exact = relatives.jacobian_difference_sq(encoder, x, x_tilde, method="exact")
    k = 4000
    estimate = relatives.jacobian_difference_sq(
        encoder, x, x_tilde, method="projection", n_projections=k, generator=torch.Generator().manual_seed(3)
    )
    # Rademacher probes: Var ‖ΔJ v‖² ≤ 2‖ΔJᵀΔJ‖²_F ≤ 2‖ΔJ‖⁴_F, so 5 standard errors of the mean of k.
    tolerance = 5 * math.sqrt(2 / k) * exact
    assert torch.all((estimate - exact).abs() < tolerance), (estimate, exact)


def test_closed_form_caeh_refuses_other_encoders():
    encoder = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    x = torch.rand(2, 4)
    with pytest.raises(ContractiveError, match="closed-form"):
        relatives.jacobian_difference_sq(encoder, x, x.unsqueeze(0), method="closed_form")


def test_jacobian_difference_rejects_mismatched_copies():
    encoder = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    with pytest.raises(ContractiveError, match="x_tilde must have shape"):
        relatives.jacobian_difference_sq(encoder, torch.rand(2, 4), torch.rand(2, 4))


# --- config -----------------------------------------------------------------------------------------


def test_penalty_on_reconstruction_and_rcae_are_one_model():
    a = ModelConfig(n_features=3, penalty_on="reconstruction")
    b = ModelConfig(n_features=3, model="rcae")
    assert (a.model, a.penalty_on) == (b.model, b.penalty_on) == ("rcae", "reconstruction")
    with pytest.raises(ContractiveError, match="rcae"):
        ModelConfig(n_features=3, model="caeh", penalty_on="reconstruction")


def test_models_without_jacobian_penalty_record_lam_zero():
    assert ModelConfig(n_features=3, model="dae", lam=0.5).lam == 0.0
    assert ModelConfig(n_features=3, model="ae").lam == 0.0


def test_new_options_round_trip_through_json_and_old_configs_still_load():
    config = ModelConfig(n_features=5, model="caeh", gamma=0.3, sigma=0.2, n_corruptions=2, layers=[8, 4])
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.hidden == 4
    old = {"n_features": 5, "hidden": 3, "lam": 0.1}  # a foundation-era model section
    assert ModelConfig.from_dict(old).model == "cae"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model", "vae", "unknown model"),
        ("penalty_on", "decoder", "penalty_on"),
        ("noise", "salt", "unknown noise"),
        ("sigma", 0.0, "sigma"),
        ("mask_prob", 1.0, "mask_prob"),
        ("gamma", -1.0, "gamma"),
        ("n_corruptions", 0, "n_corruptions"),
        ("layers", [4, 0], "layers"),
    ],
)
def test_invalid_relative_options_are_user_errors(field, value, message):
    with pytest.raises(ContractiveError, match=message):
        ModelConfig(n_features=3, **{field: value})


def test_loss_terms_have_no_nan_for_every_model_in_eval_mode():
    x = torch.rand(6, 10)
    for kind in ("ae", "cae", "dae", "caeh"):
        terms = Autoencoder(ModelConfig(n_features=10, hidden=4, model=kind, reconstruction="bce")).eval().loss(x)
        assert all(np.isfinite(float(v)) for v in terms.values()), kind


# --- RCAE: ‖J_r‖²_F ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("activation", "decoder", "tied"),
    [
        ("sigmoid", "sigmoid", True),
        ("tanh", "linear", False),
        ("softplus", "sigmoid", False),
        ("sigmoid", "linear", True),
    ],
)
def test_reconstruction_jacobian_closed_form_equals_explicit_jacobians_in_float64(activation, decoder, tied):
    torch.manual_seed(6)
    config = ModelConfig(
        n_features=6, hidden=4, activation=activation, decoder=decoder, tied=tied, model="rcae",
        reconstruction="squared_error",
    )  # fmt: skip
    model = Autoencoder(config).double()
    x = torch.rand(5, 6, dtype=torch.float64)
    got = relatives.reconstruction_jacobian_sq(model, x, method="closed_form")
    expected = explicit_jacobians(model, x).pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    weight = model.encoder[0].weight
    torch.testing.assert_close(
        torch.autograd.grad(got.sum(), weight, retain_graph=True)[0],
        torch.autograd.grad(expected.sum(), weight)[0],
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("method", ["exact", "projection"])
def test_reconstruction_jacobian_general_path_matches_the_closed_form(method):
    torch.manual_seed(10)
    model = Autoencoder(ModelConfig(n_features=6, hidden=4, reconstruction="bce")).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    closed = relatives.reconstruction_jacobian_sq(model, x)
    k = 1 if method == "exact" else 4000
    general = relatives.reconstruction_jacobian_sq(
        model, x, method=method, n_projections=k, generator=torch.Generator().manual_seed(0)
    )
    tolerance = 1e-10 * closed if method == "exact" else 5 * math.sqrt(2 / k) * closed
    assert torch.all((general - closed).abs() <= tolerance), (general, closed)


def test_rcae_loss_penalises_the_reconstruction_jacobian():
    torch.manual_seed(7)
    model = Autoencoder(ModelConfig(n_features=5, hidden=3, model="rcae", lam=0.3, reconstruction="bce")).double()
    x = torch.rand(4, 5, dtype=torch.float64)
    terms = model.loss(x)
    torch.testing.assert_close(terms["penalty"], explicit_jacobians(model, x).pow(2).sum(dim=(1, 2)).mean())
    torch.testing.assert_close(terms["loss"], terms["reconstruction"] + 0.3 * terms["penalty"])


# --- the DAE ↔ RCAE link ----------------------------------------------------------------------------


def test_denoising_excess_over_sigma_squared_tends_to_the_second_order_limit(digits_model):
    """(E‖x − r(x+ε)‖² − ‖x − r(x)‖²)/σ² → ‖J_r‖²_F − Σ_i e_i Δr_i as σ → 0, with e = x − r(x).

    ‖J_r‖²_F and the Laplacian term come from explicit autograd derivatives, independently of the
    library; the left side is the Monte Carlo estimate of :func:`contractive.relatives.denoising_excess`.
    """
    model, X = digits_model
    x = X[:30]
    draws = 2000
    J_sq = explicit_jacobians(model, x).pow(2).sum(dim=(1, 2))
    e = (x - model(x)).detach()
    laplacian = torch.stack(
        [
            torch.func.hessian(lambda y, eb=eb: (eb * model(y.unsqueeze(0))[0]).sum())(xb).trace()
            for xb, eb in zip(x, e, strict=True)
        ]
    )
    limit = (J_sq - laplacian).mean()
    generator = torch.Generator().manual_seed(0)
    small = relatives.denoising_excess(model, x, sigma=0.01, n_draws=draws, generator=generator).mean()
    large = relatives.denoising_excess(model, x, sigma=0.3, n_draws=draws, generator=generator).mean()
    # Monte Carlo standard error of the per-draw quadratic form, averaged over 30 samples × 2000 draws, is
    # well under 1% here; the O(σ²) remainder at σ = 0.01 is ~1e-4 relative.
    assert abs(float(small / limit) - 1) < 0.02, (float(small), float(limit))
    assert abs(float(small / limit) - 1) < abs(float(large / limit) - 1)  # the gap shrinks as σ → 0


def test_caeh_flattens_the_jacobian_around_held_out_samples_more_than_a_cae_with_the_same_lam():
    X = torch.as_tensor(load_dataset("digits").X)
    X_train, X_test = X[:600], X[-300:]
    common = {"n_features": 64, "hidden": 32, "lam": 0.1, "reconstruction": "bce"}
    train = TrainConfig(epochs=6, batch_size=64, lr=1e-2)
    changes = {}
    for kind in ("cae", "caeh"):
        torch.manual_seed(0)  # same initial weights
        model = Autoencoder(ModelConfig(**common, model=kind, gamma=5.0, sigma=0.3, n_corruptions=4))
        fit(model, X_train, None, train, progress=False)
        with torch.no_grad():
            copies = relatives.gaussian_copies(X_test, 5, 0.3, generator=torch.Generator().manual_seed(9))
            changes[kind] = float(relatives.jacobian_difference_sq(model.eval().encoder, X_test, copies).sqrt().mean())
    assert changes["caeh"] < 0.9 * changes["cae"], changes
