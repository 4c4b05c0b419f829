"""GPU smoke check: train on CUDA and print steps/s for a plain AE vs a CAE (closed form, projection).

All variants train the same tied sigmoid autoencoder (784 → 256) on the same synthetic [0, 1] data
through :func:`contractive.fit` in this one process, so the ratios against the plain AE (λ = 0) measured
here are comparable. Exits 0 with a clear message when no CUDA device is present.

    python benchmarks/gpu_check.py [--epochs 3] [--batch-size 256] [--precision 32|bf16]
    python benchmarks/gpu_check.py --device cpu --samples 2000   # dry run of the script itself
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from contractive import Autoencoder, ModelConfig, TrainConfig, fit
from contractive import penalty as penalty_module
from contractive.errors import ContractiveError


def steps_per_second(model_config: ModelConfig, X: np.ndarray, args) -> float:
    torch.manual_seed(0)
    model = Autoencoder(model_config)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, precision=args.precision, val_fraction=0)
    result = fit(model, X, None, config, progress=False, device=args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    steps = -(-X.shape[0] // args.batch_size)
    timed = result.history[1:] or result.history  # the first epoch pays for CUDA warm-up
    return steps * len(timed) / sum(row["epoch_time_s"] for row in timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device available (torch.cuda.is_available() is False); nothing to measure.")
        return 0
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name}  torch {torch.__version__}  precision {args.precision}")
    X = np.random.default_rng(0).random((args.samples, 784), dtype=np.float32)
    base = {"n_features": 784, "hidden": 256, "reconstruction": "bce"}
    variants = [("plain AE (λ = 0)", {"lam": 0.0}), ("CAE closed form", {"lam": 0.1, "penalty_method": "closed_form"})]
    if "projection" in penalty_module.METHODS:
        variants.append(("CAE projection", {"lam": 0.1, "penalty_method": "projection", "n_projections": 1}))
    else:
        print("(penalty_method='projection' is not in this version of contractive.penalty; skipped)")
    baseline = None
    print(f"{'model':<22} {'steps/s':>10} {'vs plain AE':>12}")
    for name, options in variants:
        try:
            rate = steps_per_second(ModelConfig(**base, **options), X, args)
        except ContractiveError as exc:
            print(f"{name:<22} {'failed':>10}  {exc}")
            continue
        baseline = baseline or rate
        print(f"{name:<22} {rate:>10.1f} {rate / baseline:>11.2f}×")
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"(total {time.perf_counter() - started:.1f}s)", file=sys.stderr)
    sys.exit(code)
