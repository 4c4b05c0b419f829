"""Diagnostics against independent computations: brute-force Jacobians, closed forms, hand-made spectra."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from contractive import Autoencoder, ModelConfig, TrainConfig, load_dataset, train_run
from contractive.diagnostics import (
    activation_bounds,
    average_spectrum,
    contraction_curve,
    diagnose,
    effective_dimension,
    jacobians,
    saturation,
    singular_values,
    tangents,
)
from contractive.errors import ContractiveError


def brute_force_jacobian(encoder: nn.Module, x: torch.Tensor) -> np.ndarray:
    """J_f(x) of one sample, one autograd row per output unit: (H, D)."""
    x = x.clone().requires_grad_(True)
    h = encoder(x.unsqueeze(0)).squeeze(0)
    rows = [torch.autograd.grad(h[j], x, retain_graph=True)[0] for j in range(h.shape[0])]
    return torch.stack(rows).detach().numpy()


def make_encoders() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    cae = Autoencoder(ModelConfig(n_features=12, hidden=7, reconstruction="bce")).double()
    deep = nn.Sequential(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 5), nn.Sigmoid()).double()
    wide = nn.Sequential(nn.Linear(4, 10), nn.Softplus()).double()  # H > D: the forward-mode path
    return {"cae": cae.encoder, "deep": deep, "wide": wide}


@pytest.mark.parametrize("name", ["cae", "deep", "wide"])
def test_spectrum_and_tangents_equal_svd_of_brute_force_jacobian(name):
    encoder = make_encoders()[name]
    d = encoder[0].in_features
    X = torch.randn(9, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    brute = np.stack([brute_force_jacobian(encoder, x) for x in X])

    np.testing.assert_allclose(jacobians(encoder, X, chunk_size=4).numpy(), brute, rtol=1e-12, atol=1e-14)

    expected_sv = np.stack([np.linalg.svd(J, compute_uv=False) for J in brute])
    found_sv = singular_values(encoder, X, chunk_size=4)
    # Gram eigenvalues: relative 1e-10 on the large values, and √ε·σ_1 absolute at worst on the small ones.
    np.testing.assert_allclose(found_sv[:, :2], expected_sv[:, :2], rtol=1e-10)
    assert (np.abs(found_sv - expected_sv) <= 1e-10 * expected_sv + 3e-8 * expected_sv[:, :1]).all()

    k = 3
    found = tangents(encoder, X, k, chunk_size=4)
    assert found.vectors.shape == (9, k, d)
    for b, J in enumerate(brute):
        _, s, vh = np.linalg.svd(J)
        np.testing.assert_allclose(found.singular_values[b], s[:k], rtol=1e-10)
        # Singular vectors are defined up to sign: compare |<v, v_true>| = 1 and the sign convention.
        overlap = np.abs(np.sum(found.vectors[b] * vh[:k], axis=1))
        np.testing.assert_allclose(overlap, 1.0, atol=1e-8)
        peaks = found.vectors[b][np.arange(k), np.abs(found.vectors[b]).argmax(axis=1)]
        assert (peaks > 0).all()


def test_cae_jacobian_matches_closed_form():
    encoder = make_encoders()["cae"]
    X = torch.rand(6, 12, dtype=torch.float64)
    W = encoder[0].weight.detach()
    h = encoder(X).detach()
    closed = (h * (1 - h))[:, :, None] * W[None]  # diag(σ'(z)) W
    np.testing.assert_allclose(jacobians(encoder, X).numpy(), closed.numpy(), rtol=1e-12)


def test_average_spectrum_and_effective_dimension_on_known_spectra():
    spectra = np.array([[10.0, 2.0, 0.5], [1.0, 0.5, 0.05], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(average_spectrum(spectra), [11 / 3, 2.5 / 3, 0.55 / 3])
    assert effective_dimension(spectra, 0.1).tolist() == [2, 2, 0]
    assert effective_dimension(spectra, 0.01).tolist() == [3, 3, 0]
    assert effective_dimension(spectra, 0.6).tolist() == [1, 1, 0]
    with pytest.raises(ContractiveError, match="fraction"):
        effective_dimension(spectra, 0.0)


def test_contraction_of_a_scaled_rotation_is_its_scale_at_every_radius():
    d, scale = 6, 0.3
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    encoder = nn.Linear(d, d, bias=True).double()
    with torch.no_grad():
        encoder.weight.copy_(scale * q)
    X = torch.randn(20, d, dtype=torch.float64)
    for direction in ("isotropic", "data"):
        curve = contraction_curve(encoder, X, [1e-3, 1.0, 100.0], direction=direction, n_directions=3)
        np.testing.assert_allclose(curve.ratio, scale, rtol=1e-10)
        np.testing.assert_allclose(curve.std, 0.0, atol=1e-10)


def test_contraction_at_small_radius_is_the_derivative_in_one_dimension():
    # With D = 1 every unit direction is ±1, so the small-r ratio is exactly |f'(x)|, whatever is drawn.
    encoder = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid()).double()
    with torch.no_grad():
        encoder[0].weight.fill_(2.0)
        encoder[0].bias.fill_(-1.0)
    X = torch.tensor([[-1.0], [0.0], [0.5], [2.0]], dtype=torch.float64)
    h = torch.sigmoid(2 * X - 1)
    derivative = (2 * h * (1 - h)).mean().item()
    for direction in ("isotropic", "data"):
        curve = contraction_curve(encoder, X, [1e-7, 50.0], direction=direction, n_directions=5)
        assert curve.ratio[0] == pytest.approx(derivative, rel=1e-6)
        assert curve.ratio[1] < 1 / 50  # far away the sigmoid's whole range is covered at most once


def test_contraction_rejects_bad_arguments():
    encoder = nn.Linear(3, 2)
    X = torch.zeros(4, 3)
    with pytest.raises(ContractiveError, match="radii"):
        contraction_curve(encoder, X, [0.0, 1.0])
    with pytest.raises(ContractiveError, match="direction"):
        contraction_curve(encoder, X, direction="sideways")
    with pytest.raises(ContractiveError, match="coincide"):
        contraction_curve(encoder, X, direction="data")


def test_saturation_counts_units_near_the_bounds():
    codes = np.array([[0.01, 0.5, 0.97, 0.06], [0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(saturation(codes, (0.0, 1.0), 0.05), [0.5, 0.0])
    np.testing.assert_allclose(saturation(codes, (0.0, None), 0.1), [0.5, 0.0])
    assert activation_bounds(nn.Sequential(nn.Linear(2, 2), nn.Tanh())) == (-1.0, 1.0)
    assert activation_bounds(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == (0.0, None)
    with pytest.raises(ContractiveError, match="bounded activation"):
        activation_bounds(nn.Sequential(nn.Linear(2, 2), nn.Identity()))
    with pytest.raises(ContractiveError, match=r"^bounds must be \(lower, upper\) with lower < upper, got \(1, 0\)$"):
        saturation(codes, (1, 0))


def test_points_with_nan_are_named_not_passed_to_the_eigensolver():
    X = torch.rand(5, 3)
    X[3, 1] = float("nan")
    with pytest.raises(ContractiveError, match=r"^the points contain NaN or inf \(first at row 3\)$"):
        diagnose(nn.Sequential(nn.Linear(3, 2), nn.Sigmoid()), X)


def test_diagnose_summary_is_consistent_with_its_parts():
    encoder = make_encoders()["cae"]
    X = torch.rand(30, 12, dtype=torch.float64)
    result = diagnose(encoder, X, fraction=0.2, radii=[0.01, 1.0], n_directions=2)
    summary = result.summary()
    spectra = singular_values(encoder, X)
    assert summary["effective_dimension"] == pytest.approx(effective_dimension(spectra, 0.2).mean())
    assert summary["jacobian_frobenius"] == pytest.approx(
        np.linalg.norm(jacobians(encoder, X).numpy(), axis=(1, 2)).mean()
    )
    h = encoder(X).detach().numpy()
    assert summary["saturation_percent"] == pytest.approx(100 * saturation(h, (0.0, 1.0), 0.05).mean())
    assert summary["contraction_isotropic"]["radii"] == [0.01, 1.0]
    json.dumps(summary)  # JSON-ready


@pytest.fixture(scope="module")
def ae_and_cae(tmp_path_factory):
    """A plain AE and a CAE on digits, same size and budget; the last 297 digits are held out."""
    data = load_dataset("digits")
    train = type(data)(data.X[:1500], None, data.image_shape, {"name": "digits", "spec": "digits"})
    runs = {}
    for name, lam in (("ae", 0.0), ("cae", 0.5)):
        config = ModelConfig(n_features=64, hidden=32, lam=lam)
        out = tmp_path_factory.mktemp(name)
        train_config = TrainConfig(epochs=15, batch_size=64, lr=1e-2, val_fraction=0.1, seed=0)
        runs[name] = train_run(train, config, train_config, out, progress=False, figures=False)
    return runs, data.X[1500:]


def test_cae_is_more_contractive_than_ae_on_held_out_digits(ae_and_cae):
    runs, held_out = ae_and_cae
    measured = {name: diagnose(run.model.encoder, held_out).summary() for name, run in runs.items()}
    ae, cae = measured["ae"], measured["cae"]
    assert cae["effective_dimension"] < ae["effective_dimension"]
    assert cae["contraction_isotropic_smallest_r"] < ae["contraction_isotropic_smallest_r"]
    assert cae["contraction_data_smallest_r"] < ae["contraction_data_smallest_r"]


def test_cli_diagnose_prints_and_writes_json(ae_and_cae, cli, tmp_path):
    runs, _ = ae_and_cae
    out = tmp_path / "diag.json"
    result = cli("diagnose", str(runs["cae"].run_dir), "--data", "digits", "--skip", "1500", "--n-points", "100",
                 "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "effective dimension" in result.stdout and "samples 1500–1599" in result.stdout
    saved = json.loads(out.read_text())
    X = load_dataset("digits").X[1500:1600]
    expected = diagnose(runs["cae"].model.encoder, X).summary()
    assert saved["effective_dimension"] == pytest.approx(expected["effective_dimension"])
    assert saved["contraction_data_smallest_r"] == pytest.approx(expected["contraction_data_smallest_r"], rel=1e-5)

    bad = cli("diagnose", str(runs["cae"].run_dir), "--data", "digits", "--skip", "5000")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
