"""Config fields reject values of the wrong type by name, before a range message could misread them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contractive import ContractiveError, ModelConfig, TrainConfig
from contractive.cli import main

MODEL_INTEGERS = ("n_features", "hidden", "n_projections", "n_corruptions")
MODEL_NUMBERS = ("lam", "sigma", "mask_prob", "gamma")
TRAIN_INTEGERS = ("epochs", "batch_size", "seed", "patience")
TRAIN_NUMBERS = ("lr", "momentum", "weight_decay", "val_fraction")


def model_config(**overrides) -> ModelConfig:
    return ModelConfig(**({"n_features": 64} | overrides))


def message_of(make, **overrides) -> str:
    with pytest.raises(ContractiveError) as error:
        make(**overrides)
    return str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden": "8"}, "hidden must be an integer, got '8'"),
        ({"hidden": 2.5}, "hidden must be an integer, got 2.5"),
        ({"hidden": 8.0}, "hidden must be an integer, got 8.0"),
        ({"hidden": True}, "hidden must be an integer, got True"),
        ({"n_features": "64"}, "n_features must be an integer, got '64'"),
        ({"lam": "0.1"}, "lam must be a number, got '0.1'"),
        ({"lam": False}, "lam must be a number, got False"),
        ({"lam": None}, "lam must be a number, got None"),
        (
            {"encoder_layers": [32, "8"], "hidden": 8},
            "each encoder layer size must be an integer ≥ 1, got '8' in encoder_layers",
        ),
        ({"layers": [32, 8.0]}, "layers must be a list of hidden sizes ≥ 1, got [32, 8.0]"),
    ],
)
def test_model_config_names_the_type_error(overrides, message):
    assert message_of(model_config, **overrides) == message


@pytest.mark.parametrize("name", MODEL_INTEGERS)
@pytest.mark.parametrize("bad", ["3", 3.0, True])
def test_every_model_integer_rejects_non_integers(name, bad):
    assert message_of(model_config, **{name: bad}) == f"{name} must be an integer, got {bad!r}"


@pytest.mark.parametrize("name", MODEL_NUMBERS)
@pytest.mark.parametrize("bad", ["0.1", True, None])
def test_every_model_number_rejects_non_numbers(name, bad):
    assert message_of(model_config, **{name: bad}) == f"{name} must be a number, got {bad!r}"


@pytest.mark.parametrize("name", TRAIN_INTEGERS)
@pytest.mark.parametrize("bad", ["3", 3.0, True])
def test_every_train_integer_rejects_non_integers(name, bad):
    assert message_of(TrainConfig, **{name: bad}) == f"{name} must be an integer, got {bad!r}"


@pytest.mark.parametrize("name", TRAIN_NUMBERS)
@pytest.mark.parametrize("bad", ["0.1", True, None])
def test_every_train_number_rejects_non_numbers(name, bad):
    assert message_of(TrainConfig, **{name: bad}) == f"{name} must be a number, got {bad!r}"


def test_numpy_scalars_are_accepted_and_stored_as_json_ready_python_numbers():
    model = model_config(
        hidden=np.int64(8), lam=np.float32(0.5), n_corruptions=np.int32(2), encoder_layers=[np.int16(8)]
    )
    train = TrainConfig(epochs=np.int64(3), lr=np.float32(0.25), seed=np.uint32(7), momentum=0)
    assert (model.hidden, model.lam, model.n_corruptions, model.encoder_layers) == (8, 0.5, 2, [8])
    assert type(model.hidden) is int and type(model.lam) is float and type(model.encoder_layers[0]) is int
    assert (train.epochs, train.lr, train.seed, train.momentum) == (3, 0.25, 7, 0.0)
    assert type(train.seed) is int and type(train.momentum) is float
    # Plain Python numbers, so config.json can be written and read back.
    assert ModelConfig.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    assert TrainConfig.from_dict(json.loads(json.dumps(train.to_dict()))) == train


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_outside_the_32_bit_range_is_rejected(seed):
    assert message_of(TrainConfig, seed=seed) == f"seed must be an integer in [0, 2**32 - 1], got {seed}"


def test_largest_seed_is_accepted():
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_cli_negative_seed_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "digits", "--out", str(tmp_path / "run"), "--seed", "-1", "--no-progress"])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert err == "error: seed must be an integer in [0, 2**32 - 1], got -1\n"
