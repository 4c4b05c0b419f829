"""The ``contractive`` command line: thin wrappers over the library (built with click).

Every user-facing problem becomes one line ``error: <message>`` on stderr and exit status 2; Ctrl-C
during training exits with 130 after keeping the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .config import DEFAULT_LAM, ModelConfig, TrainConfig
from .errors import ContractiveError

if TYPE_CHECKING:  # numpy is imported lazily by the commands that need it
    import numpy as np

_data_option = click.option(
    "--data",
    default="digits",
    show_default=True,
    help="'digits', an IDX directory, or a .npy/.npz/.csv file.",
)
_split_option = click.option(
    "--split",
    default="auto",
    show_default=True,
    help="IDX files to read: auto (train if present), train, test.",
)
_limit_option = click.option("--limit", type=int, default=None, help="Use only the first N samples.")
_device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    help="Where to compute: auto picks CUDA when available (under torchrun: this rank's GPU).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="contractive")
def app() -> None:
    """Contractive autoencoders: train, encode and inspect runs."""


@app.command()
@_data_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory [default: runs/cae-<data>-<time>].",
)
@click.option("--hidden", type=int, default=None, help="Code size H [default: 64, or the last of --encoder-layers].")
@click.option(
    "--encoder-layers",
    default=None,
    help="Deep encoder: comma-separated layer sizes from the input to the code, e.g. 500,200.",
)
@click.option(
    "--arch",
    type=click.Choice(["dense", "conv"]),
    default="dense",
    help="dense, or conv: 3×3 stride-2 convolutions (--conv-channels) before the dense layers, for image data.",
)
@click.option("--conv-channels", default=None, help="Channels of the convolutions for --arch conv [default: 16,32].")
@click.option("--lam", type=float, default=DEFAULT_LAM, help="Penalty weight λ (per sample; see README).")
@click.option("--activation", default="sigmoid", help="Encoder activation: sigmoid, tanh, softplus, relu.")
@click.option("--decoder", default="sigmoid", help="Decoder output: sigmoid or linear.")
@click.option("--tied/--untied", default=True, help="Decoder uses Wᵀ (Rifai et al. 2011).")
@click.option("--reconstruction", default="auto", help="auto (BCE for [0,1] data), bce or squared_error.")
@click.option(
    "--penalty-method",
    type=click.Choice(["auto", "closed_form", "exact", "projection"]),
    default="auto",
    help="How to compute ‖J_f‖²_F in training: auto picks closed form, else exact if affordable, else projection.",
)
@click.option("--n-projections", type=int, default=1, help="Random probes per sample for --penalty-method projection.")
@click.option("--epochs", type=int, default=50, help="Passes over the training data.")
@click.option("--batch-size", type=int, default=64, help="Samples per step.")
@click.option("--lr", type=float, default=1e-2, help="Learning rate.")
@click.option("--optimizer", default="adam", help="adam or sgd.")
@click.option("--weight-decay", type=float, default=0.0, help="L2 weight decay.")
@click.option("--seed", type=int, default=0, help="Seed for initialisation, split and shuffling.")
@click.option("--val-fraction", type=float, default=0.1, help="Held-out fraction for validation metrics.")
@click.option("--patience", type=int, default=0, help="Early-stopping patience in epochs (0: off).")
@_split_option
@_limit_option
@click.option("--force", is_flag=True, help="Overwrite a non-empty --out directory.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("--model", "model_kind", default="cae", help="Criterion: ae, cae, dae, rcae (penalise ‖J_r‖²_F), caeh.")
@click.option("--penalty-on", default="encoder", help="encoder (CAE) or reconstruction (same as --model rcae).")
@click.option("--noise", default="gaussian", help="DAE corruption: gaussian or masking.")
@click.option("--sigma", type=float, default=0.1, help="Std of Gaussian corruption (dae, caeh).")
@click.option("--mask-prob", type=float, default=0.25, help="Probability of zeroing a feature (dae, masking).")
@click.option("--gamma", type=float, default=1.0, help="Weight γ of the CAE+H term.")
@click.option("--n-corruptions", type=int, default=4, help="Corrupted copies per sample for CAE+H.")
@click.option(
    "--layers", default=None, help="Stacked AE: hidden sizes bottom to top, e.g. 256,128 (greedy pretraining)."
)
@_device_option
@click.option(
    "--precision",
    type=click.Choice(["32", "bf16"]),
    default="32",
    help="bf16: bfloat16 autocast for the forward pass (penalty stays float32).",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    default=None,
    help="Continue the interrupted run in this directory from its last checkpoint, with its config.json.",
)
@click.pass_context
def train(ctx, data, out, hidden, encoder_layers, arch, conv_channels, lam, activation, decoder, tied, reconstruction,
          penalty_method, n_projections, epochs, batch_size, lr, optimizer, weight_decay, seed, val_fraction, patience,
          split, limit, force, progress, model_kind, penalty_on, noise, sigma, mask_prob, gamma, n_corruptions, layers,
          device, precision, resume) -> None:  # fmt: skip
    """Train a contractive autoencoder (or a relative, or a stack) and write a run directory.

    Runs under torchrun as is (``torchrun --nproc_per_node=N -m contractive train ...``): --batch-size
    is then the global batch, split evenly across the processes.
    """
    from .data import load_dataset
    from .distributed import session
    from .runs import resume_settings, train_run

    if resume is not None:
        spec, model_config, train_config = resume_settings(resume)
        _reject_resume_conflicts(ctx, resume, spec, model_config, train_config)
        dataset = load_dataset(spec["spec"], split=spec["split"], limit=spec["limit"])
        out = resume
    else:
        train_config = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
            seed=seed, val_fraction=val_fraction, patience=patience, precision=precision,
        )  # fmt: skip
        dataset = load_dataset(data, split=split, limit=limit)
        image_shape = list(dataset.image_shape) if arch == "conv" and dataset.image_shape else None
        model_config = ModelConfig(
            n_features=dataset.X.shape[1], hidden=hidden, activation=activation, decoder=decoder, tied=tied,
            lam=lam, reconstruction=reconstruction, penalty_method=penalty_method, n_projections=n_projections,
            encoder_layers=_int_list(encoder_layers, "--encoder-layers", "500,200"), arch=arch,
            image_shape=image_shape, conv_channels=_int_list(conv_channels, "--conv-channels", "16,32"),
            **_relative_options(model_kind, penalty_on, noise, sigma, mask_prob, gamma, n_corruptions, layers, hidden),
        )  # fmt: skip
    with session(device) as context:
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            # Under torchrun every rank must write to the one directory rank 0 names.
            out = context.broadcast(
                Path("runs") / f"{model_config.model}-{dataset.description.get('name', 'data')}-{stamp}"
            )
        run = train_run(
            dataset, model_config, train_config, out,
            overwrite=force, progress=progress, context=context, resume=resume is not None,
        )  # fmt: skip
        is_main = context.is_main
    if run.result.interrupted:
        done = len(run.result.history)
        if model_config.layers:
            stopped_in = run.result.history[-1]["layer"] + 1 if run.result.history else 1
            click.echo(f"interrupted in layer {stopped_in} of {len(model_config.layers)} after {done} complete "
                       f"epoch(s); a stack cannot be resumed: train it again with --force", err=True)  # fmt: skip
        else:
            click.echo(f"interrupted after {done} complete epoch(s); last checkpoint kept in {run.run_dir}", err=True)
        sys.exit(130)
    if not is_main:
        return
    m = run.metrics
    click.echo(
        f"trained {m['epochs_trained']} epochs in {m['train_time_s']:.1f}s on {dataset.X.shape[0]} samples → {run.run_dir}\n"
        f"  {m['evaluated_on']}: reconstruction error {m['val_reconstruction_error']:.4f}  "
        f"mean ‖J_f‖_F {m['val_jacobian_norm']:.4f}  loss {m['val_loss']:.4f}"
    )


def _reject_resume_conflicts(ctx, run_dir: Path, spec: dict, model_config: ModelConfig, train_config: TrainConfig):
    """--resume takes every setting from the run's config.json; an option that disagrees is an error."""
    from click.core import ParameterSource

    stored = {
        **model_config.to_dict(),
        **train_config.to_dict(),
        "data": spec["spec"],
        "split": spec["split"],
        "limit": spec["limit"],
    }
    for name, value in ctx.params.items():
        if name in ("resume", "device", "progress") or ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            continue
        option = "--" + name.replace("_", "-")
        if name in ("out", "force"):
            raise ContractiveError(f"{option} cannot be combined with --resume (the run continues in {run_dir})")
        if name in ("layers", "encoder_layers", "conv_channels"):
            value = _int_list(value, option, "500,200")
        if name in stored and value != stored[name] and not (name == "reconstruction" and value == "auto"):
            raise ContractiveError(
                f"{option} {value} conflicts with the run being resumed ({name} = {stored[name]!r} in "
                f"{run_dir / 'config.json'}); --resume takes its settings from that file"
            )


