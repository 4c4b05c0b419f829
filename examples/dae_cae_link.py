"""The DAE ↔ reconstruction-contractive link, measured on a trained model and real data.

For small Gaussian noise ε ~ N(0, σ²I) and r = g∘f (Alain & Bengio 2014),

    E_ε‖x − r(x + ε)‖² = ‖x − r(x)‖² + σ² (‖J_r(x)‖²_F − Σ_i e_i Δr_i(x)) + O(σ⁴),   e = x − r(x).

The first-order argument usually quoted keeps only ‖J_r‖²_F; the Laplacian term Σ_i e_i Δr_i comes from
the second-order Taylor term meeting the reconstruction error, and vanishes only where r reconstructs x.
Part 1 prints, for σ decreasing, the Monte Carlo ratio (E‖x − r(x+ε)‖² − ‖x − r(x)‖²)/σ² beside
‖J_r‖²_F and beside the full limit, with both relative gaps. Part 2 trains a DAE(σ) and an RCAE(λ = σ²)
with the squared-error loss on digits and compares their ‖J_r‖_F and reconstruction error.

Usage::

    contractive train --data digits --reconstruction squared_error --out runs/link
    python examples/dae_cae_link.py runs/link --data digits
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from contractive import (
    Autoencoder,
    ModelConfig,
    TrainConfig,
    fit,
    jacobian_frobenius_sq,
    load_dataset,
    load_run,
    relatives,
)
from contractive.data import train_val_split


def laplacian_term(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_i e_i Δr_i(x) per sample, with e = x − r(x) held fixed: the trace of the Hessian of eᵀr."""
    e = (x - model(x)).detach()

    def weighted(y: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        return (eb * model(y.unsqueeze(0))[0]).sum()

    return torch.stack([torch.func.hessian(weighted)(xb, eb).trace() for xb, eb in zip(x, e, strict=True)])


def link_table(model, x: torch.Tensor, sigmas: list[float], draws: int, seed: int) -> None:
    model = model.double().eval()
    x = x.double()
    with torch.no_grad():
        j_sq = float(relatives.reconstruction_jacobian_sq(model, x).mean())
    limit = j_sq - float(laplacian_term(model, x).detach().mean())
    print(f"{x.shape[0]} samples, {draws} antithetic pairs per sample and σ (same draws for every σ)")
    print(f"mean ‖J_r‖²_F = {j_sq:.5f}; second-order limit ‖J_r‖²_F − eᵀΔr = {limit:.5f}\n")
    print(f"{'σ':>8} {'MC ratio':>10} {'‖J_r‖²_F':>10} {'gap vs ‖J_r‖²':>14} {'limit':>10} {'gap vs limit':>13}")
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(seed)
        ratio = float(relatives.denoising_excess(model, x, sigma=sigma, n_draws=draws, generator=generator).mean())
        print(
            f"{sigma:>8.4g} {ratio:>10.5f} {j_sq:>10.5f} {abs(ratio - j_sq) / j_sq:>14.2%} "
            f"{limit:>10.5f} {abs(ratio - limit) / abs(limit):>13.2%}"
        )


def compare_dae_rcae(X: np.ndarray, sigma: float, hidden: int, epochs: int, seed: int) -> None:
    train_idx, test_idx = train_val_split(X.shape[0], 0.2, seed)
    X_train, X_test = torch.as_tensor(X[train_idx]), torch.as_tensor(X[test_idx])
    common = {"n_features": X.shape[1], "hidden": hidden, "reconstruction": "squared_error"}
    models = {
        f"DAE(σ={sigma:g})": ModelConfig(**common, model="dae", noise="gaussian", sigma=sigma),
        f"RCAE(λ=σ²={sigma**2:g})": ModelConfig(**common, model="rcae", lam=sigma**2),
        "AE (no regulariser)": ModelConfig(**common, model="ae"),
    }
    print(f"\ntrained {epochs} epochs on {len(train_idx)} digits, measured on {len(test_idx)} held-out digits")
    print(f"{'model':<24} {'‖J_r‖_F':>9} {'‖J_f‖_F':>9} {'‖x − r(x)‖²':>12} {'E‖x − r(x+ε)‖²':>16}")
    for name, config in models.items():
        torch.manual_seed(seed)
        model = Autoencoder(config)
        fit(model, X_train, None, TrainConfig(epochs=epochs, batch_size=64, lr=1e-2, seed=seed), progress=False)
        model.eval()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            j_r = relatives.reconstruction_jacobian_sq(model, X_test).sqrt().mean()
            j_f = jacobian_frobenius_sq(model.encoder, X_test).sqrt().mean()
            error = (X_test - model(X_test)).pow(2).sum(dim=1).mean()
            noisy = relatives.corrupt(X_test, "gaussian", sigma=sigma, generator=generator)
            denoising = (X_test - model(noisy)).pow(2).sum(dim=1).mean()
        print(f"{name:<24} {float(j_r):>9.4f} {float(j_f):>9.4f} {float(error):>12.4f} {float(denoising):>16.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory from `contractive train` (single-layer autoencoder)")
    parser.add_argument("--data", default="digits", help="dataset spec (as for the CLI)")
    parser.add_argument("--n-samples", type=int, default=100, help="the last N samples are used")
    parser.add_argument("--draws", type=int, default=2000, help="antithetic noise pairs per sample and σ")
    parser.add_argument("--sigmas", default="0.4,0.2,0.1,0.05,0.025,0.0125,0.00625")
    parser.add_argument("--compare-sigma", type=float, default=0.3, help="σ of the DAE; the RCAE gets λ = σ²")
    parser.add_argument("--epochs", type=int, default=30, help="epochs for the DAE / RCAE comparison (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = load_dataset(args.data)
    run = load_run(args.run_dir)
    print(f"model {run.model.config.model} from {args.run_dir}, data {args.data}")
    link_table(
        run.model,
        torch.as_tensor(data.X[-args.n_samples :]),
        [float(s) for s in args.sigmas.split(",")],
        args.draws,
        args.seed,
    )
    if args.epochs:
        compare_dae_rcae(data.X, args.compare_sigma, run.model.config.hidden, args.epochs, args.seed)


if __name__ == "__main__":
    main()
