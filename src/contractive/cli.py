"""The ``contractive`` command line: thin wrappers over the library (built with click).

Every user-facing problem becomes one line ``error: <message>`` on stderr and exit status 2; Ctrl-C
during training exits with 130 after keeping the last complete checkpoint.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click
import numpy as np

from .config import DEFAULT_LAM, ModelConfig, TrainConfig
from .errors import ContractiveError

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
def train(data, out, hidden, encoder_layers, arch, conv_channels, lam, activation, decoder, tied, reconstruction,
          penalty_method, n_projections, epochs, batch_size, lr, optimizer, weight_decay, seed, val_fraction, patience,
          split, limit, force, progress) -> None:  # fmt: skip
    """Train a contractive autoencoder and write a run directory."""
    from .data import load_dataset
    from .runs import train_run

    train_config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
        seed=seed, val_fraction=val_fraction, patience=patience,
    )  # fmt: skip
    dataset = load_dataset(data, split=split, limit=limit)
    image_shape = list(dataset.image_shape) if arch == "conv" and dataset.image_shape else None
    model_config = ModelConfig(
        n_features=dataset.X.shape[1], hidden=hidden, activation=activation, decoder=decoder, tied=tied, lam=lam,
        reconstruction=reconstruction, penalty_method=penalty_method, n_projections=n_projections,
        encoder_layers=_int_list(encoder_layers, "--encoder-layers", "500,200"), arch=arch, image_shape=image_shape,
        conv_channels=_int_list(conv_channels, "--conv-channels", "16,32"),
    )  # fmt: skip
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"cae-{dataset.description.get('name', 'data')}-{stamp}"
    run = train_run(dataset, model_config, train_config, out, overwrite=force, progress=progress)
    if run.result.interrupted:
        done = len(run.result.history)
        click.echo(f"interrupted after {done} complete epoch(s); last checkpoint kept in {run.run_dir}", err=True)
        sys.exit(130)
    m = run.metrics
    click.echo(
        f"trained {m['epochs_trained']} epochs in {m['train_time_s']:.1f}s on {dataset.X.shape[0]} samples → {run.run_dir}\n"
        f"  {m['evaluated_on']}: reconstruction error {m['val_reconstruction_error']:.4f}  "
        f"mean ‖J_f‖_F {m['val_jacobian_norm']:.4f}  loss {m['val_loss']:.4f}"
    )


@app.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_data_option
@click.option("--output", type=click.Path(path_type=Path), default=Path("features.npy"), help="Codes file (.npy).")
@_split_option
@_limit_option
def encode(run_dir, data, output, split, limit) -> None:
    """Write the hidden codes of DATA under the model in RUN_DIR to a .npy file."""
    from .checkpoint import atomic_write, load_run
    from .data import load_dataset
    from .runs import encode as encode_array

    if output.suffix != ".npy":
        raise ContractiveError(f"output {str(output)!r} must end in .npy")
    if not output.resolve().parent.is_dir():
        raise ContractiveError(f"output directory {str(output.parent)!r} does not exist")
    run = load_run(run_dir)
    dataset = load_dataset(data, split=split, limit=limit)
    codes = encode_array(run.model, dataset.X)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, codes)

    atomic_write(output, write)
    click.echo(f"wrote codes of shape {codes.shape} to {output}")


@app.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def info(run_dir) -> None:
    """Print a run's config and final metrics as JSON."""
    from .checkpoint import load_run

    run = load_run(run_dir)
    click.echo(json.dumps({"config": run.config, "metrics": run.metrics}, indent=2))


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