def _relative_options(model_kind, penalty_on, noise, sigma, mask_prob, gamma, n_corruptions, layers, hidden) -> dict:
    """ModelConfig fields of the relatives, refusing options that would silently do nothing."""
    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

    if model_kind in ("ae", "dae") and given("lam") and ctx.params["lam"] != 0:
        raise ContractiveError(f"--lam has no effect with --model {model_kind} (it has no Jacobian penalty)")
    # Options that only some criteria read: giving one to another criterion would silently do nothing.
    readers = {
        "penalty_method": ("cae", "rcae", "caeh"), "n_projections": ("cae", "rcae", "caeh"),
        "noise": ("dae",), "mask_prob": ("dae",), "sigma": ("dae", "caeh"), "gamma": ("caeh",),
        "n_corruptions": ("caeh",),
    }  # fmt: skip
    kind = "rcae" if penalty_on == "reconstruction" else model_kind
    for name, models in readers.items():
        if given(name) and kind in models and name == "mask_prob" and noise != "masking":
            raise ContractiveError("--mask-prob has no effect with --noise gaussian (it is for --noise masking)")
        if given(name) and kind in models and name == "sigma" and kind == "dae" and noise == "masking":
            raise ContractiveError("--sigma has no effect with --noise masking (it is for --noise gaussian)")
        if given(name) and kind not in models and kind in ("ae", "cae", "dae", "rcae", "caeh"):
            option = "--" + name.replace("_", "-")
            raise ContractiveError(
                f"{option} has no effect with --model {kind} (it is read by --model {' / '.join(models)})"
            )
    if given("patience") and ctx.params["patience"] > 0 and ctx.params["val_fraction"] == 0:
        raise ContractiveError("--patience needs validation data to stop on; it has no effect with --val-fraction 0")
    sizes: list[int] = []
    if layers is not None:
        try:
            sizes = [int(v) for v in layers.split(",") if v.strip()]
        except ValueError:
            raise ContractiveError(f"--layers must be comma-separated integers like 256,128, got {layers!r}") from None
        if not sizes:
            raise ContractiveError("--layers needs at least one hidden size")
        if given("hidden") and hidden != sizes[-1]:
            raise ContractiveError(f"--hidden {hidden} disagrees with the top of --layers {layers}; give one of them")
    return {
        "model": model_kind, "penalty_on": penalty_on, "noise": noise, "sigma": sigma, "mask_prob": mask_prob,
        "gamma": gamma, "n_corruptions": n_corruptions, "layers": sizes,
    }  # fmt: skip


