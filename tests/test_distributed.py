"""Multi-process training: torchrun + DistributedDataParallel (gloo on CPU) against a single process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from contractive import Autoencoder, ModelConfig, TrainConfig, load_dataset, train_run
from contractive.checkpoint import CHECKPOINTS, WEIGHTS
from contractive.distributed import Context, LossModule, resolve_device, wrap
from contractive.errors import ContractiveError
from contractive.training import fit

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 epochs on digits with a global batch of 64: 2 ranks × 32 vs 1 process × 64, same seed.

    Tolerance: the DDP gradient is the same batch mean summed in another order (and all-reduced), so
    results agree to float32 rounding; observed relative loss differences are ~1e-7, asserted < 1e-5.
    """
    args = ["train", "--data", "digits", "--epochs", "2", "--hidden", "16", "--batch-size", "64", "--seed", "3",
            "--no-progress", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # No --out: rank 0 names the run directory from the clock and every rank must use that one.
    launched = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "contractive", *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("trained 2 epochs") == 1  # only rank 0 reports
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    ddp_dir = runs[0]
    assert [p.name for p in (ddp_dir / CHECKPOINTS).iterdir()] == ["epoch-000002"]
    assert not [p for p in ddp_dir.rglob("*") if p.name.endswith(".tmp")]
    config = json.loads((ddp_dir / "config.json").read_text())
    assert config["environment"]["world_size"] == 2

    single = train_run(
        load_dataset("digits"), ModelConfig(n_features=64, hidden=16),
        TrainConfig(epochs=2, batch_size=64, seed=3), tmp_path / "single", progress=False, figures=False,
        device="cpu",
    )  # fmt: skip
    ddp_rows, single_rows = _history(ddp_dir), single.result.history
    assert len(ddp_rows) == len(single_rows) == 2
    for ddp_row, single_row in zip(ddp_rows, single_rows, strict=True):
        for key in ("train_loss", "val_loss", "val_jacobian_norm"):
            assert ddp_row[key] == pytest.approx(single_row[key], rel=1e-5), key
    ddp_weights, single_weights = load_file(str(ddp_dir / WEIGHTS)), load_file(str(tmp_path / "single" / WEIGHTS))
    for name, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-5, atol=1e-6)


def _gradient_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One rank: DDP-wrapped loss on this rank's share of an uneven batch, then save the gradients."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        context = Context(rank=rank, world_size=world_size, device=torch.device("cpu"))
        torch.manual_seed(0)
        model = Autoencoder(ModelConfig(n_features=10, hidden=4, lam=0.5, reconstruction="bce"))
        x = torch.rand(7, 10, generator=torch.Generator().manual_seed(1))
        module = wrap(model, context)
        batch = torch.arange(7)
        mine = context.shard(batch)
        share = mine.numel() * world_size / batch.numel()  # as in training._train_one_epoch
        (module(x[mine])["loss"] * share).backward()
        torch.save({k: p.grad for k, p in model.named_parameters()}, Path(out_dir) / f"grad{rank}.pt")
        # Both ranks done before either leaves: gloo can abort a process whose peer tears down mid-operation
        # (seen once as "terminate called without an active exception" under load).
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_averages_gradients_to_the_full_batch_gradient(tmp_path):
    """7 samples over 2 ranks (4 + 3): after one backward both ranks hold the 7-sample mean gradient,
    penalty included, which only happens if the loss ran through DDP's forward."""
    mp.start_processes(
        _gradient_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    torch.manual_seed(0)
    model = Autoencoder(ModelConfig(n_features=10, hidden=4, lam=0.5, reconstruction="bce"))
    x = torch.rand(7, 10, generator=torch.Generator().manual_seed(1))
    LossModule(model)(x)["loss"].backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"grad{rank}.pt", weights_only=True)
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7)
    # The check has teeth: one rank's own gradient is far from the full-batch one.
    torch.manual_seed(0)
    alone = Autoencoder(ModelConfig(n_features=10, hidden=4, lam=0.5, reconstruction="bce"))
    alone.loss(x[0::2])["loss"].backward()
    assert not torch.allclose(alone.encoder[0].weight.grad, model.encoder[0].weight.grad, rtol=1e-3)


def test_device_selection_and_global_batch_checks(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ContractiveError, match="no CUDA device is available"):
        resolve_device("cuda")
    with pytest.raises(ContractiveError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ContractiveError, match="must be divisible by the number of processes"):
        fit(
            Autoencoder(ModelConfig(n_features=4, hidden=2, reconstruction="bce")),
            np.zeros((8, 4), dtype=np.float32),
            config=TrainConfig(batch_size=5),
            context=Context(world_size=2),
            progress=False,
        )


def test_bf16_autocast_trains_with_a_float32_penalty():
    data = load_dataset("digits", limit=200)
    config = ModelConfig(n_features=64, hidden=8, reconstruction="bce")
    losses = {}
    for precision in ("32", "bf16"):
        torch.manual_seed(0)
        model = Autoencoder(config)
        result = fit(model, data.X, None, TrainConfig(epochs=2, batch_size=50, precision=precision),
                     progress=False, device="cpu")  # fmt: skip
        losses[precision] = result.history[-1]["train_loss"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = model.loss(torch.as_tensor(data.X[:16]))
        assert terms["penalty"].dtype == torch.float32
    assert losses["bf16"] == pytest.approx(losses["32"], rel=0.02)
    assert losses["bf16"] != losses["32"]  # autocast really ran in bfloat16
