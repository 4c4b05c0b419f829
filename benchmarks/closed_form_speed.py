"""Training-step time of a CAE (closed-form penalty) against a plain autoencoder, measured in one process.

784 → 1000 sigmoid, tied weights, BCE, Adam, batch 128, on Fashion-MNIST-sized data (the real Fashion-MNIST
training set when the Debian package is installed, else the MNIST test set, else uniform noise of that shape).
Steps of the two models are interleaved so that both see the same machine load; the table reports medians.

    python benchmarks/closed_form_speed.py [--steps 300] [--threads N]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    X, source = load_data()
    X = torch.as_tensor(X)
    rng = torch.Generator().manual_seed(0)
    models = {}
    for name, lam in (("AE (no penalty)", 0.0), ("CAE closed form", 0.1)):
        torch.manual_seed(0)
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

    base = statistics.median(times["AE (no penalty)"])
    print(f"data: {source}; 784→{args.hidden} sigmoid, batch {args.batch_size}, Adam; "
          f"{args.steps} interleaved steps each, torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print()
    print("| model | median step (ms) | p10–p90 (ms) | ratio to AE |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        deciles = statistics.quantiles(values, n=10)
        median = statistics.median(values)
        print(f"| {name} | {median * 1e3:.2f} | {deciles[0] * 1e3:.2f}–{deciles[-1] * 1e3:.2f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