@app.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_data_option
@click.option("--output", type=click.Path(path_type=Path), default=Path("features.npy"), help="Codes file (.npy).")
@_split_option
@_limit_option
@_device_option
@click.option("--batch-size", type=int, default=4096, help="Samples encoded at a time.")
def encode(run_dir, data, output, split, limit, device, batch_size) -> None:
    """Write the hidden codes of DATA under the model in RUN_DIR to a .npy file.

    Large .npy inputs are memory-mapped and the codes are streamed into the output file batch by batch,
    so neither has to fit in memory.
    """
    from .checkpoint import load_run
    from .data import load_dataset
    from .runs import encode_to_npy

    if output.suffix != ".npy":
        raise ContractiveError(f"output {str(output)!r} must end in .npy")
    _check_output_file(output)
    if output.exists() and Path(data).is_file() and os.path.samefile(data, output):
        # The codes would replace the data they are computed from (which may still be memory-mapped).
        raise ContractiveError(f"output {str(output)!r} is the input data file; choose another name")
    if batch_size < 1:
        raise ContractiveError(f"batch size must be ≥ 1, got {batch_size}")
    run = load_run(run_dir)
    dataset = load_dataset(data, split=split, limit=limit)
    _check_width(data, dataset.X, run)
    shape = encode_to_npy(run.model, dataset.X, output, batch_size=batch_size, device=device)
    click.echo(f"wrote codes of shape {shape} to {output}")


@app.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def info(run_dir) -> None:
    """Print a run's config and final metrics as JSON."""
    from .checkpoint import load_run

    run = load_run(run_dir, allow_unfinished_stack=True)
    click.echo(json.dumps({"config": run.config, "metrics": run.metrics}, indent=2))


