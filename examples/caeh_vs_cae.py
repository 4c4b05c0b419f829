"""CAE+H against a plain CAE with the same λ: how much does the Jacobian change around held-out samples?

Trains both on the same split, from the same initial weights, and prints on held-out data the mean of
‖J_f(x) − J_f(x̃)‖_F over Gaussian copies x̃ = x + ε (ε ~ N(0, σ²I), fresh draws, the σ of the CAE+H
term), next to ‖J_f(x)‖_F and the reconstruction error.

Usage::

    python examples/caeh_vs_cae.py --data digits --lam 0.1 --gamma 1 --sigma 0.3
"""

from __future__ import annotations

import argparse

import torch

from contractive import Autoencoder, ModelConfig, TrainConfig, fit, jacobian_frobenius_sq, load_dataset, relatives
from contractive.data import train_val_split


@torch.no_grad()
def jacobian_change(model: Autoencoder, X: torch.Tensor, sigma: float, n_copies: int, seed: int) -> float:
    """Held-out mean over samples and copies of ‖J_f(x) − J_f(x̃)‖_F."""
    generator = torch.Generator().manual_seed(seed)
    x_tilde = relatives.gaussian_copies(X, n_copies, sigma, generator=generator)
    return float(relatives.jacobian_difference_sq(model.encoder, X, x_tilde).sqrt().mean())


def train_and_measure(config: ModelConfig, X_train, X_test, train: TrainConfig, sigma: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model = Autoencoder(config)
    fit(model, X_train, None, train, progress=False)
    model.eval()
    with torch.no_grad():
        error = float((X_test - model(X_test)).pow(2).sum(dim=1).mean())
        j_f = float(jacobian_frobenius_sq(model.encoder, X_test).sqrt().mean())
    return {"change": jacobian_change(model, X_test, sigma, 10, seed + 1), "j_f": j_f, "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--n-corruptions", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = load_dataset(args.data, limit=args.limit)
    train_idx, test_idx = train_val_split(data.X.shape[0], 0.2, args.seed)
    X_train, X_test = torch.as_tensor(data.X[train_idx]), torch.as_tensor(data.X[test_idx])
    common = {"n_features": data.X.shape[1], "hidden": args.hidden, "lam": args.lam, "reconstruction": "bce"}
    train = TrainConfig(epochs=args.epochs, batch_size=64, lr=1e-2, seed=args.seed)
    rows = {
        f"CAE (λ={args.lam:g})": ModelConfig(**common, model="cae"),
        f"CAE+H (λ={args.lam:g}, γ={args.gamma:g})": ModelConfig(
            **common, model="caeh", gamma=args.gamma, sigma=args.sigma, n_corruptions=args.n_corruptions
        ),
    }
    print(f"{args.data}: {len(train_idx)} train / {len(test_idx)} held out, {args.epochs} epochs, σ = {args.sigma:g}")
    print(f"{'model':<28} {'‖J_f(x) − J_f(x̃)‖_F':>22} {'‖J_f(x)‖_F':>11} {'‖x − r(x)‖²':>12}")
    for name, config in rows.items():
        r = train_and_measure(config, X_train, X_test, train, args.sigma, args.seed)
        print(f"{name:<28} {r['change']:>22.4f} {r['j_f']:>11.4f} {r['error']:>12.4f}")


if __name__ == "__main__":
    main()
