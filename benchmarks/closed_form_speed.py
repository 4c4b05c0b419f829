"""Training-step time of a CAE (closed-form penalty) against a plain autoencoder, measured in one process.

784 → 1000 sigmoid, tied weights, BCE, Adam, batch 128, on Fashion-MNIST-sized data (the real Fashion-MNIST
training set when the Debian package is installed, else the MNIST test set, else uniform noise of that shape).
Steps of the two models are interleaved so that both see the same machine load; the table reports medians.

    python benchmarks/closed_form_speed.py [--steps 1000] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from contractive import Autoencoder, ModelConfig, load_dataset
from contractive.config import TrainConfig
from contractive.training import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [Path("/usr/share/datasets/fashion-mnist"), ROOT.parent / "shared" / "data" / "mnist"]


def load_data() -> tuple[np.ndarray, str]:
    for path in CANDIDATES:
        if path.is_dir() and any(path.glob("*images-idx3-ubyte*")):
            data = load_dataset(str(path))
            return data.X, f"{path} ({data.description['split']}, {data.X.shape[0]} images)"
    return np.random.default_rng(0).random((10000, 784), dtype=np.float32), "uniform noise (10000×784)"


def make_step(model: Autoencoder):
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3))

    def step(xb: torch.Tensor) -> float:
        start = time.perf_counter()
        loss = model.loss(xb)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def measure(X: torch.Tensor, args: argparse.Namespace, seed: int) -> dict[str, list[float]]:
    """One interleaved measurement with fresh models: step times (s) per model."""
    rng = torch.Generator().manual_seed(seed)
    models = {}
    for name, lam in (("AE (no penalty)", 0.0), ("CAE closed form", 0.1)):
        torch.manual_seed(seed)
        models[name] = Autoencoder(
            ModelConfig(n_features=784, hidden=args.hidden, lam=lam, reconstruction="bce")
        ).train()
    steps = {name: make_step(model) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.warmup + args.steps):
        xb = X[torch.randint(0, X.shape[0], (args.batch_size,), generator=rng)]
        # Alternate which model goes first so neither always runs on a warmer cache.
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for name in order:
            elapsed = steps[name](xb)
            if i >= args.warmup:
                times[name].append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="measured steps per model and repeat")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="independent measurements, each with fresh models")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    X, source = load_data()
    X = torch.as_tensor(X)
    runs = [measure(X, args, seed) for seed in range(args.repeats)]
    names = list(runs[0])
    base_name = names[0]

    print(f"data: {source}; 784→{args.hidden} sigmoid, batch {args.batch_size}, Adam; {args.repeats} × "
          f"{args.steps} interleaved steps each, torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print()
    # Step times on a busy allocator drift by several % between runs; each repeat's ratio is shown, and the
    # headline ratio is that of the medians over all repeats' steps.
    repeat_columns = " | ".join(f"repeat {r + 1}" for r in range(args.repeats))
    print(f"| model | median step (ms) | p10–p90 (ms) | ratio to AE | {repeat_columns} |")
    print("|---|---:|---:|---:|" + "---:|" * args.repeats)
    pooled = {name: [t for run in runs for t in run[name]] for name in names}
    base = statistics.median(pooled[base_name])
    for name in names:
        values = pooled[name]
        deciles = statistics.quantiles(values, n=10)
        median = statistics.median(values)
        per_repeat = " | ".join(
            f"{statistics.median(run[name]) / statistics.median(run[base_name]):.3f}" for run in runs
        )
        print(
            f"| {name} | {median * 1e3:.2f} | {deciles[0] * 1e3:.2f}–{deciles[-1] * 1e3:.2f} | "
            f"{median / base:.3f} | {per_repeat} |"
        )


if __name__ == "__main__":
    main()