@app.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_data_option
@_split_option
@_limit_option
@click.option("--test-size", type=int, default=None, help="The last N samples are the test set [default: 20%].")
@click.option("--train-size", type=int, default=None, help="The first N samples train [default: all before test].")
@click.option("--epochs", type=int, default=20, help="Fine-tuning passes over the training part.")
@click.option("--batch-size", type=int, default=64, help="Samples per step.")
@click.option("--lr", type=float, default=1e-3, help="Learning rate.")
@click.option("--optimizer", default="adam", help="adam or sgd.")
@click.option("--seed", type=int, default=0, help="Seed for the head, shuffling and the random-init baseline.")
@click.option(
    "--schedule",
    type=click.Choice(["constant", "cosine"]),
    default="constant",
    help="Learning rate: constant, or cosine decay to 0 over all steps.",
)
def finetune(
    run_dir, data, split, limit, test_size, train_size, epochs, batch_size, lr, optimizer, seed, schedule
) -> None:
    """Fine-tune RUN_DIR's encoder with a softmax head on labelled DATA; compare with a random start.

    The split is fixed, not random: the first samples train, the last --test-size samples test. The
    baseline is a network of identical shape with Glorot-uniform weights, trained the same way. Results
    are printed and written to RUN_DIR/finetune.json.
    """
    from .checkpoint import load_run, write_json
    from .data import load_dataset
    from .stacked import compare_finetuning

    run = load_run(run_dir)
    dataset = load_dataset(data, split=split, limit=limit)
    if dataset.y is None:
        raise ContractiveError(f"{data}: fine-tuning needs labels, and this dataset has none")
    _check_width(data, dataset.X, run)
    n = dataset.X.shape[0]
    n_test = test_size if test_size is not None else max(1, n // 5)
    n_train = train_size if train_size is not None else n - n_test
    if n_test < 1 or n_train < 1 or n_train + n_test > n:
        raise ContractiveError(f"--train-size {n_train} and --test-size {n_test} do not fit in {n} samples")
    X_train, y_train = dataset.X[:n_train], dataset.y[:n_train]
    X_test, y_test = dataset.X[n - n_test :], dataset.y[n - n_test :]
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed, val_fraction=0)
    results = compare_finetuning(run.model.encoder, X_train, y_train, X_test, y_test, config, schedule=schedule)
    write_json(
        Path(run_dir) / "finetune.json",
        {
            "data": dataset.description, "n_train": n_train, "n_test": n_test,
            "training": {**config.to_dict(), "schedule": schedule}, **results,
        },
    )  # fmt: skip
    click.echo(f"fine-tuned on the first {n_train} samples, tested on the last {n_test} ({epochs} epochs)")
    cfg = run.model.config
    shape = "-".join(str(h) for h in (cfg.layers or cfg.encoder_layers or [cfg.hidden]))
    for name, label in (("pretrained", f"{cfg.model} {shape} pretrained"), ("random_init", "random init")):
        r = results[name]
        click.echo(
            f"  {label:<24} test error {100 * r['test_error']:6.2f}%   train error {100 * r['train_error']:6.2f}%"
        )


_points_options = [
    _split_option,
    click.option("--skip", type=int, default=0, help="Skip the first N samples (e.g. those the run trained on)."),
    click.option("--n-points", type=int, default=500, help="Points at which to measure the diagnostics."),
    click.option("--fraction", type=float, default=0.1, help="Effective dimension: count σ_i > FRACTION × σ_1."),
    click.option("--eps", type=float, default=0.05, help="Saturation: distance to a bound that counts as saturated."),
    click.option("--seed", type=int, default=0, help="Seed for the contraction-curve directions."),
]


def _with_points_options(command):
    for option in reversed(_points_options):
        command = option(command)
    return command


def _diagnostic_points(spec: str, split: str, skip: int, n_points: int) -> tuple[np.ndarray, str]:
    """Samples ``skip`` … ``skip + n_points`` of a dataset spec, and a label saying so."""
    from .data import load_dataset

    if skip < 0:
        raise ContractiveError(f"--skip must be ≥ 0, got {skip}")
    if n_points < 2:
        raise ContractiveError(f"--n-points must be ≥ 2, got {n_points}")
    dataset = load_dataset(spec, split=split)
    X = dataset.X[skip : skip + n_points]
    if X.shape[0] < 2:
        raise ContractiveError(f"{spec}: only {dataset.X.shape[0]} samples, nothing left after skipping {skip}")
    part = dataset.description.get("split")
    where = f"{spec}" + (f" ({part})" if part else "")
    return X, f"{where}, samples {skip}–{skip + X.shape[0] - 1}"


