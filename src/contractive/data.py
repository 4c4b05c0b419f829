"""Dataset specs → validated float32 arrays of shape (n_samples, n_features).

A spec is one of

- ``digits``: scikit-learn's bundled 8×8 digits (1,797 images), no download;
- a directory of IDX files in the MNIST / Fashion-MNIST layout (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-…``);
- a ``.npy`` file (2-D samples × features, or 3-D+ images, flattened), a ``.npz`` file (array ``X`` or
  ``x``, optional labels ``y``; otherwise its only array), or a numeric ``.csv`` file (an optional header
  row is skipped).

Values must be real numbers (bool, integer or float; not complex, strings or dates). Integers are read as
image pixels and scaled to [0, 1] by one rule, whatever the file format:

- ``uint8`` (the IDX ``ubyte`` type): 8-bit pixels, divided by 255;
- any other integer type holding only 0 and 1: binary images, kept as they are;
- any other integer type holding values in 0..255: 8-bit pixels stored in a wider type, divided by 255;
- any other integer values (negative, or above 255 as in 16-bit images) are refused: their scale cannot be
  told from the data, so convert them to floats in [0, 1] yourself.

Booleans become 0/1 and floats are kept as they are (float64 values beyond float32's range count as
infinite, which is an error like NaN).

Labels (IDX label files, ``y`` in a ``.npz``) must be one non-negative integer per sample: integer or bool
arrays, or floats that are finite and integer-valued; they are returned as int64.

Every problem is reported as a :class:`~contractive.errors.ContractiveError` naming the file and what is
wrong with it (never as a NumPy warning or traceback).

Data larger than memory: a ``.npy`` file (or an uncompressed IDX image file) bigger than
:data:`MMAP_MIN_BYTES`, or any of them with ``mmap=True``, is not read but opened memory-mapped as a
:class:`MappedArray`, whose rows are read (and converted to float32) only when indexed; validation then
runs chunk by chunk, and training and encoding stream through it in batches.
"""

from __future__ import annotations

import gzip
import math
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ContractiveError

SPLITS = ("auto", "train", "test")

# IDX element types (third byte of the magic number) → numpy dtype, big-endian as the format says.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Files at least this large are memory-mapped rather than read when ``mmap`` is left to decide.
MMAP_MIN_BYTES = 256 * 2**20
# Rows per chunk of whole-array passes (validation, min/max) are chosen so that one chunk holds about
# this many bytes as float32: small against memory, large enough to amortise the per-chunk mapping.
CHUNK_BYTES = 8 * 2**20


