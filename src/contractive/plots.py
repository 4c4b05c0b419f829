"""Matplotlib figures for a run: learning curves, encoder filters, originals vs reconstructions.

Each function writes one PNG and returns its path. The non-interactive Agg backend is used so that
figures render on machines without a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def learning_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Loss, reconstruction and penalty per epoch, train and validation."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, term in zip(axes, ("loss", "reconstruction", "penalty"), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            values = [row.get(f"{split}_{term}", np.nan) for row in history]
            if np.isfinite(values).any():
                ax.plot(epochs, values, style, marker="o", markersize=3, label=split)
        ax.set_title(term if term != "penalty" else "penalty ‖J_f‖²_F")
        ax.set_xlabel("epoch")
        ax.legend()
    return _save(fig, path)


def image_grid(
    images: np.ndarray, image_shape: tuple[int, int], path: str | Path, *, title: str, ncols: int = 10
) -> Path:
    """Show rows of ``images`` (n, h·w) as a grid, each image scaled to its own range."""
    n = images.shape[0]
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.9, nrows * 0.9 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].reshape(image_shape), cmap="gray", interpolation="nearest")
    fig.suptitle(title)
    return _save(fig, path)


def filters(weight: np.ndarray, image_shape: tuple[int, int], path: str | Path, *, max_filters: int = 100) -> Path:
    """Encoder filters: the rows of W (hidden, n_features) as images."""
    return image_grid(weight[:max_filters], image_shape, path, title="encoder filters (rows of W)")


def reconstructions(
    X: np.ndarray, X_hat: np.ndarray, image_shape: tuple[int, int], path: str | Path, *, n: int = 10
) -> Path:
    """Originals (top row) above their reconstructions (bottom row)."""
    n = min(n, X.shape[0])
    return image_grid(
        np.concatenate([X[:n], X_hat[:n]]),
        image_shape,
        path,
        title="originals (top) / reconstructions (bottom)",
        ncols=n,
    )


# --- Diagnostics figures (see contractive.diagnostics for the definitions) ---------------------------------


def spectrum(spectra: dict[str, np.ndarray], path: str | Path, *, fraction: float | None = None) -> Path:
    """Average sorted Jacobian singular values of several runs, overlaid.

    Parameters
    ----------
    spectra : dict label → ndarray of shape (m,)
        Average spectra (:func:`contractive.diagnostics.average_spectrum`).
    fraction : float, optional
        Draw the effective-dimension threshold (``fraction`` × the largest) on the normalised panel.
    """
    fig, (raw, normalised) = plt.subplots(1, 2, figsize=(11, 3.6))
    for label, values in spectra.items():
        index = np.arange(1, len(values) + 1)
        raw.semilogy(index, values, label=label)
        normalised.semilogy(index, values / values[0], label=label)
    raw.set_title("average singular values of J_f(x)")
    normalised.set_title("relative to the largest")
    if fraction is not None:
        normalised.axhline(fraction, color="gray", linestyle=":", label=f"{fraction:g} × largest")
    for ax in (raw, normalised):
        ax.set_xlabel("index (sorted)")
        ax.legend()
    return _save(fig, path)


def contraction_curves(curves: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Contraction ratio against radius, one panel per direction kind, runs overlaid.

    ``curves`` maps a run label to ``{direction: ContractionCurve}`` (``isotropic``, ``data``).
    """
    directions = sorted({d for per_run in curves.values() for d in per_run}, key=["isotropic", "data"].index)
    fig, axes = plt.subplots(1, len(directions), figsize=(5.5 * len(directions), 3.6), squeeze=False)
    for ax, direction in zip(axes[0], directions, strict=True):
        for label, per_run in curves.items():
            if direction in per_run:
                curve = per_run[direction]
                ax.loglog(curve.radii, curve.ratio, marker="o", markersize=3, label=label)
        ax.set_title(f"contraction ratio, {direction} directions")
        ax.set_xlabel("radius r = ‖δ‖")
        ax.set_ylabel("mean ‖f(x+δ) − f(x)‖ / ‖δ‖")
        ax.legend()
    return _save(fig, path)


def tangents(
    X: np.ndarray,
    vectors: np.ndarray,
    image_shape: tuple[int, int],
    path: str | Path,
    *,
    singular_values: np.ndarray | None = None,
    title: str = "tangents: top right singular vectors of J_f(x)",
) -> Path:
    """Each row: a point x, then its k tangents as images (diverging colours centred on 0).

    Parameters
    ----------
    X : ndarray, shape (n, D)
    vectors : ndarray, shape (n, k, D)
    singular_values : ndarray, shape (n, k), optional
        Printed above each tangent.
    """
    n, k, _ = vectors.shape
    fig, axes = plt.subplots(n, k + 1, figsize=((k + 1) * 1.0, n * 1.05 + 0.4), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(X[i].reshape(image_shape), cmap="gray", interpolation="nearest")
        for j in range(k):
            v = vectors[i, j].reshape(image_shape)
            limit = float(np.abs(v).max()) or 1.0
            axes[i, j + 1].imshow(v, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            if singular_values is not None:
                axes[i, j + 1].set_title(f"σ={singular_values[i, j]:.2g}", fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    axes[0, 0].set_title("x", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def saturation_histogram(saturation: dict[str, np.ndarray], path: str | Path, *, eps: float) -> Path:
    """Histogram over samples of the percentage of saturated hidden units, runs overlaid."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0, 100, 41)
    for label, fractions in saturation.items():
        ax.hist(
            100 * np.asarray(fractions), bins=bins, alpha=0.5, label=f"{label} (mean {100 * np.mean(fractions):.1f}%)"
        )
    ax.set_xlabel(f"saturated hidden units per sample, % (within {eps:g} of a bound)")
    ax.set_ylabel("samples")
    ax.legend()
    return _save(fig, path)
