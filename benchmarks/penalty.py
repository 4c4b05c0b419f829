"""Training-step time and peak memory of every penalty method against a plain AE and two naive baselines.

For three encoders on CPU, batch 128, MNIST digits (sigmoid units, tied mirrored decoder, BCE, Adam):

- ``784→1000``: one Linear + sigmoid layer (the classic CAE);
- ``784→500→200``: a deep MLP;
- ``conv``: the default convolutional encoder (two 3×3 stride-2 convolutions 1→16→32, then 1568→64).

one training step (forward + penalty + backward + optimizer step) is timed for: the plain AE (no penalty);
each method of :func:`contractive.jacobian_frobenius_sq` (closed form where it applies, ``auto`` and the
strategy it picks, ``exact``, ``projection`` with k = 1 and k = 4 probes); the naive loop that calls
``torch.autograd.grad(h[:, j].sum(), x, create_graph=True)`` once per code unit j (each call gives that
row of every sample's Jacobian); and ``torch.func.vmap(torch.func.jacrev(f))`` over samples. Steps of all
variants are interleaved round-robin in one process so they see the same machine load; the table shows
medians and the ratio to the plain AE's median. Peak memory is the growth of the process's peak resident
set (VmHWM) over one plain step (which allocates the optimizer state) followed by one step of the
variant, measured in a fresh subprocess per variant after the model and data are loaded.

    python benchmarks/penalty.py [--fast-reps 60] [--reps 9] [--threads N] [--encoders mlp,conv] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from contractive import Autoencoder, ModelConfig, load_dataset
from contractive.penalty import choose_method, encode_with_penalty

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
LAM = 0.1
ENCODERS = {
    "784→1000": {"hidden": 1000},
    "784→500→200": {"encoder_layers": [500, 200]},
    "conv": {"arch": "conv"},
}
ENCODER_KEYS = {"single": "784→1000", "mlp": "784→500→200", "conv": "conv"}
# Steps per variant depend on how long its first step took: under FAST_S, --fast-reps; under SLOW_S, --reps;
# else 2, or beyond VERY_SLOW_S the first step alone.
SLOW_S = 3.0
VERY_SLOW_S = 30.0
FAST_S = 0.5


def naive_loop(encoder, x):
    """Per-sample Jacobian rows by one autograd.grad call per code unit (create_graph for training)."""
    x = x.detach().requires_grad_(True)
    h = encoder(x)
    total = x.new_zeros(x.shape[0])
    for j in range(h.shape[1]):
        (row,) = torch.autograd.grad(h[:, j].sum(), x, create_graph=True)
        total = total + row.pow(2).sum(dim=1)
    return h, total


def vmap_jacrev(encoder, x):
    """torch.func.vmap over samples of jacrev of the per-sample encoder: full (B, H, D) Jacobian."""

    def single(sample):
        h = encoder(sample.unsqueeze(0)).squeeze(0)
        return h, h

    jacobian, h = torch.func.vmap(torch.func.jacrev(single, has_aux=True))(x)
    return h, jacobian.flatten(1).pow(2).sum(dim=1)


def library(method: str, k: int = 1):
    generator = torch.Generator().manual_seed(0)

    def penalty(encoder, x):
        return encode_with_penalty(encoder, x, method=method, n_projections=k, generator=generator)

    return penalty


def variants(encoder_name: str) -> dict[str, object]:
    found = {"plain AE": None}
    if encoder_name == "784→1000":
        found["closed_form"] = library("closed_form")
    found.update(
        {
            "auto": library("auto"),
            "exact": library("exact"),
            "projection k=1": library("projection", 1),
            "projection k=4": library("projection", 4),
            "naive autograd.grad loop": naive_loop,
            "vmap(jacrev)": vmap_jacrev,
        }
    )
    return found


def build(encoder_name: str) -> Autoencoder:
    torch.manual_seed(0)
    config = ModelConfig(n_features=784, lam=LAM, reconstruction="bce", **ENCODERS[encoder_name])
    return Autoencoder(config).train()


def make_step(model: Autoencoder, penalty, optimizer: torch.optim.Optimizer | None = None):
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(xb: torch.Tensor) -> float:
        start = time.perf_counter()
        if penalty is None:
            h, term = model.encode(xb), 0.0
        else:
            h, per_sample = penalty(model.encoder, xb)
            term = LAM * per_sample.mean()
        loss = model.reconstruction_per_sample(xb, h).mean() + term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def load_data() -> tuple[torch.Tensor, str]:
    if (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        data = load_dataset(str(MNIST))
        return torch.as_tensor(data.X), f"MNIST test set ({data.X.shape[0]} images)"
    return torch.as_tensor(np.random.default_rng(0).random((10000, 784), dtype=np.float32)), "uniform noise"


def strategy(encoder_name: str, variant: str, x: torch.Tensor) -> str:
    methods = {"closed_form": "closed_form", "auto": "auto", "exact": "exact"}
    if variant in methods or variant.startswith("projection"):
        method = methods.get(variant, "projection")
        return choose_method(build(encoder_name).encoder, x, method=method).strategy
    return {"plain AE": "—", "naive autograd.grad loop": "H grad calls", "vmap(jacrev)": "torch.func"}[variant]


def peak_memory_mib(encoder_name: str, variant: str, batch: int, threads: int) -> float:
    """Growth of peak RSS (MiB) over a plain step and one step of the variant, in a fresh process."""
    command = [sys.executable, __file__, "--memory-of", encoder_name, variant, "--batch-size", str(batch)]
    command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def measure_memory(encoder_name: str, variant: str, batch: int) -> None:
    X, _ = load_data()
    xb = X[:batch]
    model = build(encoder_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = make_step(model, variants(encoder_name)[variant], optimizer)
    before = _peak_rss_kib()
    make_step(model, None, optimizer)(xb)  # optimizer state, kernels, allocator pools: the plain AE's peak
    step(xb)
    print((_peak_rss_kib() - before) / 1024)


def _peak_rss_kib() -> int:
    # VmHWM belongs to this process's own address space. ru_maxrss would not do: across fork + exec it starts
    # from the parent's peak, which hides everything smaller.
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="timed steps per variant taking over 0.5 s")
    parser.add_argument("--fast-reps", type=int, default=60, help="timed steps per variant taking under 0.5 s")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--encoders", default="single,mlp,conv", help="subset of single,mlp,conv")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--memory-of", nargs=2, metavar=("ENCODER", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        measure_memory(*args.memory_of, args.batch_size)
        return

    X, source = load_data()
    rng = torch.Generator().manual_seed(0)
    print(
        f"data: {source}; batch {args.batch_size}, sigmoid units, tied decoder, BCE, Adam, λ = {LAM}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); medians of interleaved steps"
    )
    results = {}
    for key in args.encoders.split(","):
        name = ENCODER_KEYS[key]
        steps = {variant: make_step(build(name), fn) for variant, fn in variants(name).items()}
        first = {}
        for variant, step in steps.items():  # warm-up, also tells which variants are slow
            xb = X[torch.randint(0, X.shape[0], (args.batch_size,), generator=rng)]
            first[variant] = step(xb)
        # Fast variants get --fast-reps steps, others --reps, slow ones 2; very slow ones (the naive baselines
        # on wide codes) count their first step only.
        budget = {}
        for variant, seconds in first.items():
            budget[variant] = args.fast_reps if seconds < FAST_S else args.reps if seconds < SLOW_S else 2
            budget[variant] = 0 if seconds > VERY_SLOW_S else budget[variant]
        times = {variant: [seconds] if seconds > VERY_SLOW_S else [] for variant, seconds in first.items()}
        for rep in range(max(budget.values())):
            xb = X[torch.randint(0, X.shape[0], (args.batch_size,), generator=rng)]
            for variant, step in steps.items():
                if rep < budget[variant]:
                    times[variant].append(step(xb))
        base = statistics.median(times["plain AE"])
        rows = []
        for variant, values in times.items():
            median = statistics.median(values)
            row = {
                "variant": variant,
                "strategy": strategy(name, variant, X[: args.batch_size]),
                "median_ms": median * 1e3,
                "ratio": median / base,
                "steps": len(values),
            }
            if not args.no_memory:
                row["peak_mib"] = peak_memory_mib(name, variant, args.batch_size, args.threads)
            rows.append(row)
        results[name] = rows
        print(f"\n{name}\n")
        print("| variant | strategy | median step (ms) | × plain AE | peak memory (MiB) | steps |")
        print("|---|---|---:|---:|---:|---:|")
        for row in rows:
            memory = f"{row['peak_mib']:.0f}" if "peak_mib" in row else "—"
            print(
                f"| {row['variant']} | {row['strategy']} | {row['median_ms']:.1f} | {row['ratio']:.2f} | "
                f"{memory} | {row['steps']} |"
            )
        exact = next(r for r in rows if r["variant"] == "exact")["median_ms"]
        jacrev = next(r for r in rows if r["variant"] == "vmap(jacrev)")["median_ms"]
        print(f"\nexact is {jacrev / exact:.1f}× faster than vmap(jacrev)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
