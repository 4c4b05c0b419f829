"""Dataset specs → validated float32 arrays of shape (n_samples, n_features).

A spec is one of

- ``digits``: scikit-learn's bundled 8×8 digits (1,797 images), no download;
- a directory of IDX files in the MNIST / Fashion-MNIST layout (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-…``);
- a ``.npy`` file (2-D samples × features, or 3-D+ images, flattened), a ``.npz`` file (array ``X`` or
  ``x``, optional labels ``y``; otherwise its only array), or a numeric ``.csv`` file (an optional header
  row is skipped).

Images stored as integers (IDX, uint8 arrays) are scaled to [0, 1]. Every problem is reported as a
:class:`~contractive.errors.ContractiveError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ContractiveError

SPLITS = ("auto", "train", "test")

# IDX element types (third byte of the magic number) → numpy dtype, big-endian as the format says.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Dataset:
    """Samples, optional labels and where they came from.

    Attributes
    ----------
    X : ndarray of shape (n_samples, n_features), float32
    y : ndarray of shape (n_samples,) or None
    image_shape : tuple of int or None
        (height, width) when samples are images, for plotting filters and reconstructions.
    description : dict
        JSON-serialisable record of the source (spec, files, split, sizes), stored in ``config.json``.
    """

    X: np.ndarray
    y: np.ndarray | None = None
    image_shape: tuple[int, int] | None = None
    description: dict[str, Any] = field(default_factory=dict)


def load_dataset(spec: str, *, split: str = "auto", limit: int | None = None) -> Dataset:
    """Load and validate a dataset from a spec (see the module docstring).

    Parameters
    ----------
    spec : str
        ``"digits"`` or a path.
    split : {"auto", "train", "test"}
        For IDX directories: which files to read. ``"auto"`` takes ``train-*`` when present, else ``t10k-*``.
    limit : int, optional
        Keep only the first ``limit`` samples (quick runs and tests).
    """
    if split not in SPLITS:
        raise ContractiveError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise ContractiveError(f"limit must be ≥ 1, got {limit}")
    if spec == "digits":
        data = _load_digits()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ContractiveError(f"data path {spec!r} does not exist (use 'digits' or a directory/.npy/.npz/.csv)")
        if path.is_dir():
            data = _load_idx_dir(path, split)
        elif path.suffix == ".npy":
            data = _load_npy(path)
        elif path.suffix == ".npz":
            data = _load_npz(path)
        elif path.suffix == ".csv":
            data = _load_csv(path)
        else:
            raise ContractiveError(
                f"unsupported data file {spec!r}: expected a directory of IDX files, .npy, .npz or .csv"
            )
    data.description.setdefault("spec", spec)
    if limit is not None:
        data.X = data.X[:limit]
        data.y = None if data.y is None else data.y[:limit]
        data.description["limit"] = limit
    validate_features(data.X, source=spec)
    data.description.update(n_samples=int(data.X.shape[0]), n_features=int(data.X.shape[1]))
    return data


def validate_features(X: np.ndarray, *, source: str = "data", n_features: int | None = None) -> np.ndarray:
    """Check a feature matrix: 2-D, non-empty, finite, and (optionally) of a given width."""
    if X.ndim != 2:
        raise ContractiveError(f"{source}: expected a 2-D array (samples × features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ContractiveError(f"{source}: no data (shape {X.shape})")
    if n_features is not None and X.shape[1] != n_features:
        raise ContractiveError(f"{source}: has {X.shape[1]} features but the model expects {n_features}")
    finite = np.isfinite(X)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise ContractiveError(
            f"{source}: contains NaN or infinite values ({rows.size} rows affected, first at row {rows[0]})"
        )
    return X


def train_val_split(n_samples: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded random split; the validation part has ⌈val_fraction·n⌉ ≥ 1 samples if > 0."""
    order = np.random.default_rng(seed).permutation(n_samples)
    n_val = math.ceil(val_fraction * n_samples) if val_fraction > 0 else 0
    if n_val >= n_samples:
        raise ContractiveError(f"validation fraction {val_fraction} leaves no training data out of {n_samples} samples")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _image_shape(n_features: int) -> tuple[int, int] | None:
    side = math.isqrt(n_features)
    return (side, side) if side * side == n_features else None


