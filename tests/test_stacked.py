"""Stacked autoencoders: greedy layer-wise pretraining, checkpoints, fine-tuning with a softmax head."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from contractive import ModelConfig, TrainConfig, load_dataset
from contractive.checkpoint import CONFIG, WEIGHTS, load_run, save_weights, write_json
from contractive.cli import main
from contractive.errors import ContractiveError
from contractive.stacked import (
    StackedAutoencoder,
    compare_finetuning,
    finetune,
    layer_configs,
    lr_factor,
    pretrain,
    random_like,
)
from contractive.training import fit

# These models are tiny: a second thread only adds synchronisation (shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=400)


def stack_config(**overrides) -> ModelConfig:
    values = {"n_features": 64, "layers": [24, 10], "lam": 0.1, "reconstruction": "bce", **overrides}
    return ModelConfig(**values)


def test_layer_configs_chain_sizes_and_pick_the_upper_loss_from_the_code_range():
    sigmoid = layer_configs(stack_config())
    assert [(c.n_features, c.hidden) for c in sigmoid] == [(64, 24), (24, 10)]
    assert [c.reconstruction for c in sigmoid] == ["bce", "bce"]
    assert all(not c.layers for c in sigmoid)
    tanh = layer_configs(stack_config(activation="tanh", decoder="linear", reconstruction="squared_error"))
    assert [c.reconstruction for c in tanh] == ["squared_error", "squared_error"]
    relu = layer_configs(stack_config(activation="relu"))
    assert [c.reconstruction for c in relu] == ["bce", "squared_error"]  # relu codes leave [0, 1]


def test_a_stack_cannot_promise_a_closed_form_penalty():
    with pytest.raises(ContractiveError, match="closed_form"):
        stack_config(penalty_method="closed_form")


def test_pretraining_is_greedy_each_layer_fitted_on_the_codes_below(digits):
    X = digits.X
    config = TrainConfig(epochs=2, batch_size=50, seed=3)
    torch.manual_seed(0)
    stack = StackedAutoencoder(stack_config())
    torch.manual_seed(0)
    reference = StackedAutoencoder(stack_config())  # same initial weights

    result = pretrain(stack, X, None, config, progress=False)

    # The protocol done by hand: fit layer 0 on X, then layer 1 on layer 0's (frozen) codes.
    fit(reference.layers[0], X, None, config, progress=False)
    with torch.no_grad():
        codes = reference.layers[0].eval().encode(torch.as_tensor(X))
    fit(reference.layers[1], codes, None, config, progress=False)
    for (name, got), expected in zip(stack.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)
    assert [(row["layer"], row["layer_epoch"], row["epoch"]) for row in result.history] == [
        (0, 1, 1), (0, 2, 2), (1, 1, 3), (1, 2, 4),
    ]  # fmt: skip
    # The upper layer really was trained: its reconstruction of the codes improved.
    assert result.history[3]["train_reconstruction"] < result.history[2]["train_reconstruction"]


def test_encode_is_the_composition_of_the_layers_and_the_flat_encoder_is_live(digits):
    torch.manual_seed(1)
    stack = StackedAutoencoder(stack_config())
    x = torch.as_tensor(digits.X[:5])
    top = stack.layers[1].encode(stack.layers[0].encode(x))
    torch.testing.assert_close(stack.encode(x), top)
    torch.testing.assert_close(stack.encoder(x), top)
    assert stack.encoder[0].weight is stack.layers[0].encoder[0].weight
    assert stack.decode(top).shape == (5, 64)
    assert len(stack.state_dict()) == len(set(stack.state_dict()))


def test_a_stack_run_directory_loads_strictly(tmp_path, digits):
    config = stack_config()
    torch.manual_seed(2)
    stack = StackedAutoencoder(config)
    save_weights(tmp_path / WEIGHTS, stack)
    write_json(tmp_path / CONFIG, {"model": config.to_dict()})
    run = load_run(tmp_path)
    assert isinstance(run.model, StackedAutoencoder)
    x = torch.as_tensor(digits.X[:4])
    torch.testing.assert_close(run.model.encode(x), stack.eval().encode(x))
    # A config promising a different stack is refused, not half-loaded.
    write_json(tmp_path / CONFIG, {"model": dataclasses.replace(config, layers=[24, 12]).to_dict()})
    with pytest.raises(ContractiveError, match="does not match its config"):
        load_run(tmp_path)
    assert set(load_file(str(tmp_path / WEIGHTS))) == set(stack.state_dict())


def test_random_like_keeps_shapes_but_not_weights_and_leaves_the_original_alone():
    torch.manual_seed(4)
    encoder = StackedAutoencoder(stack_config()).encoder
    before = [p.detach().clone() for p in encoder.parameters()]
    fresh = random_like(encoder, seed=0)
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in encoder.parameters()]
    assert not torch.equal(fresh[0].weight, encoder[0].weight)
    assert all(not b.detach().any() for name, b in fresh.named_parameters() if name.endswith("bias"))
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters(), strict=True))


def test_finetuning_learns_the_labels_and_does_not_touch_the_pretrained_stack(digits):
    torch.manual_seed(5)
    stack = StackedAutoencoder(stack_config(layers=[32, 16]))
    pretrain(stack, digits.X[:300], None, TrainConfig(epochs=3, batch_size=50), progress=False)
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    X, y = digits.X, digits.y
    config = TrainConfig(epochs=15, batch_size=32, lr=0.02, val_fraction=0)
    results = compare_finetuning(stack.encoder, X[:300], y[:300], X[300:], y[300:], config)
    for name in ("pretrained", "random_init"):
        # Ten balanced classes: chance is 90% error; both networks must do far better on held-out digits.
        assert results[name]["test_error"] < 0.5, (name, results[name])
        assert 0 <= results[name]["train_error"] <= results[name]["test_error"] + 0.1
    assert all(torch.equal(before[k], v) for k, v in stack.state_dict().items())


def test_finetuning_treats_labels_as_class_names(digits):
    encoder = StackedAutoencoder(stack_config(layers=[16])).encoder
    X, y = digits.X[:240], digits.y[:240]
    config = TrainConfig(epochs=2, batch_size=32, lr=0.02, val_fraction=0)
    as_indices = finetune(copy.deepcopy(encoder), X[:200], y[:200], X[200:], y[200:], config)
    # Sparse, huge class names: the same ten classes, so the same head size, the same seeded run, the same errors.
    renamed = y.astype(np.int64) * 20_000_000 + 7
    as_names = finetune(copy.deepcopy(encoder), X[:200], renamed[:200], X[200:], renamed[200:], config)
    assert (as_names["train_error"], as_names["test_error"]) == (as_indices["train_error"], as_indices["test_error"])
    with pytest.raises(
        ContractiveError, match="^fine-tuning needs at least 2 classes in the training labels, found 1$"
    ):
        finetune(encoder, X[:200], np.full(200, 3), X[200:], y[200:], config)


def test_cosine_schedule_decays_from_the_base_rate_to_zero_and_is_used_by_finetuning(digits):
    assert [lr_factor("cosine", step, 4) for step in range(5)] == pytest.approx(
        [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4), 0.0]
    )
    assert lr_factor("constant", 3, 4) == 1.0
    encoder = StackedAutoencoder(stack_config(layers=[16])).encoder
    X, y = digits.X, digits.y

    def tuned_weights(schedule, batch_size):
        tuned = copy.deepcopy(encoder)  # finetune trains in place
        config = TrainConfig(epochs=1, batch_size=batch_size, lr=0.05, val_fraction=0)
        finetune(tuned, X[:200], y[:200], X[200:300], y[200:300], config, schedule=schedule)
        return tuned[0].weight.detach()

    # One step: the cosine factor at step 0 is 1, so both schedules take the same step.
    torch.testing.assert_close(tuned_weights("cosine", 200), tuned_weights("constant", 200), rtol=0, atol=0)
    # Two steps: the second cosine step is taken at half the rate, so the weights differ.
    assert not torch.allclose(tuned_weights("cosine", 100), tuned_weights("constant", 100))
    config = TrainConfig(epochs=1, batch_size=10, val_fraction=0)
    with pytest.raises(ContractiveError, match="unknown learning-rate schedule 'step'"):
        finetune(encoder, X[:10], y[:10], X[10:20], y[10:20], config, schedule="step")


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in-process (no interpreter start-up): exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_rejects_bad_layers_conflicting_hidden_and_unlabelled_finetuning(capsys, tmp_path):
    code, _, err = run_main(capsys, "train", "--layers", "16,x", "--out", str(tmp_path / "a"))
    assert code == 2 and err.startswith("error: --layers must be comma-separated")
    code, _, err = run_main(capsys, "train", "--layers", "16,8", "--hidden", "4", "--out", str(tmp_path / "b"))
    assert code == 2 and "disagrees with the top of --layers" in err
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((50, 64)).astype(np.float32))
    config = stack_config()
    save_weights(tmp_path / WEIGHTS, StackedAutoencoder(config))
    write_json(tmp_path / CONFIG, {"model": config.to_dict()})
    code, _, err = run_main(capsys, "finetune", str(tmp_path), "--data", str(tmp_path / "x.npy"))
    assert code == 2 and err == f"error: {tmp_path / 'x.npy'}: fine-tuning needs labels, and this dataset has none\n"


def test_cli_trains_a_stack_then_finetunes_it_against_a_random_start(capsys, tmp_path):
    run_dir = tmp_path / "stack"
    code, out, err = run_main(
        capsys, "train", "--data", "digits", "--limit", "300", "--layers", "32,16", "--epochs", "2",
        "--no-progress", "--out", str(run_dir),
    )  # fmt: skip
    assert code == 0, err
    run = load_run(run_dir)
    assert isinstance(run.model, StackedAutoencoder) and run.config["model"]["layers"] == [32, 16]
    assert [row["layer"] for row in run.history] == [0, 0, 1, 1]
    code, out, err = run_main(
        capsys, "finetune", str(run_dir), "--data", "digits", "--limit", "500", "--test-size", "200",
        "--epochs", "30", "--lr", "0.02", "--schedule", "cosine",
    )  # fmt: skip
    assert code == 0, err
    assert "fine-tuned on the first 300 samples, tested on the last 200" in out
    assert "cae 32-16 pretrained" in out and "random init" in out
    saved = json.loads((run_dir / "finetune.json").read_text())
    assert (saved["n_train"], saved["n_test"]) == (300, 200)
    assert saved["training"]["schedule"] == "cosine"
    for name in ("pretrained", "random_init"):
        assert 0 <= saved[name]["test_error"] < 0.6, saved[name]  # chance is 0.9
        assert f"{100 * saved[name]['test_error']:6.2f}%" in out


def test_an_interrupted_stack_says_it_cannot_resume_and_is_not_used_as_finished(capsys, tmp_path, monkeypatch):
    import contractive.stacked as stacked

    real_fit, calls = stacked.fit, []

    def fit_interrupted_in_layer_2(layer, X, V, config, **kwargs):
        result = real_fit(layer, X, V, config, **kwargs)
        calls.append(len(calls) + 1)
        result.interrupted = len(calls) == 2  # as if Ctrl-C came during the second layer's second epoch
        result.history = result.history[:1] if result.interrupted else result.history
        return result

    monkeypatch.setattr(stacked, "fit", fit_interrupted_in_layer_2)
    run_dir = tmp_path / "stack"
    code, _, err = run_main(
        capsys, "train", "--data", "digits", "--limit", "200", "--layers", "16,8,4", "--epochs", "2",
        "--no-progress", "--out", str(run_dir),
    )  # fmt: skip
    assert code == 130 and calls == [1, 2]
    assert (
        err
        == "interrupted in layer 2 of 3 after 3 complete epoch(s); a stack cannot be resumed: train it again with --force\n"
    )
    refusal = (f"error: {run_dir} is a stacked run interrupted while training layer 2 of 3: the layers above it were "
               "never trained and stacks cannot be resumed; train it again (with --force)\n")  # fmt: skip
    code, _, err = run_main(capsys, "encode", str(run_dir), "--data", "digits", "--output", str(tmp_path / "c.npy"))
    assert (code, err) == (2, refusal) and not (tmp_path / "c.npy").exists()
    code, out, _ = run_main(capsys, "info", str(run_dir))  # info still shows what is there
    assert code == 0 and json.loads(out)["metrics"]["interrupted"] is True
