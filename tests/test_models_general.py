"""Deep and convolutional CAEs: architecture and mirrored decoders, the joint penalty on the whole encoder,
config round trips (old run directories included), the CLI options, and contraction of a deep CAE on MNIST."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from contractive import Autoencoder, ContractiveError, ModelConfig, TrainConfig, load_dataset, load_run, train_run
from contractive.cli import main
from contractive.models import TiedConvTranspose, TiedDecoder
from contractive.penalty import choose_method, jacobian_frobenius_sq


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(**overrides) -> Autoencoder:
    values = {"n_features": 784, "reconstruction": "bce"} | overrides
    torch.manual_seed(0)
    return Autoencoder(ModelConfig(**values)).double()


def brute_force(encoder, x):
    return torch.stack(
        [torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0)).squeeze(0), xb).pow(2).sum() for xb in x]
    )


# --- deep -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_deep_encoder_and_mirrored_decoder(tied):
    model = build(encoder_layers=[500, 200], tied=tied)
    assert model.config.hidden == 200
    linears = [m for m in model.encoder if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 500), (500, 200)]
    x = torch.rand(3, 784, dtype=torch.float64)
    assert model.encode(x).shape == (3, 200) and model(x).shape == (3, 784)
    decoders = [m for m in model.decoder if isinstance(m, (TiedDecoder, nn.Linear))]
    assert len(decoders) == 2 and isinstance(model.decoder[-1], (TiedDecoder, nn.Linear))  # no activation last
    if tied:
        assert all(isinstance(m, TiedDecoder) for m in decoders)
        assert not any(key.startswith("decoder") and key.endswith("weight") for key in model.state_dict())
        # decoder layer 1 undoes encoder layer 2 with its transpose
        h = torch.rand(3, 200, dtype=torch.float64)
        torch.testing.assert_close(decoders[0](h), h @ linears[1].weight + decoders[0].bias)
    else:
        assert [tuple(m.weight.shape) for m in decoders] == [(500, 200), (784, 500)]


def test_deep_penalty_is_the_joint_jacobian_of_the_whole_encoder():
    torch.manual_seed(1)
    model = Autoencoder(
        ModelConfig(n_features=12, encoder_layers=[9, 7, 5], activation="tanh", reconstruction="squared_error")
    ).double()
    x = torch.randn(4, 12, dtype=torch.float64)
    joint = brute_force(model.encoder, x)
    torch.testing.assert_close(jacobian_frobenius_sq(model.encoder, x, method="exact"), joint, rtol=1e-10, atol=0)
    # not the sum of the layers' own penalties
    first = nn.Sequential(model.encoder[0], model.encoder[1])
    assert not torch.allclose(joint, brute_force(first, x))
    terms = model.train().loss(x)
    assert terms["penalty"].requires_grad
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.loss(x)["penalty"], joint.mean())
        torch.testing.assert_close(model.loss(x)["jacobian_norm"], joint.sqrt().mean())


@pytest.mark.parametrize("method", ["exact", "projection"])
def test_deep_training_step_reaches_every_encoder_weight(method):
    model = build(encoder_layers=[32, 16], lam=1.0, penalty_method=method, n_features=20).train()
    terms = model.loss(torch.rand(8, 20, dtype=torch.float64))
    grads = torch.autograd.grad(terms["penalty"], [m.weight for m in model.encoder if isinstance(m, nn.Linear)])
    assert all(g.abs().sum() > 0 for g in grads)


# --- convolutional ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_default_conv_autoencoder_for_28_by_28_images(tied):
    model = build(arch="conv", hidden=32, tied=tied)
    assert model.config.image_shape == [28, 28] and model.config.conv_channels == [16, 32]
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(1, 16, (2, 2)), (16, 32, (2, 2))]
    assert [m for m in model.encoder if isinstance(m, nn.Linear)][0].in_features == 32 * 7 * 7
    x = torch.rand(5, 784, dtype=torch.float64)  # data stay flattened
    assert model.encode(x).shape == (5, 32) and model(x).shape == (5, 784)
    transposes = [m for m in model.decoder if isinstance(m, (TiedConvTranspose, nn.ConvTranspose2d))]
    assert len(transposes) == 2
    assert all(isinstance(m, TiedConvTranspose) for m in transposes) == tied


def test_tied_conv_transpose_is_the_adjoint_of_its_convolution():
    # ⟨C x, y⟩ = ⟨x, Cᵀ y⟩ for the bias-free maps: the tie is a true transpose, at odd sizes too.
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False).double()
    transpose = TiedConvTranspose(conv, output_padding=(0, 1)).double()
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64)
    y = torch.randn(2, 5, 4, 5, dtype=torch.float64)
    assert transpose(y).shape == x.shape
    torch.testing.assert_close((conv(x) * y).sum(), (x * transpose(y)).sum())


def test_conv_autoencoder_on_multichannel_odd_sized_images():
    model = build(n_features=3 * 7 * 9, arch="conv", image_shape=[3, 7, 9], conv_channels=[4], hidden=6)
    x = torch.rand(2, 3 * 7 * 9, dtype=torch.float64)
    assert model(x).shape == (2, 189)
    assert choose_method(model.encoder, x, method="exact").strategy == "jacrev"
    torch.testing.assert_close(
        jacobian_frobenius_sq(model.encoder, x, method="exact"), brute_force(model.encoder, x), rtol=1e-10, atol=0
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"encoder_layers": [500, 200], "hidden": 64}, r"hidden \(64\) must equal the last of encoder_layers"),
        ({"encoder_layers": []}, "non-empty list"),
        ({"encoder_layers": [500, 0]}, "must be an integer ≥ 1"),
        ({"arch": "recurrent"}, "unknown architecture 'recurrent'"),
        ({"arch": "conv", "n_features": 785}, "not a square image"),
        ({"arch": "conv", "image_shape": [28, 27]}, "has 756 values per sample"),
        ({"conv_channels": [8]}, "conv_channels only applies to arch 'conv'"),
        ({"penalty_method": "closed_form", "encoder_layers": [500, 200]}, "needs a single dense layer"),
        ({"penalty_method": "fast"}, "unknown penalty method 'fast'"),
        ({"n_projections": 0}, "n_projections must be an integer ≥ 1"),
    ],
)
def test_impossible_deep_and_conv_configs_are_rejected(overrides, message):
    with pytest.raises(ContractiveError, match=message):
        ModelConfig(**({"n_features": 784} | overrides))


def test_config_round_trip_and_old_configs_without_the_new_keys():
    config = ModelConfig(n_features=784, encoder_layers=(500, 200), arch="conv", penalty_method="projection")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = {k: v for k, v in ModelConfig(n_features=64, hidden=16).to_dict().items()}
    for key in ("encoder_layers", "arch", "image_shape", "conv_channels"):
        del old[key]
    loaded = ModelConfig.from_dict(old)
    assert loaded.hidden == 16 and loaded.arch == "dense" and loaded.encoder_layers is None


def test_old_run_directory_still_loads(tmp_path):
    digits = load_dataset("digits")
    run = train_run(
        digits, ModelConfig(n_features=64, hidden=8), TrainConfig(epochs=1), tmp_path / "old", progress=False
    )
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("encoder_layers", "arch", "image_shape", "conv_channels"):
        del config["model"][key]  # as written before deep and conv models existed
    config_path.write_text(json.dumps(config))
    loaded = load_run(tmp_path / "old")
    assert set(loaded.model.state_dict()) == {"encoder.0.weight", "encoder.0.bias", "decoder.bias"}
    torch.testing.assert_close(loaded.model.encoder[0].weight, run.model.encoder[0].weight)


@pytest.mark.parametrize(
    "options", [["--encoder-layers", "16,8"], ["--arch", "conv", "--conv-channels", "4,8", "--hidden", "8"]]
)
def test_deep_and_conv_runs_save_load_and_encode(options, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--epochs", "1", "--no-progress", "--penalty-method", "projection"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--n-projections", "3", *options])
    assert exit_info.value.code == 0
    model_config = json.loads((out / "config.json").read_text())["model"]
    assert model_config["penalty_method"] == "projection" and model_config["n_projections"] == 3
    assert model_config["hidden"] == 8
    run = load_run(out)
    assert run.model.config.n_projections == 3
    names = {p.name for p in out.iterdir()}
    assert "reconstructions.png" in names and ("filters.png" in names) == ("--encoder-layers" in options)
    with pytest.raises(SystemExit) as exit_info:
        main(["encode", str(out), "--output", str(tmp_path / "codes.npy")])
    assert exit_info.value.code == 0 and "(1797, 8)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "options, message",
    [
        (["--encoder-layers", "500,x"], "--encoder-layers must be comma-separated integers such as 500,200"),
        (["--encoder-layers", "32,16", "--hidden", "10"], "hidden (10) must equal the last of encoder_layers"),
        (["--penalty-method", "closed_form", "--encoder-layers", "32,16"], "needs a single dense layer"),
        (["--penalty-method", "fastest"], "'fastest' is not one of"),
        (["--arch", "conv", "--data", "CSV"], "not a square image"),
    ],
)
def test_bad_deep_and_conv_options_are_one_line_errors(options, message, tmp_path, capsys):
    csv = tmp_path / "five.csv"
    csv.write_text("\n".join("0.1,0.2,0.3,0.4,0.5" for _ in range(20)))
    options = [str(csv) if option == "CSV" else option for option in options]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "r"), "--epochs", "1", "--no-progress", *options])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err


# --- with the relatives, stacks and resume ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dae", "rcae", "caeh"])
@pytest.mark.parametrize("arch", ["deep", "conv"])
def test_relatives_train_deep_and_conv_encoders(kind, arch):
    shape = {"encoder_layers": [12, 6]} if arch == "deep" else {"arch": "conv", "conv_channels": [3], "hidden": 6}
    model = build(n_features=64, model=kind, lam=0.5, **shape).train()
    terms = model.loss(torch.rand(4, 64, dtype=torch.float64))
    terms["loss"].backward()
    first = next(m for m in model.encoder if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert torch.isfinite(terms["loss"]) and first.weight.grad.abs().sum() > 0


def test_random_start_baseline_reinitialises_convolutions_too():
    from contractive.stacked import random_like

    encoder = build(arch="conv", hidden=8).encoder
    fresh = random_like(encoder, seed=0)
    for old, new in zip(encoder, fresh, strict=True):
        if isinstance(old, (nn.Linear, nn.Conv2d)):
            assert not torch.equal(old.weight, new.weight)


def test_a_stack_is_not_a_deep_or_conv_encoder():
    for extra in ({"encoder_layers": [32, 16]}, {"arch": "conv"}):
        with pytest.raises(ContractiveError, match="layers .* cannot be combined with encoder_layers or arch 'conv'"):
            ModelConfig(n_features=784, layers=[32, 16], **extra)


def test_resume_accepts_the_same_encoder_layers_and_refuses_others(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["train", "--out", str(out), "--epochs", "1", "--limit", "200", "--encoder-layers", "16,8", "--no-progress"]
        )
    assert exit_info.value.code == 0
    for layers, code in (("16,8", 0), ("16,9", 2)):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--resume", str(out), "--encoder-layers", layers, "--no-progress"])
        assert exit_info.value.code == code
    assert "--encoder-layers [16, 9] conflicts with the run being resumed" in capsys.readouterr().err


def test_html_report_on_deep_and_conv_runs(tmp_path):
    from contractive.report import write_report

    data = load_dataset("digits", limit=300)
    runs = []
    for name, extra in (("deep", {"encoder_layers": [16, 8]}), ("conv", {"arch": "conv", "hidden": 8})):
        runs.append(tmp_path / name)
        train_run(data, ModelConfig(n_features=64, **extra), TrainConfig(epochs=1), runs[-1], progress=False)
    assert (runs[0] / "filters.png").is_file() and not (runs[1] / "filters.png").exists()
    index = write_report(runs, tmp_path / "report", X=load_dataset("digits").X[1600:1640], data_label="digits")
    page = index.read_text()
    assert "run1_filters" in page and "run2_filters" not in page and "run2_reconstructions" in page


# --- MNIST ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_deep_cae_contracts_on_mnist(mnist_dir, tmp_path):
    # 784→500→200 on 2,000 real digits, 4 epochs: the penalty (projections in training, exact validation metric)
    # lowers the validation Jacobian norm well below the plain AE's, at the same reconstruction error.
    data = load_dataset(str(mnist_dir), limit=2000)
    metrics = {}
    for lam in (0.0, 1.0):
        config = ModelConfig(n_features=784, encoder_layers=[500, 200], lam=lam)
        run = train_run(data, config, TrainConfig(epochs=4, lr=3e-3), tmp_path / f"lam{lam}", progress=False)
        metrics[lam] = run.metrics
    assert metrics[1.0]["val_jacobian_norm"] < 0.8 * metrics[0.0]["val_jacobian_norm"]
    assert metrics[1.0]["val_reconstruction_error"] < 1.1 * metrics[0.0]["val_reconstruction_error"]
