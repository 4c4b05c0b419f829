"""What a trained encoder learned, measured: Jacobian spectra, contraction curves, tangents, saturation.

All functions are pure: they take an encoder ``f`` (any module or callable mapping a batch (B, D) to codes
(B, H)) and data, and return numbers; nothing is trained or written. Figures live in
:mod:`contractive.plots`, the HTML page in :mod:`contractive.report`.

Definitions
-----------
Jacobian spectrum
    For each point x the singular values σ_1(x) ≥ … ≥ σ_m(x) of J_f(x) (m = min(H, D)). A CAE contracts
    most input directions, so its spectrum falls off much faster than a plain AE's (Rifai et al. 2011).
    The *average spectrum* is the mean over points of the sorted vectors.
Effective dimension
    For each point, the number of singular values above ``fraction`` × σ_1(x) (that point's largest),
    averaged over points: the number of directions the map keeps at x.
Contraction ratio
    For points x, radius r and unit directions u, ρ(r) = mean ‖f(x + r u) − f(x)‖ / r. ``isotropic``
    draws u uniformly on the unit sphere; ``data`` points u at another data point x',
    u = (x' − x)/‖x' − x‖, so δ moves along the data distribution. As r → 0, ρ(r) → mean ‖J_f(x) u‖.
    Lower is more contractive.
Tangents
    The top-k right singular vectors of J_f(x): the input directions the code is most sensitive to, which
    for a CAE are the local directions of the data manifold.
Saturation
    For each point, the fraction of hidden units whose activation lies within ε of a bound of the
    activation's range (sigmoid: 0 and 1; tanh: −1 and 1; ReLU and softplus: 0), the SAT % of Rifai et al.

Per-sample Jacobians are built with ``torch.func`` (``vmap`` over ``jacrev``, or ``jacfwd`` when the code is
wider than the input), a chunk of points at a time, so no tensor ever couples two samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, vmap

from .errors import ContractiveError

Encoder = Callable[[Tensor], Tensor]

DEFAULT_FRACTION = 0.1
DEFAULT_EPS = 0.05
DEFAULT_RADII = tuple(float(r) for r in np.geomspace(0.01, 10.0, 10))
DIRECTIONS = ("isotropic", "data")

# Range of each supported activation, for saturation: (lower, upper), None where unbounded.
_BOUNDS = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0), nn.ReLU: (0.0, None), nn.Softplus: (0.0, None)}


def _as_input(X: np.ndarray | Tensor, encoder: Encoder) -> Tensor:
    """``X`` as a 2-D tensor of the encoder's dtype and device (float32 when that cannot be told)."""
    params = list(encoder.parameters()) if isinstance(encoder, nn.Module) else []
    dtype = params[0].dtype if params else torch.float32
    device = params[0].device if params else torch.device("cpu")
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, Tensor) else X).to(device=device, dtype=dtype)
    if X.dim() != 2 or X.shape[0] == 0:
        raise ContractiveError(f"expected a non-empty batch of shape (n_samples, n_features), got {tuple(X.shape)}")
    if not torch.isfinite(X).all():  # else the spectra fail deep inside an eigensolver
        row = int((~torch.isfinite(X)).any(dim=1).nonzero()[0])
        raise ContractiveError(f"the points contain NaN or inf (first at row {row})")
    return X


def jacobians(encoder: Encoder, X: np.ndarray | Tensor, *, chunk_size: int = 64) -> Tensor:
    """Per-sample Jacobians J_f(x_b), each taken with respect to its own sample only.

    Parameters
    ----------
    encoder : nn.Module or callable
        Maps (B, D) to (B, H).
    X : array or Tensor, shape (n_samples, D)
    chunk_size : int
        Samples per vectorised call; bounds memory at ``chunk_size · H · D`` numbers.

    Returns
    -------
    Tensor, shape (n_samples, H, D)
        Detached, in the encoder's dtype.
    """
    return torch.cat(list(_jacobian_chunks(encoder, _as_input(X, encoder), chunk_size)))


