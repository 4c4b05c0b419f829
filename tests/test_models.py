"""The autoencoder module: tied weights, the loss convention, and the penalty reaching W during training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contractive import Autoencoder, ContractiveError, ModelConfig, jacobian_frobenius_sq


def make(**overrides) -> Autoencoder:
    values = {"n_features": 6, "hidden": 4, "lam": 0.5, "reconstruction": "bce"} | overrides
    torch.manual_seed(0)
    return Autoencoder(ModelConfig(**values)).double()


def test_tied_decoder_uses_encoder_weight_transposed_and_stores_it_once():
    model = make()
    assert set(model.state_dict()) == {"encoder.0.weight", "encoder.0.bias", "decoder.bias"}
    h = torch.rand(3, 4, dtype=torch.float64)
    expected = torch.sigmoid(h @ model.encoder[0].weight + model.decoder.bias)
    torch.testing.assert_close(model.decode(h), expected)


def test_untied_decoder_has_its_own_weight():
    model = make(tied=False)
    assert model.decoder.weight.shape == (6, 4)
    assert "decoder.weight" in model.state_dict()


def test_loss_is_per_sample_sum_plus_lambda_penalty_averaged_over_batch():
    model = make(lam=0.5).train()
    x = torch.rand(5, 6, dtype=torch.float64)
    terms = model.loss(x)
    logits = model.decoder(model.encode(x))
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()
    penalty = jacobian_frobenius_sq(model.encoder, x).mean()
    torch.testing.assert_close(terms["reconstruction"], bce)
    torch.testing.assert_close(terms["penalty"], penalty)
    torch.testing.assert_close(terms["loss"], bce + 0.5 * penalty)


def test_lambda_does_not_depend_on_batch_size():
    # Duplicating a batch leaves every term unchanged: the terms are per-sample means.
    model = make()
    x = torch.rand(4, 6, dtype=torch.float64)
    one, two = model.loss(x), model.loss(torch.cat([x, x]))
    for key in one:
        torch.testing.assert_close(one[key], two[key])


def test_squared_error_loss_for_linear_decoder():
    model = make(decoder="linear", reconstruction="squared_error", lam=0.0).eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    expected = (model(x) - x).pow(2).sum(1).mean()
    torch.testing.assert_close(model.loss(x)["reconstruction"], expected)


def test_training_mode_penalty_has_gradient_for_encoder_weight():
    model = make(lam=1.0, reconstruction="squared_error").train()
    terms = model.loss(torch.rand(8, 6, dtype=torch.float64))
    assert terms["penalty"].requires_grad
    (grad,) = torch.autograd.grad(terms["penalty"], model.encoder[0].weight)
    assert grad.abs().sum() > 0


def test_plain_autoencoder_skips_penalty_in_training():
    model = make(lam=0.0).train()
    assert "penalty" not in model.loss(torch.rand(2, 6, dtype=torch.float64))  # not computed, not reported
    model.eval()
    assert torch.isfinite(model.loss(torch.rand(2, 6, dtype=torch.float64))["penalty"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden": 0}, "hidden size must be ≥ 1"),
        ({"lam": -0.1}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"decoder": "tanh"}, "unknown decoder"),
        ({"decoder": "linear", "reconstruction": "bce"}, "needs decoder 'sigmoid'"),
    ],
)
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ContractiveError, match=message):
        ModelConfig(n_features=4, **overrides)


def test_auto_reconstruction_resolves_from_data_range():
    config = ModelConfig(n_features=3)
    assert config.resolve_reconstruction(0.0, 1.0).reconstruction == "bce"
    assert config.resolve_reconstruction(-1.0, 1.0).reconstruction == "squared_error"
    with pytest.raises(ContractiveError, match="needs data in"):
        ModelConfig(n_features=3, reconstruction="bce").resolve_reconstruction(0.0, 2.0)


def test_building_with_auto_reconstruction_says_what_to_do():
    with pytest.raises(ContractiveError) as error:
        Autoencoder(ModelConfig(n_features=64, hidden=8))
    assert str(error.value) == (
        "ModelConfig.reconstruction is 'auto', which is decided from the data: pass reconstruction='bce' or "
        "'squared_error', or call config.resolve_reconstruction(X.min(), X.max()) first"
    )
    # The advice works as given.
    assert Autoencoder(ModelConfig(n_features=64, hidden=8).resolve_reconstruction(0.0, 1.0)).uses_logits


def test_encode_and_decode_accept_arrays_in_the_models_dtype():
    model = make(lam=0.1)  # float64 weights
    X = np.random.default_rng(0).random((5, 6), dtype=np.float32)
    codes = model.encode(X)
    assert codes.dtype == torch.float64 and codes.shape == (5, 4)
    torch.testing.assert_close(codes, model.encode(torch.as_tensor(X, dtype=torch.float64)))
    torch.testing.assert_close(model(X.tolist()), model.decode(codes))
    assert model.decode(codes.detach().numpy()).shape == (5, 6)


@pytest.mark.parametrize(
    "call, value, message",
    [
        ("encode", np.zeros((3, 32)), "data to encode must have shape (n_samples, 6), got (3, 32)"),
        ("encode", np.zeros(6), "data to encode must have shape (n_samples, 6), got (6,)"),
        ("encode", [["a"] * 6], "data to encode must be numbers, got an array of dtype <U1"),
        ("decode", np.zeros((2, 6)), "codes to decode must have shape (n_samples, 4), got (2, 6)"),
    ],
)
def test_encoding_arrays_of_the_wrong_shape_is_a_clear_error(call, value, message):
    with pytest.raises(ContractiveError) as error:
        getattr(make(lam=0.1), call)(value)
    assert str(error.value) == message