def _check_output_file(path: Path) -> None:
    """Refuse an output file that cannot be created, or that is part of a run, before any work is done for it."""
    from .checkpoint import CONFIG, HISTORY, METRICS, WEIGHTS, run_config

    if not path.resolve().parent.is_dir():
        raise ContractiveError(f"output directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise ContractiveError(f"output {str(path)!r} is a directory")
    if path.name in (CONFIG, WEIGHTS, METRICS, HISTORY) and run_config(path.parent) is not None:
        raise ContractiveError(
            f"output {str(path)!r} would overwrite the {path.name} of the run in {str(path.parent)!r}"
        )


def _check_width(data: str, X, run) -> None:
    """Refuse data whose feature count is not the one the run's model was trained on."""
    if X.shape[1] != run.model.config.n_features:
        raise ContractiveError(f"{data} has {X.shape[1]} features but the model expects {run.model.config.n_features}")


@app.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="'digits', an IDX directory, or a .npy/.npz/.csv file.")
@_with_points_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write all numbers here.")
def diagnose(run_dir, data, split, skip, n_points, fraction, eps, seed, json_path) -> None:
    """Measure the Jacobian spectrum, contraction and saturation of the encoder in RUN_DIR on DATA."""
    from .checkpoint import load_run, write_json
    from .diagnostics import diagnose as measure

    if json_path is not None:
        _check_output_file(json_path)  # before the work, not after it
    run = load_run(run_dir)
    X, label = _diagnostic_points(data, split, skip, n_points)
    _check_width(data, X, run)
    summary = measure(run.model.encoder, X, fraction=fraction, eps=eps, seed=seed).summary()
    lines = [
        f"{run_dir} on {label}",
        f"  effective dimension (σ_i > {fraction:g}·σ_1)  {summary['effective_dimension']:.2f} "
        f"± {summary['effective_dimension_std']:.2f}",
        f"  largest singular value (mean)      {summary['largest_singular_value']:.4g}",
        f"  ‖J_f‖_F (mean)                     {summary['jacobian_frobenius']:.4g}",
    ]
    for direction in ("isotropic", "data"):
        curve = summary[f"contraction_{direction}"]
        lines.append(
            f"  contraction ratio, {direction:<9}       {curve['ratio'][0]:.4g} at r={curve['radii'][0]:g}, "
            f"{curve['ratio'][-1]:.4g} at r={curve['radii'][-1]:g}"
        )
    if "saturation_percent" in summary:
        lines.append(f"  saturated units (within {eps:g})     {summary['saturation_percent']:.1f}%")
    click.echo("\n".join(lines))
    if json_path is not None:
        write_json(json_path, {"run_dir": str(run_dir), "data": label, **summary})


@app.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Report directory (index.html, figures/).")
@click.option("--data", default=None, help="Points for the diagnostics [default: the first run's training data spec].")
@_with_points_options
def report(run_dirs, out, data, split, skip, n_points, fraction, eps, seed) -> None:
    """Write an HTML page comparing RUN_DIRS side by side: config, metrics, diagnostics and figures."""
    from .checkpoint import read_json, run_config
    from .report import write_report

    if run_config(out) is not None:
        raise ContractiveError(f"--out {str(out)!r} is a run directory; write the report somewhere else")
    if data is None:
        data = (read_json(Path(run_dirs[0]) / "config.json").get("data") or {}).get("spec")
        if data is None:
            raise ContractiveError(f"{run_dirs[0]} records no data spec; pass --data")
    X, label = _diagnostic_points(data, split, skip, n_points)
    index = write_report(run_dirs, out, X=X, data_label=label, fraction=fraction, eps=eps, seed=seed)
    click.echo(f"wrote {index} ({len(run_dirs)} run(s), diagnostics on {label})")


