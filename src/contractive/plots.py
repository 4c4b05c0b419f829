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
