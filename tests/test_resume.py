"""Resumable runs: interrupt after an epoch, resume, and land on bit-identical weights (CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contractive import ModelConfig, TrainConfig, load_dataset, train_run
from contractive.checkpoint import CHECKPOINTS, TRAINING_STATE, WEIGHTS, latest_training_checkpoint
from contractive.cli import main
from contractive.errors import ContractiveError
from contractive.training import fit

MODEL = ModelConfig(n_features=64, hidden=12)
TRAIN = TrainConfig(epochs=3, batch_size=50, seed=5, optimizer="adam", patience=0)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / WEIGHTS))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=250)


def test_interrupt_after_epoch_one_then_resume_is_bit_identical(digits, tmp_path, monkeypatch):
    full = train_run(digits, MODEL, TRAIN, tmp_path / "full", progress=False, figures=False, device="cpu")

    # Ctrl-C right after epoch 1 has been checkpointed (a real SIGINT to this process).
    import contractive.runs as runs

    def fit_then_sigint(*args, **kwargs):
        kwargs["on_epoch_end"] = lambda row: os.kill(os.getpid(), signal.SIGINT) if row["epoch"] == 1 else None
        return fit(*args, **kwargs)

    monkeypatch.setattr(runs, "fit", fit_then_sigint)
    cut = train_run(digits, MODEL, TRAIN, tmp_path / "cut", progress=False, figures=False, device="cpu")
    monkeypatch.undo()
    assert cut.result.interrupted and len(cut.result.history) == 1
    assert latest_training_checkpoint(tmp_path / "cut").name == "epoch-000001"

    resumed = train_run(
        digits, MODEL, TRAIN, tmp_path / "cut", progress=False, figures=False, device="cpu", resume=True
    )
    assert resumed.result.resumed_from_epoch == 1
    assert [row["epoch"] for row in resumed.result.history] == [1, 2, 3]
    _assert_same_weights(_weights(tmp_path / "cut"), _weights(tmp_path / "full"))
    assert resumed.metrics["train_loss"] == full.metrics["train_loss"]
    # Only the last complete epoch is kept, and its optimizer state loads without pickle.
    assert [p.name for p in (tmp_path / "cut" / CHECKPOINTS).iterdir()] == ["epoch-000003"]
    state = torch.load(tmp_path / "cut" / CHECKPOINTS / "epoch-000003" / TRAINING_STATE, weights_only=True)
    assert state["epoch"] == 3 and state["optimizer"]["state"]


# Runs ``contractive train`` in a child process that SIGINTs itself as soon as epoch 1's checkpoint is
# on disk: a real Ctrl-C through the CLI, at a deterministic point however fast the machine is.
_SIGINT_AFTER_EPOCH_1 = r"""
import os, signal, sys
from contractive import checkpoint
from contractive.cli import main

save = checkpoint.save_training_checkpoint

def save_then_interrupt(run_dir, epoch, *args, **kwargs):
    path = save(run_dir, epoch, *args, **kwargs)
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGINT)
    return path

checkpoint.save_training_checkpoint = save_then_interrupt
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_cli_sigint_then_resume_equals_uninterrupted(tmp_path, cli):
    """The user's path: Ctrl-C a running ``contractive train`` after epoch 1, then ``--resume`` it."""
    args = ["--data", "digits", "--limit", "300", "--hidden", "12", "--batch-size", "32", "--epochs", "3"]
    run_dir = tmp_path / "cli"
    cut = subprocess.run(
        [sys.executable, "-c", _SIGINT_AFTER_EPOCH_1, "train", *args, "--seed", "2", "--out", str(run_dir),
         "--no-progress", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cut.returncode == 130, cut.stderr
    assert "interrupted after 1 complete epoch(s)" in cut.stderr
    assert latest_training_checkpoint(run_dir).name == "epoch-000001"

    resumed = cli("train", "--resume", str(run_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    data = load_dataset("digits", limit=300)
    config = TrainConfig(epochs=3, batch_size=32, seed=2)
    reference = train_run(data, ModelConfig(n_features=64, hidden=12), config, tmp_path / "ref", progress=False,
                          figures=False, device="cpu")  # fmt: skip
    assert len(reference.result.history) == 3
    _assert_same_weights(_weights(run_dir), _weights(tmp_path / "ref"))


def test_resume_rejects_conflicting_options_and_missing_checkpoints(digits, tmp_path, capsys):
    train_run(digits, MODEL, TRAIN, tmp_path / "run", progress=False, figures=False, device="cpu")
    for extra, message in [
        (["--lr", "0.5"], "--lr 0.5 conflicts with the run being resumed (lr = 0.01"),
        (["--hidden", "7"], "--hidden 7 conflicts"),
        (["--data", "other.npy"], "--data other.npy conflicts"),
        (["--out", str(tmp_path / "x")], "--out cannot be combined with --resume"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["train", "--resume", str(tmp_path / "run"), *extra])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    # Options equal to the stored ones are fine to repeat (here the run is already complete).
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(tmp_path / "run"), "--lr", "0.01", "--no-progress", "--device", "cpu"])
    assert exc.value.code == 0

    (tmp_path / "empty").mkdir()
    with pytest.raises(ContractiveError, match="has no resumable checkpoint"):
        fit(torch.nn.Linear(2, 2), torch.zeros(4, 2), run_dir=tmp_path / "empty", resume=True, progress=False)


def test_checkpoint_with_mismatched_epochs_is_refused(digits, tmp_path):
    train_run(digits, MODEL, TrainConfig(epochs=2, batch_size=32), tmp_path / "run", progress=False, figures=False,
              device="cpu")  # fmt: skip
    step = latest_training_checkpoint(tmp_path / "run")
    state = torch.load(step / TRAINING_STATE, weights_only=True)
    state["epoch"] = 1  # as if the optimizer state came from another epoch than the weights
    torch.save(state, step / TRAINING_STATE)
    with pytest.raises(ContractiveError, match="inconsistent: weights are from epoch 2, training state from epoch 1"):
        train_run(digits, MODEL, TrainConfig(epochs=2, batch_size=32), tmp_path / "run", progress=False,
                  figures=False, device="cpu", resume=True)  # fmt: skip