def _to_float(X: np.ndarray, source: str) -> np.ndarray:
    if X.dtype == np.uint8:
        return X.astype(np.float32) / 255.0  # 8-bit images → [0, 1]
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ContractiveError(f"{source}: expected numeric data, got dtype {X.dtype}")
    return X.astype(np.float32)


def _flatten(X: np.ndarray, source: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    if X.ndim == 2:
        return X, _image_shape(X.shape[1])
    if X.ndim >= 3:
        image_shape = tuple(X.shape[1:3]) if X.ndim == 3 else None
        return X.reshape(X.shape[0], -1), image_shape
    raise ContractiveError(f"{source}: expected samples × features (2-D) or images (3-D), got shape {X.shape}")


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = (bunch.data / 16.0).astype(np.float32)  # pixel values are 0..16
    return Dataset(
        X, bunch.target.astype(np.int64), (8, 8), {"name": "digits", "source": "sklearn.datasets.load_digits"}
    )


def _open_maybe_gzip(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ContractiveError(f"cannot read {path}: {exc}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or gzip), checking its header against its size."""
    path = Path(path)
    raw = _open_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ContractiveError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ContractiveError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ContractiveError(f"{path}: {what}: header says shape {shape} ({expected} bytes), file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dir(directory: Path, split: str) -> Dataset:
    prefixes = {"train": ["train"], "test": ["t10k"], "auto": ["train", "t10k"]}[split]
    for prefix in prefixes:
        images = _find(directory, f"{prefix}-images-idx3-ubyte")
        if images is not None:
            break
    else:
        wanted = " or ".join(f"{p}-images-idx3-ubyte[.gz]" for p in prefixes)
        raise ContractiveError(f"{directory}: no IDX image file found (looked for {wanted})")
    X = read_idx(images)
    if X.ndim != 3:
        raise ContractiveError(f"{images}: expected 3-D images (n, rows, cols), got shape {X.shape}")
    labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    y = None
    if labels_path is not None:
        y = read_idx(labels_path)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ContractiveError(
                f"{labels_path}: {y.shape[0] if y.ndim else 0} labels for {X.shape[0]} images in {images.name}"
            )
        y = y.astype(np.int64)
    files = [images.name] + ([labels_path.name] if labels_path else [])
    X2, shape = _flatten(_to_float(X, str(images)), str(images))
    return Dataset(X2, y, shape, {"name": directory.name, "format": "idx", "split": prefix, "files": files})


def _load_array_file(path: Path, loader) -> Any:
    try:
        return loader(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ContractiveError(f"cannot read {path}: {exc}") from None


def _load_npy(path: Path) -> Dataset:
    X = _load_array_file(path, lambda p: np.load(p, allow_pickle=False))
    X2, shape = _flatten(_to_float(np.asarray(X), str(path)), str(path))
    return Dataset(X2, None, shape, {"name": path.stem, "format": "npy"})


def _load_npz(path: Path) -> Dataset:
    def read(p: Path) -> dict[str, np.ndarray]:
        with np.load(p, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}

    arrays = _load_array_file(path, read)
    key = next((k for k in ("X", "x", "data") if k in arrays), None)
    if key is None:
        if len(arrays) != 1:
            raise ContractiveError(f"{path}: expected an array named 'X' (or a single array), found {sorted(arrays)}")
        key = next(iter(arrays))
    X2, shape = _flatten(_to_float(arrays[key], str(path)), str(path))
    y = arrays.get("y")
    if y is not None and (y.ndim != 1 or y.shape[0] != X2.shape[0]):
        raise ContractiveError(f"{path}: 'y' has shape {y.shape} but there are {X2.shape[0]} samples")
    return Dataset(X2, y, shape, {"name": path.stem, "format": "npz", "array": key})


def _load_csv(path: Path) -> Dataset:
    def read(p: Path) -> np.ndarray:
        with open(p, encoding="utf-8") as fh:
            first = fh.readline()
        try:
            [float(v) for v in first.strip().split(",") if v.strip()]
            skip = 0
        except ValueError:
            skip = 1  # a header row
        return np.loadtxt(p, delimiter=",", dtype=np.float64, skiprows=skip, ndmin=2)

    X = _load_array_file(path, read)
    X2, shape = _flatten(X.astype(np.float32), str(path))
    return Dataset(X2, None, shape, {"name": path.stem, "format": "csv"})
