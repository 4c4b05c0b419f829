"""The training loop: it lowers the loss, is bit-reproducible, checkpoints each epoch, stops early, and the
penalty actually contracts the encoder on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contractive import (
    Autoencoder,
    ContractiveError,
    ModelConfig,
    TrainConfig,
    evaluate,
    fit,
    load_dataset,
    train_run,
    training,
)
from contractive import data as data_module
from contractive.checkpoint import load_run
from contractive.data import MappedArray


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_model(lam: float = 0.1, seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(ModelConfig(n_features=64, hidden=16, lam=lam, reconstruction="bce"))


def test_fit_lowers_the_loss_and_records_history(digits):
    model = small_model()
    result = fit(model, digits.X[:1500], digits.X[1500:], TrainConfig(epochs=4, batch_size=64), progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert {"val_loss", "val_jacobian_norm", "val_reconstruction_error"} <= set(result.history[-1])


def test_same_seed_gives_bit_identical_weights(digits):
    weights = []
    for _ in range(2):
        model = small_model(seed=7)
        fit(model, digits.X[:500], None, TrainConfig(epochs=2, seed=7), progress=False)
        weights.append(model.encoder[0].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_early_stopping_restores_best_epoch(digits):
    model = small_model()
    # Validating on inverted digits: the better the model fits digits, the worse it does on them,
    # so validation loss bottoms out after a couple of epochs.
    inverted = 1.0 - digits.X[800:1000]
    result = fit(model, digits.X[:800], inverted, TrainConfig(epochs=15, patience=2), progress=False)
    assert result.stopped_early and len(result.history) == result.best_epoch + 2
    best = min(row["val_loss"] for row in result.history)
    assert evaluate(model, torch.as_tensor(inverted))["loss"] == pytest.approx(best, rel=1e-6)


def test_divergence_is_a_clear_error(digits):
    model = small_model()
    with pytest.raises(ContractiveError, match="diverged"):
        fit(model, digits.X[:200], None, TrainConfig(epochs=1, lr=1e30, optimizer="sgd"), progress=False)


def test_ctrl_c_keeps_last_complete_epoch(digits, tmp_path):
    model = small_model()
    snapshots = []

    def interrupt_after_second_epoch(row):
        snapshots.append(model.encoder[0].weight.detach().clone())
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    import contractive.training as training

    result = training.fit(
        model, digits.X[:300], None, TrainConfig(epochs=5), run_dir=tmp_path, progress=False,
        on_epoch_end=interrupt_after_second_epoch,
    )  # fmt: skip
    assert result.interrupted and len(result.history) == 2
    assert torch.equal(model.encoder[0].weight, snapshots[-1])
    from safetensors.torch import load_file

    on_disk = load_file(str(tmp_path / "model.safetensors"))["encoder.0.weight"]
    assert torch.equal(on_disk, snapshots[-1])


def test_penalty_contracts_on_digits_while_reconstruction_stays_good(digits, tmp_path):
    metrics = {}
    for lam in (0.0, 0.1):
        run = train_run(
            digits, ModelConfig(n_features=64, hidden=64, lam=lam), TrainConfig(epochs=20, seed=0),
            tmp_path / f"lam{lam}", progress=False, figures=False,
        )  # fmt: skip
        metrics[lam] = run.metrics
    plain, cae = metrics[0.0], metrics[0.1]
    # Measured: ‖J‖_F 6.2 → 3.8, reconstruction error 0.26 → 0.50 (data variance 4.69).
    assert cae["val_jacobian_norm"] < 0.75 * plain["val_jacobian_norm"]
    assert cae["val_reconstruction_error"] < 0.2 * 4.69
    reloaded = load_run(tmp_path / "lam0.1")
    assert reloaded.metrics["val_jacobian_norm"] == pytest.approx(cae["val_jacobian_norm"])


def _reject_non_json_constants(name: str):
    raise ValueError(f"metrics.jsonl contains {name}, which is not JSON")


def test_plain_autoencoder_metrics_are_strict_json(digits, tmp_path):
    run = train_run(
        digits, ModelConfig(n_features=64, hidden=16, lam=0.0), TrainConfig(epochs=2), tmp_path / "ae",
        progress=False, figures=True,
    )  # fmt: skip
    lines = (tmp_path / "ae" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=_reject_non_json_constants) for line in lines]
    # The training penalty of a λ = 0 AE is never computed, so it is not recorded; validation computes it.
    assert [("train_penalty" in row, row["val_penalty"] > 0) for row in rows] == [(False, True), (False, True)]
    assert run.result.history == rows
    json.loads((tmp_path / "ae" / "metrics.json").read_text(), parse_constant=_reject_non_json_constants)
    assert (tmp_path / "ae" / "learning_curves.png").is_file()


def test_the_reject_hook_can_fail():
    with pytest.raises(ValueError, match="NaN, which is not JSON"):
        json.loads('{"train_penalty": NaN}', parse_constant=_reject_non_json_constants)


def test_plain_autoencoder_epoch_line_leaves_out_the_penalty(digits, capsys):
    fit(small_model(lam=0.0), digits.X[:200], digits.X[200:300], TrainConfig(epochs=1), progress=True)
    out = capsys.readouterr().out
    # Rich may wrap the epoch line, so look at the metric names anywhere in the output.
    shown = [word for word in out.split() if word.startswith(("train_", "val_"))]
    assert shown == ["train_loss", "train_reconstruction", "val_loss", "val_jacobian_norm"]
    assert "nan" not in out


def test_training_with_a_penalty_still_records_it(digits):
    result = fit(small_model(lam=0.1), digits.X[:200], None, TrainConfig(epochs=1), progress=False)
    assert result.history[0]["train_penalty"] > 0


def fit_error(X, X_val=None, **model_overrides) -> str:
    values = {"n_features": 64, "hidden": 8, "reconstruction": "bce"} | model_overrides
    with pytest.raises(ContractiveError) as error:
        fit(Autoencoder(ModelConfig(**values)), X, X_val, TrainConfig(epochs=1), progress=False)
    return str(error.value)


def with_bad_value(X: np.ndarray, row: int, value: float) -> np.ndarray:
    X = X.copy()
    X[row, 5] = value
    return X


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_training_data_is_named_not_blamed_on_the_learning_rate(digits, value):
    X = with_bad_value(digits.X[:300], 217, value)
    assert fit_error(X) == "training data contain NaN or inf (first at row 217)"
    assert fit_error(torch.as_tensor(X)) == "training data contain NaN or inf (first at row 217)"


def test_non_finite_validation_data_is_rejected(digits):
    X_val = with_bad_value(digits.X[300:400], 42, np.nan)
    assert fit_error(digits.X[:300], X_val) == "validation data contain NaN or inf (first at row 42)"


def test_non_finite_check_finds_rows_in_later_chunks(digits, monkeypatch):
    monkeypatch.setattr(training, "CHUNK_BYTES", 64 * 4 * 10)  # 10-row chunks
    X = with_bad_value(digits.X[:300], 217, np.nan)
    assert fit_error(X) == "training data contain NaN or inf (first at row 217)"


def test_non_finite_rows_in_a_mapped_file_are_found_chunk_by_chunk(digits, tmp_path, monkeypatch):
    path = tmp_path / "rows.f32"
    with_bad_value(digits.X[:300], 217, np.inf).astype(np.float32).tofile(path)
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 64 * 4 * 10)
    mapped = MappedArray(path, np.float32, (300, 64), 0)
    assert fit_error(mapped) == "training data contain NaN or inf (first at row 217)"
    assert fit_error(digits.X[:300], mapped) == "validation data contain NaN or inf (first at row 217)"


def test_wrong_number_of_features_is_named(digits):
    assert fit_error(digits.X[:100, :32]) == "training data have 32 features but the model expects 64"
    assert fit_error(digits.X[:100], digits.X[:10, :32]) == "validation data have 32 features but the model expects 64"
    assert fit_error(digits.X[:100].ravel()) == "training data must be 2-D (samples × features), got shape (6400,)"


def test_bce_on_data_outside_the_unit_interval_is_rejected(digits, tmp_path):
    expected = (
        "binary cross-entropy needs data in [0, 1]; training data have values in [0, 10]: "
        "scale the data or use reconstruction='squared_error'"
    )
    assert fit_error(digits.X[:100] * 10) == expected
    path = tmp_path / "rows.f32"
    (digits.X[:100] * 10).astype(np.float32).tofile(path)
    assert fit_error(MappedArray(path, np.float32, (100, 64), 0)) == expected
    assert fit_error(digits.X[:100], digits.X[:10] - 0.5) == (
        "binary cross-entropy needs data in [0, 1]; validation data have values in [-0.5, 0.5]: "
        "scale the data or use reconstruction='squared_error'"
    )
    # Squared error takes any finite data.
    model = Autoencoder(ModelConfig(n_features=64, hidden=8, decoder="linear", reconstruction="squared_error"))
    fit(model, digits.X[:100] * 10, None, TrainConfig(epochs=1), progress=False)