def _jacobian_chunks(encoder: Encoder, X: Tensor, chunk_size: int):
    if chunk_size < 1:
        raise ContractiveError(f"chunk_size must be ≥ 1, got {chunk_size}")

    def one(x: Tensor) -> Tensor:  # (D,) → (H,): the encoder always sees a batch of one
        return encoder(x.unsqueeze(0)).squeeze(0)

    with torch.no_grad():
        n_out = one(X[0]).numel()
    # Reverse mode costs one pass per output, forward mode one per input: take the cheaper.
    per_sample = jacrev(one) if n_out <= X.shape[1] else jacfwd(one)
    batched = vmap(per_sample)
    for start in range(0, X.shape[0], chunk_size):
        yield batched(X[start : start + chunk_size]).detach()


def singular_values(encoder: Encoder, X: np.ndarray | Tensor, *, chunk_size: int = 64) -> np.ndarray:
    """Sorted singular values of J_f(x) at every point.

    Returns
    -------
    ndarray, shape (n_samples, min(H, D)), float64
        Row b holds σ_1(x_b) ≥ σ_2(x_b) ≥ … , each accurate to about 1e-8·σ_1(x_b) in absolute terms
        (see :func:`_singular_values_from_gram`); :func:`tangents` uses a full SVD.
    """
    X = _as_input(X, encoder)
    out = [_singular_values_from_gram(J.double()).cpu().numpy() for J in _jacobian_chunks(encoder, X, chunk_size)]
    return np.concatenate(out)


def _singular_values_from_gram(J: Tensor) -> Tensor:
    """Sorted singular values of a batch of matrices (B, H, D) as square roots of Gram eigenvalues.

    σ_i² are the eigenvalues of the smaller Gram matrix (J Jᵀ or Jᵀ J). A symmetric eigensolve of that
    m × m matrix costs several times less than an SVD of the m × n Jacobian (200 × 784 on MNIST, where the
    SVD dominated the whole diagnosis). The price: eigenvalues are accurate to about ε·σ_1², so σ_i is
    accurate to about ε·σ_1²/σ_i, at worst √ε·σ_1 ≈ 1.5e-8·σ_1 in float64: far below the thresholds
    (``fraction`` × σ_1) this module counts with.
    """
    gram = J @ J.mT if J.shape[1] <= J.shape[2] else J.mT @ J
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(-1)


def average_spectrum(spectra: np.ndarray) -> np.ndarray:
    """Mean over points of sorted spectra (n_samples, m) → (m,)."""
    spectra = np.asarray(spectra, dtype=np.float64)
    if spectra.ndim != 2 or spectra.shape[0] == 0:
        raise ContractiveError(f"expected spectra of shape (n_samples, m), got {spectra.shape}")
    return spectra.mean(axis=0)


def effective_dimension(spectra: np.ndarray, fraction: float = DEFAULT_FRACTION) -> np.ndarray:
    """Per point, the number of singular values above ``fraction`` × that point's largest.

    Parameters
    ----------
    spectra : ndarray, shape (n_samples, m)
        Sorted singular values, as returned by :func:`singular_values`.
    fraction : float in (0, 1]

    Returns
    -------
    ndarray, shape (n_samples,), int
        A point where J_f vanishes entirely counts 0.
    """
    if not 0 < fraction <= 1:
        raise ContractiveError(f"fraction must be in (0, 1], got {fraction}")
    spectra = np.asarray(spectra, dtype=np.float64)
    largest = spectra.max(axis=1, keepdims=True)
    return ((spectra > fraction * largest) & (largest > 0)).sum(axis=1)


@dataclass
class Tangents:
    """Top-k right singular vectors of J_f at some points.

    Attributes
    ----------
    vectors : ndarray, shape (n_samples, k, D)
        Unit vectors, row i the i-th tangent. The sign of a singular vector is arbitrary; it is fixed here so
        that each vector's largest-magnitude entry is positive, which makes figures reproducible.
    singular_values : ndarray, shape (n_samples, k)
    """

    vectors: np.ndarray
    singular_values: np.ndarray