class MappedArray:
    """A (n_samples, n_features) float32 view of rows stored in a file, read only when indexed.

    Every read maps the file (``np.memmap``), copies the requested rows out as float32 (scaled to
    [0, 1] for 8-bit images) and unmaps it again, so the pages a read touched do not stay in this
    process's resident memory: streaming through a file larger than RAM keeps the footprint at about
    one batch.

    Parameters
    ----------
    path : path to the file
    dtype : numpy dtype of the stored values (any byte order)
    shape : tuple of int
        Stored shape, (n_samples, ...); trailing dimensions are flattened into features.
    offset : int
        Byte offset of the first value (the ``.npy`` or IDX header length).
    rows : ndarray of int, optional
        The stored rows this view exposes, in order (a subset such as a train split); all if None.
    divisor : float, optional
        What each value read is divided by (255 for 8-bit pixels); None reads the values as they are.
        :func:`map_file` sets it by the module's integer rule.
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, path, dtype, shape, offset: int, rows: np.ndarray | None = None, divisor: float | None = None):
        self.path, self.stored_dtype, self.stored_shape, self.offset = Path(path), np.dtype(dtype), shape, offset
        self.n_features = math.prod(shape[1:])
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.divisor = divisor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.stored_shape[0] if self.rows is None else self.rows.size, self.n_features)

    def __len__(self) -> int:
        return self.shape[0]

    def chunk_rows(self) -> int:
        """Rows per chunk for whole-array passes (about :data:`CHUNK_BYTES` of float32)."""
        return max(1, CHUNK_BYTES // (4 * max(1, self.n_features)))

    def take(self, indices) -> MappedArray:
        """A lazy view of rows ``indices`` of this view (nothing is read)."""
        selected = np.arange(len(self))[indices] if not isinstance(indices, np.ndarray) else indices
        base = np.asarray(selected, dtype=np.int64) if self.rows is None else self.rows[selected]
        return MappedArray(self.path, self.stored_dtype, self.stored_shape, self.offset, base, self.divisor)

    def __getitem__(self, key) -> np.ndarray:
        """Rows ``key`` (int, slice or integer array) as a float32 array of shape (k, n_features)."""
        if isinstance(key, tuple):
            rows, *rest = key
            return self[rows][(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        if isinstance(key, slice) and self.rows is None and key.step in (None, 1):
            start, stop, _ = key.indices(len(self))
            return self._read(slice(start, max(start, stop)))
        positions = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        stored = positions if self.rows is None else self.rows[positions]
        # Read in file order (sequential page access), then put the rows back in the order asked for.
        order = np.argsort(stored, kind="stable")
        out = np.empty((stored.size, self.n_features), dtype=np.float32)
        out[order] = self._read(stored[order])
        return out

    def _read(self, stored_rows) -> np.ndarray:
        mapped = np.memmap(self.path, dtype=self.stored_dtype, mode="r", offset=self.offset, shape=self.stored_shape)
        try:
            # A copy (never a view): the result must outlive the mapping and be writable. float64 values
            # beyond float32's range become inf without a warning, as in _to_float; validation names them.
            with np.errstate(over="ignore"):
                block = np.array(mapped[stored_rows], dtype=np.float32, copy=True).reshape(-1, self.n_features)
        finally:
            del mapped  # unmap now: the touched pages leave this process's RSS
        if self.divisor is not None:
            block /= self.divisor  # exactly as the in-memory loader scales
        return block

    def chunks(self):
        """Yield ``(start, rows)`` over the whole view, about :data:`CHUNK_BYTES` per chunk."""
        step = self.chunk_rows()
        for start in range(0, len(self), step):
            yield start, self[start : start + step]

    def min(self) -> np.float32:
        return min(chunk.min() for _, chunk in self.chunks())

    def max(self) -> np.float32:
        return max(chunk.max() for _, chunk in self.chunks())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self[0 : len(self)] if self.rows is None else self[np.arange(len(self))]
        return full if dtype is None else full.astype(dtype)

    def __repr__(self) -> str:
        return f"MappedArray({str(self.path)!r}, shape={self.shape}, stored_dtype={self.stored_dtype})"


def take_rows(X, indices):
    """``X[indices]``, lazily for a :class:`MappedArray` (train/validation splits of mapped data)."""
    return X.take(indices) if isinstance(X, MappedArray) else X[indices]


def iter_chunks(X, rows_per_chunk: int | None = None):
    """Yield ``(start, float32 block)`` over the rows of an array or :class:`MappedArray`."""
    if isinstance(X, MappedArray):
        step = rows_per_chunk or X.chunk_rows()
    else:
        step = rows_per_chunk or max(1, CHUNK_BYTES // (4 * max(1, X.shape[1] if X.ndim > 1 else 1)))
    for start in range(0, X.shape[0], step):
        yield start, np.asarray(X[start : start + step], dtype=np.float32)


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


def load_dataset(spec: str, *, split: str = "auto", limit: int | None = None, mmap: bool | None = None) -> Dataset:
    """Load and validate a dataset from a spec (see the module docstring).

    Parameters
    ----------
    spec : str
        ``"digits"`` or a path.
    split : {"auto", "train", "test"}
        For IDX directories: which files to read. ``"auto"`` takes ``train-*`` when present, else ``t10k-*``.
    limit : int, optional
        Keep only the first ``limit`` samples (quick runs and tests).
    mmap : bool, optional
        Memory-map ``.npy`` and uncompressed IDX files instead of reading them (``X`` is then a
        :class:`MappedArray`). ``None`` maps files of at least :data:`MMAP_MIN_BYTES`.
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
            data = _load_idx_dir(path, split, mmap)
        elif path.suffix == ".npy":
            data = _load_npy(path, mmap)
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
        data.X = take_rows(data.X, slice(0, limit)) if isinstance(data.X, MappedArray) else data.X[:limit]
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
    # Chunk by chunk, so that checking a memory-mapped file never holds it (or a mask of it) in memory.
    bad_rows, first_bad = 0, None
    for start, chunk in iter_chunks(X):
        bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
        if bad.size:
            bad_rows += bad.size
            first_bad = start + int(bad[0]) if first_bad is None else first_bad
    if bad_rows:
        raise ContractiveError(
            f"{source}: contains NaN or infinite values ({bad_rows} rows affected, first at row {first_bad})"
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


def _check_real(dtype: np.dtype, source: str) -> None:
    # Kinds b, i, u, f: bool, signed, unsigned, float. Casting complex to float would silently keep the
    # real part (with a ComplexWarning), and timedelta64 counts as an integer to NumPy.
    if dtype.kind not in "biuf":
        raise ContractiveError(f"{source}: expected real numeric data, got dtype {dtype}")


def _integer_divisor(dtype: np.dtype, X, source: str) -> float | None:
    """What integer data are divided by to reach [0, 1] (the rule in the module docstring); None: as is.

    ``X`` (an array or :class:`MappedArray` reading raw values) is only scanned for its range when
    ``dtype`` is neither uint8 nor a non-integer type.
    """
    if dtype.kind not in "iu":
        return None
    if dtype == np.uint8:
        return 255.0
    if 0 in X.shape:
        return None  # nothing to scale; validation reports the empty array
    lo, hi = int(X.min()), int(X.max())
    if lo >= 0 and hi <= 1:
        return None
    if lo >= 0 and hi <= 255:
        return 255.0
    raise ContractiveError(
        f"{source}: {dtype.name} values range from {lo} to {hi}, but integer data must be 8-bit pixels (0..255) "
        "or 0/1; convert other ranges to floats in [0, 1] yourself"
    )


def _to_float(X: np.ndarray, source: str) -> np.ndarray:
    _check_real(X.dtype, source)
    divisor = _integer_divisor(X.dtype, X, source)
    # float64 values beyond float32's range become inf without a RuntimeWarning; validation reports them.
    with np.errstate(over="ignore"):
        scaled = X.astype(np.float32)
    if divisor is not None:
        scaled /= divisor  # in place: one float copy, not two
    return scaled


def map_file(path: Path, dtype, shape: tuple[int, ...], offset: int) -> MappedArray:
    """A :class:`MappedArray` over a stored array, scaled by the module's integer rule.

    Integer types other than uint8 take one pass over the file to find their range.
    """
    X = MappedArray(path, dtype, shape, offset)
    _check_real(X.stored_dtype, str(path))
    X.divisor = _integer_divisor(X.stored_dtype, X, str(path))
    return X


def _labels(y: np.ndarray, source: str, name: str) -> np.ndarray:
    """``y`` as int64 class ids, or an error naming the first value that is not a non-negative integer."""
    wanted = f"{source}: {name} must be non-negative integers"
    if y.dtype.kind not in "biuf":
        raise ContractiveError(f"{wanted}, but have dtype {y.dtype}")
    if y.dtype.kind == "f":
        bad = ~(np.isfinite(y) & (y >= 0) & (y == np.round(y)))
    else:
        bad = y < 0
    if bad.any():
        raise ContractiveError(f"{wanted}, found {_number(y[np.argmax(bad)])}")
    # Casting wraps (uint64) or warns (float) beyond int64; there is no class limit below that here.
    if y.dtype.kind in "uf" and y.size and y.max() >= 2**63:
        raise ContractiveError(f"{source}: {name} must fit in 64-bit integers, found {_number(y.max())}")
    return y.astype(np.int64)


def _number(value) -> str:
    """A label value as a user wrote it: 3 (not 3.0), 0.5, NaN, inf."""
    if np.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() else str(value)


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


def _open_maybe_gzip(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_idx_header(fh, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    magic = fh.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise ContractiveError(f"{path}: not an IDX file (bad magic number)")
    ndim = magic[3]
    dims = fh.read(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise ContractiveError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    return np.dtype(_IDX_DTYPES[magic[2]]), shape, 4 + 4 * ndim


def read_idx(path: str | Path, *, mmap: bool = False) -> np.ndarray | MappedArray:
    """Read one IDX file (raw or gzip), checking its header against its size.

    The values are read straight into their final array (no intermediate bytes object), so the file's
    contents are held once. With ``mmap=True`` an uncompressed file is not read at all: a
    :class:`MappedArray` over it is returned.
    """
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as fh:
            dtype, shape, header = _read_idx_header(fh, path)
            expected = header + math.prod(shape) * dtype.itemsize
            if mmap and path.suffix != ".gz":
                size = path.stat().st_size
                if size != expected:
                    what = "truncated" if size < expected else "has trailing bytes"
                    raise ContractiveError(
                        f"{path}: {what}: header says shape {shape} ({expected} bytes), file has {size}"
                    )
                return map_file(path, dtype, shape, header)
            values = np.empty(shape, dtype=dtype)
            got = header + _read_into(fh, memoryview(values).cast("B"))
            trailing = len(fh.read(1))
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        # zlib.error: a damaged deflate stream inside a well-formed gzip header.
        raise ContractiveError(f"cannot read {path}: {str(exc) or 'unexpected end of data'}") from None
    if got != expected or trailing:
        what = "truncated" if got < expected else "has trailing bytes"
        size = got + trailing
        raise ContractiveError(
            f"{path}: {what}: header says shape {shape} ({expected} bytes), file has {size}{'+' if trailing else ''}"
        )
    return values


def _read_into(fh, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``fh``; return the number of bytes read (short only at end of file)."""
    filled = 0
    while filled < len(buffer):
        n = fh.readinto(buffer[filled:])
        if not n:
            break
        filled += n
    return filled


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dir(directory: Path, split: str, mmap: bool | None = None) -> Dataset:
    prefixes = {"train": ["train"], "test": ["t10k"], "auto": ["train", "t10k"]}[split]
    for prefix in prefixes:
        images = _find(directory, f"{prefix}-images-idx3-ubyte")
        if images is not None:
            break
    else:
        wanted = " or ".join(f"{p}-images-idx3-ubyte[.gz]" for p in prefixes)
        raise ContractiveError(f"{directory}: no IDX image file found (looked for {wanted})")
    if mmap is None:
        mmap = images.suffix != ".gz" and images.stat().st_size >= MMAP_MIN_BYTES
    X = read_idx(images, mmap=bool(mmap) and images.suffix != ".gz")
    stored_shape = X.stored_shape if isinstance(X, MappedArray) else X.shape
    if len(stored_shape) != 3:
        raise ContractiveError(f"{images}: expected 3-D images (n, rows, cols), got shape {stored_shape}")
    labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    y = None
    if labels_path is not None:
        y = read_idx(labels_path)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ContractiveError(
                f"{labels_path}: {y.shape[0] if y.ndim else 0} labels for {X.shape[0]} images in {images.name}"
            )
        y = _labels(y, str(labels_path), "labels")
    files = [images.name] + ([labels_path.name] if labels_path else [])
    if isinstance(X, MappedArray):
        description = {"name": directory.name, "format": "idx", "split": prefix, "files": files, "mmap": True}
        return Dataset(X, y, tuple(stored_shape[1:3]), description)
    X2, shape = _flatten(_to_float(X, str(images)), str(images))
    return Dataset(X2, y, shape, {"name": directory.name, "format": "idx", "split": prefix, "files": files})


# np.load reads a file whose first bytes are none of these as a pickle, and with allow_pickle=False it then
# blames "pickled (object) data": checking the magic first names the real problem. A zip archive starts
# with a local file header, or (holding no files) with the end-of-central-directory record.
FILE_MAGIC = {
    ".npy": ((b"\x93NUMPY",), "a NumPy .npy file"),
    ".npz": ((b"PK\x03\x04", b"PK\x05\x06"), "a NumPy .npz (zip) archive"),
}

# What a damaged file with the right header raises from inside np.load: zipfile's own error, zlib's for a
# corrupt compressed member, EOFError (with no text) for a cut-off one, NotImplementedError for a garbled
# compression method. Their text alone ("Bad CRC-32 for file 'X.npy'") does not say that the file is damaged.
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


def _load_array_file(path: Path, loader) -> Any:
    try:
        if path.suffix.lower() in FILE_MAGIC:
            magics, kind = FILE_MAGIC[path.suffix.lower()]
            with open(path, "rb") as fh:
                start = fh.read(max(map(len, magics)))
            if start not in magics:
                what = "it is empty" if not start else "it does not start with that format's header"
                raise ValueError(f"not {kind} ({what})")
        # loadtxt warns "input contained no data" (with a source line) before returning an empty array, and
        # np.load warns on some odd headers: the one error (or none) we raise says what is wrong instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return loader(path)
    except _DAMAGED as exc:
        raise ContractiveError(f"cannot read {path}: damaged file ({str(exc) or 'unexpected end of data'})") from None
    except (OSError, ValueError) as exc:
        raise ContractiveError(f"cannot read {path}: {exc}") from None


def _load_npy(path: Path, mmap: bool | None = None) -> Dataset:
    if mmap is None:
        mmap = path.stat().st_size >= MMAP_MIN_BYTES
    if mmap:
        mapped = _load_array_file(path, lambda p: np.load(p, mmap_mode="r", allow_pickle=False))
        # Row streaming needs C order; a Fortran-ordered file is read into memory as before.
        if isinstance(mapped, np.memmap) and mapped.ndim >= 2 and mapped.flags.c_contiguous:
            dtype, shape, offset = mapped.dtype, mapped.shape, mapped.offset
            del mapped
            X = map_file(path, dtype, shape, offset)
            image_shape = tuple(X.stored_shape[1:3]) if len(X.stored_shape) == 3 else _image_shape(X.n_features)
            return Dataset(X, None, image_shape, {"name": path.stem, "format": "npy", "mmap": True})
        del mapped
    X = _load_array_file(path, lambda p: np.load(p, allow_pickle=False))
    X2, shape = _flatten(_to_float(np.asarray(X), str(path)), str(path))
    return Dataset(X2, None, shape, {"name": path.stem, "format": "npy"})


def _load_npz(path: Path) -> Dataset:
    def read(p: Path) -> dict[str, np.ndarray]:
        # Our own file object: np.load leaves the one it opens unclosed when the zip is damaged.
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}

    arrays = _load_array_file(path, read)
    key = next((k for k in ("X", "x", "data") if k in arrays), None)
    if key is None:
        if len(arrays) != 1:
            raise ContractiveError(f"{path}: expected an array named 'X' (or a single array), found {sorted(arrays)}")
        key = next(iter(arrays))
    X2, shape = _flatten(_to_float(arrays[key], str(path)), str(path))
    y = arrays.get("y")
    if y is not None:
        if y.ndim != 1 or y.shape[0] != X2.shape[0]:
            raise ContractiveError(f"{path}: 'y' has shape {y.shape} but there are {X2.shape[0]} samples")
        y = _labels(y, str(path), "labels 'y'")
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
    X2, shape = _flatten(_to_float(X, str(path)), str(path))
    return Dataset(X2, None, shape, {"name": path.stem, "format": "csv"})