@app.command()
@click.option("--data", required=True, help="Labelled data: 'digits', an IDX directory, or a .npz with X and y.")
@click.option("--quick", is_flag=True, help="Small budget (subset, 100 units, few epochs, 2-point grids).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output directory [default: benchmarks/results/<data>[-quick]].",
)
@click.option("--hidden", type=int, default=None, help="Hidden units of every model [default: 1000, quick 100].")
@click.option("--epochs", type=int, default=None, help="Pretraining epochs (also the RBM's) [default: 10, quick 3].")
@click.option(
    "--finetune-epochs", type=int, default=None, help="Fine-tuning epochs for every encoder [default: 5, quick 3]."
)
@click.option(
    "--finetune-schedule",
    type=click.Choice(["constant", "cosine"]),
    default=None,
    help="Fine-tuning learning rate: constant, or cosine decay to 0 [default: cosine].",
)
@click.option("--batch-size", type=int, default=None, help="Mini-batch size [default: 64].")
@click.option("--grid-epochs", type=int, default=None, help="Epochs of each validation-grid run [default: 2].")
@click.option(
    "--grid-train-size", type=int, default=None, help="Training samples of each grid run [default: 5000, quick 1000]."
)
@click.option(
    "--train-size", type=int, default=None, help="Keep the first N training samples [default: all, quick 3000]."
)
@click.option(
    "--val-size", type=int, default=None, help="Keep the first N validation samples [default: all, quick 500]."
)
@click.option("--test-size", type=int, default=None, help="Keep the first N test samples [default: all, quick 1000].")
@click.option(
    "--probe-train-size", type=int, default=None, help="Samples the final linear probes train on [default: all]."
)
@click.option("--probe-max-iter", type=int, default=None, help="max_iter of the logistic regression [default: 2000].")
@click.option(
    "--grid-probe-max-iter", type=int, default=None, help="max_iter of the validation-grid probes [default: 300]."
)
@click.option("--seed", type=int, default=None, help="Seed of every initialisation and shuffle [default: 0].")
@click.option("--weight-decay-grid", default=None, help="Comma-separated weight decays for AE+wd.")
@click.option("--sigma-grid", default=None, help="Comma-separated Gaussian noise stds for DAE-g.")
@click.option("--mask-grid", default=None, help="Comma-separated masking probabilities for DAE-b.")
@click.option("--lam-grid", default=None, help="Comma-separated λ values for the CAE (CAE+H reuses the chosen λ).")
@click.option("--gamma-grid", default=None, help="Comma-separated γ values for CAE+H.")
@click.option("--force", is_flag=True, help="Overwrite results in a non-empty --out directory.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a stopped run in --out (same options): keep its selection and finished rows, train the rest.",
)
def benchmark(data, quick, out, force, resume, **sizes) -> None:
    """Train AE, AE+wd, DAE-g, DAE-b, CAE, CAE+H, RBM, PCA (and raw pixels) on DATA under one protocol.

    Writes results.md (table), results.json and figures (error vs ‖J_f‖_F, spectra) to --out.
    """
    import shlex

    from .benchmark import BenchmarkConfig, format_table, run_benchmark
    from .runs import prepare_run_dir

    overrides = {k: v for k, v in sizes.items() if v is not None}
    for name in [k for k in overrides if k.endswith("_grid")]:
        try:
            overrides[name] = tuple(float(v) for v in overrides[name].split(","))
        except ValueError:
            raise ContractiveError(f"--{name.replace('_', '-')} must be comma-separated numbers") from None
    config = BenchmarkConfig.quick_defaults(**overrides) if quick else BenchmarkConfig(**overrides)
    if out is None:
        out = Path("benchmarks") / "results" / (Path(data).name + ("-quick" if quick else ""))
    if resume and force:
        raise ContractiveError("--resume continues the results in --out and --force overwrites them; pass one")
    created = not out.exists()
    if not resume:
        prepare_run_dir(out, overwrite=force)
    # The command that reproduces this run, with every option that was set spelled out.
    words = ["contractive", "benchmark", "--data", data, *(["--quick"] if quick else []), "--out", str(out)]
    words += [f"--{k.replace('_', '-')}={sizes[k]}" for k in overrides]
    command = " ".join(shlex.quote(w) for w in words)
    try:
        results = run_benchmark(
            data, config, out, command=command, log=lambda line: click.echo(line, err=True), resume=resume
        )
    except KeyboardInterrupt:
        click.echo(f"interrupted: the finished rows are in {out}; the same command with --resume continues", err=True)
        sys.exit(130)
    except ContractiveError:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # refused before anything was written (e.g. data without labels): leave nothing behind
        raise
    click.echo(format_table(results["rows"]))


def _int_list(text: str | None, option: str, example: str) -> list[int] | None:
    """Parse a comma-separated list of integers such as ``500,200``."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ContractiveError(f"{option} must be comma-separated integers such as {example}, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and a non-zero exit."""
    try:
        code = app.main(args=argv, prog_name="contractive", standalone_mode=False)
    except ContractiveError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