def tangents(encoder: Encoder, X: np.ndarray | Tensor, k: int = 5, *, chunk_size: int = 64) -> Tangents:
    """The k input directions the code is most sensitive to at each point (see the module docstring)."""
    X = _as_input(X, encoder)
    if k < 1:
        raise ContractiveError(f"k must be ≥ 1, got {k}")
    vectors, values = [], []
    for J in _jacobian_chunks(encoder, X, chunk_size):
        _, S, Vh = torch.linalg.svd(J.double(), full_matrices=False)
        if k > S.shape[1]:
            raise ContractiveError(f"k = {k} tangents asked for, but J_f has only {S.shape[1]} singular values")
        V = Vh[:, :k, :]
        peak = V.gather(2, V.abs().argmax(dim=2, keepdim=True))
        vectors.append((V * torch.sign(peak)).cpu().numpy())
        values.append(S[:, :k].cpu().numpy())
    return Tangents(np.concatenate(vectors), np.concatenate(values))


@dataclass
class ContractionCurve:
    """Contraction ratio against radius (see the module docstring).

    Attributes
    ----------
    radii : ndarray, shape (n_radii,)
    ratio : ndarray, shape (n_radii,)
        Mean over points and directions of ‖f(x + r u) − f(x)‖ / r.
    std : ndarray, shape (n_radii,)
        Standard deviation of the same ratios.
    direction : {"isotropic", "data"}
    """

    radii: np.ndarray
    ratio: np.ndarray
    std: np.ndarray
    direction: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "radii": self.radii.tolist(),
            "ratio": self.ratio.tolist(),
            "std": self.std.tolist(),
        }


@torch.no_grad()
def contraction_curve(
    encoder: Encoder,
    X: np.ndarray | Tensor,
    radii: Sequence[float] = DEFAULT_RADII,
    *,
    direction: str = "isotropic",
    n_directions: int = 4,
    seed: int = 0,
) -> ContractionCurve:
    """Mean ‖f(x + r u) − f(x)‖ / r over the points of ``X`` and ``n_directions`` unit directions u each.

    Parameters
    ----------
    encoder : nn.Module or callable
        Maps (B, D) to (B, H).
    X : array or Tensor, shape (n_samples, D)
    radii : sequence of float > 0
    direction : {"isotropic", "data"}
        ``isotropic``: u uniform on the unit sphere. ``data``: u points from x to another sample of ``X``
        drawn uniformly (needs ≥ 2 distinct samples; pairs of identical samples are left out).
    n_directions : int
        Directions per point; the same directions are used at every radius.
    seed : int
        Seeds the directions (and the partner points).
    """
    X = _as_input(X, encoder)
    if direction not in DIRECTIONS:
        raise ContractiveError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    radii_arr = np.asarray(radii, dtype=np.float64)
    if radii_arr.ndim != 1 or radii_arr.size == 0 or not (np.isfinite(radii_arr) & (radii_arr > 0)).all():
        raise ContractiveError(f"radii must be a non-empty list of finite numbers > 0, got {list(radii)}")
    if n_directions < 1:
        raise ContractiveError(f"n_directions must be ≥ 1, got {n_directions}")
    rng = np.random.default_rng(seed)
    n, d = X.shape
    points = X.repeat_interleave(n_directions, dim=0)  # (n·k, D), each point k times in a row
    if direction == "isotropic":
        u = torch.as_tensor(rng.standard_normal((n * n_directions, d)), dtype=X.dtype, device=X.device)
    else:
        if n < 2:
            raise ContractiveError("direction 'data' needs at least 2 samples")
        # A partner other than the point itself: shift the index by 1..n-1.
        own = np.repeat(np.arange(n), n_directions)
        partner = (own + rng.integers(1, n, size=own.size)) % n
        u = X[torch.as_tensor(partner, device=X.device)] - points
    norms = u.norm(dim=1)
    keep = norms > 0
    if not keep.any():
        raise ContractiveError("all partner points coincide with their points; no data direction to follow")
    points, u = points[keep], u[keep] / norms[keep, None]
    codes = encoder(points)
    ratios = []
    for r in radii_arr:
        moved = encoder(points + float(r) * u)
        ratios.append(((moved - codes).norm(dim=1) / float(r)).double().cpu().numpy())
    stacked = np.stack(ratios)  # (n_radii, n·k)
    return ContractionCurve(radii_arr, stacked.mean(axis=1), stacked.std(axis=1), direction)


def activation_bounds(encoder: nn.Module) -> tuple[float | None, float | None]:
    """Range (lower, upper) of the encoder's final activation; None for an unbounded side.

    The encoder must end in ``nn.Sigmoid``, ``nn.Tanh``, ``nn.ReLU`` or ``nn.Softplus`` (directly or as the
    last module of an ``nn.Sequential``).
    """
    last = encoder[-1] if isinstance(encoder, nn.Sequential) and len(encoder) else encoder
    for kind, bounds in _BOUNDS.items():
        if isinstance(last, kind):
            return bounds
    raise ContractiveError(
        f"saturation needs a bounded activation at the end of the encoder (sigmoid, tanh, relu, softplus); "
        f"got {type(last).__name__}"
    )


def saturation(
    codes: np.ndarray | Tensor, bounds: tuple[float | None, float | None], eps: float = DEFAULT_EPS
) -> np.ndarray:
    """Per sample, the fraction of hidden units within ``eps`` of a bound.

    Parameters
    ----------
    codes : array, shape (n_samples, H)
        Hidden activations h = f(x).
    bounds : (lower, upper)
        From :func:`activation_bounds`; None for an unbounded side.
    eps : float > 0
        Absolute distance to a bound that counts as saturated.

    Returns
    -------
    ndarray, shape (n_samples,), values in [0, 1]
    """
    if not eps > 0:
        raise ContractiveError(f"eps must be > 0, got {eps}")
    h = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    lower, upper = bounds
    if lower is not None and upper is not None and not lower < upper:
        raise ContractiveError(f"bounds must be (lower, upper) with lower < upper, got {bounds}")
    saturated = np.zeros(h.shape, dtype=bool)
    if lower is not None:
        saturated |= h <= lower + eps
    if upper is not None:
        saturated |= h >= upper - eps
    return saturated.mean(axis=1)


@dataclass
class Diagnostics:
    """Everything :func:`diagnose` measured on one model; ``summary()`` is the JSON-ready part."""

    spectra: np.ndarray
    fraction: float
    effective_dimension: np.ndarray
    contraction: dict[str, ContractionCurve]
    saturation: np.ndarray | None
    eps: float

    def summary(self) -> dict[str, Any]:
        mean_spectrum = average_spectrum(self.spectra)
        out: dict[str, Any] = {
            "n_points": int(self.spectra.shape[0]),
            "fraction": self.fraction,
            "effective_dimension": float(self.effective_dimension.mean()),
            "effective_dimension_std": float(self.effective_dimension.std()),
            "largest_singular_value": float(mean_spectrum[0]),
            "jacobian_frobenius": float(np.sqrt((self.spectra**2).sum(axis=1)).mean()),
            "average_spectrum": mean_spectrum.tolist(),
        }
        for name, curve in self.contraction.items():
            out[f"contraction_{name}_smallest_r"] = float(curve.ratio[0])
            out[f"contraction_{name}"] = curve.to_dict()
        if self.saturation is not None:
            out["saturation_eps"] = self.eps
            out["saturation_percent"] = float(100 * self.saturation.mean())
        return out


def diagnose(
    encoder: nn.Module,
    X: np.ndarray | Tensor,
    *,
    fraction: float = DEFAULT_FRACTION,
    radii: Sequence[float] = DEFAULT_RADII,
    n_directions: int = 4,
    eps: float = DEFAULT_EPS,
    seed: int = 0,
    chunk_size: int = 64,
) -> Diagnostics:
    """Spectra, effective dimension, both contraction curves and (for bounded activations) saturation on X."""
    X = _as_input(X, encoder)
    spectra = singular_values(encoder, X, chunk_size=chunk_size)
    curves = {
        d: contraction_curve(encoder, X, radii, direction=d, n_directions=n_directions, seed=seed) for d in DIRECTIONS
    }
    try:
        bounds = activation_bounds(encoder)
    except ContractiveError:
        sat = None  # an unbounded code (identity) has no saturation to speak of
    else:
        with torch.no_grad():
            sat = saturation(encoder(X), bounds, eps)
    return Diagnostics(spectra, fraction, effective_dimension(spectra, fraction), curves, sat, eps)
