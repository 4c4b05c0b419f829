"""Dataset specs: real data loads with the right shapes and ranges; every kind of bad file is a clear error."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from contractive import ContractiveError, load_dataset
from contractive.data import read_idx, train_val_split


def write_idx(path, array: np.ndarray, *, compress: bool = False, truncate: int = 0) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    payload = payload[: len(payload) - truncate] if truncate else payload
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def test_digits_are_scaled_to_unit_interval():
    data = load_dataset("digits")
    assert data.X.shape == (1797, 64) and data.X.dtype == np.float32
    assert data.X.min() == 0.0 and data.X.max() == 1.0
    assert data.image_shape == (8, 8) and data.y.shape == (1797,)


def test_real_mnist_test_set(mnist_dir):
    data = load_dataset(str(mnist_dir))
    assert data.X.shape == (10000, 784) and data.image_shape == (28, 28)
    assert 0.0 <= data.X.min() and data.X.max() == 1.0
    # Class counts published with the data set.
    assert np.bincount(data.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.description["split"] == "t10k"


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory_prefers_train_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (5, 4, 4)), compress=compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(5), compress=compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (3, 4, 4)), compress=compress)
    assert load_dataset(str(tmp_path)).X.shape == (5, 16)
    assert load_dataset(str(tmp_path), split="test").X.shape == (3, 16)


def test_truncated_idx_is_reported(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 3, 3)), truncate=5)
    with pytest.raises(ContractiveError, match="truncated"):
        load_dataset(str(tmp_path))


def test_corrupt_gzip_is_reported(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ContractiveError, match="cannot read"):
        load_dataset(str(tmp_path))


def test_bad_magic_is_reported(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(ContractiveError, match="bad magic"):
        read_idx(tmp_path / "x.idx")


def test_label_count_mismatch_is_reported(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 3, 3)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(ContractiveError, match="3 labels for 4 images"):
        load_dataset(str(tmp_path))


def test_directory_without_idx_files(tmp_path):
    with pytest.raises(ContractiveError, match="no IDX image file"):
        load_dataset(str(tmp_path))


def test_npy_npz_csv(tmp_path):
    X = np.random.default_rng(1).random((7, 5))
    np.save(tmp_path / "a.npy", X)
    np.savez(tmp_path / "b.npz", X=X, y=np.arange(7))
    np.savetxt(tmp_path / "c.csv", X, delimiter=",", header="f0,f1,f2,f3,f4", comments="")
    for name in ("a.npy", "b.npz", "c.csv"):
        data = load_dataset(str(tmp_path / name))
        np.testing.assert_allclose(data.X, X.astype(np.float32), rtol=1e-6)
    assert load_dataset(str(tmp_path / "b.npz")).y.tolist() == list(range(7))


def test_uint8_images_in_npy_are_scaled(tmp_path):
    np.save(tmp_path / "imgs.npy", np.full((2, 3, 3), 255, dtype=np.uint8))
    data = load_dataset(str(tmp_path / "imgs.npy"))
    assert data.X.shape == (2, 9) and data.X.max() == 1.0 and data.image_shape == (3, 3)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN or infinite"),
        (np.array([[0.0, np.inf]]), "NaN or infinite"),
        (np.zeros((0, 4)), "no data"),
        (np.zeros(5), "got shape"),
    ],
)
def test_bad_arrays(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ContractiveError, match=message):
        load_dataset(str(tmp_path / "bad.npy"))


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ContractiveError, match="cannot read"):
        load_dataset(str(tmp_path / "obj.npy"))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
@pytest.mark.parametrize(("content", "why"), [(b"P5\n8 8\n255\n", "does not start with"), (b"", "it is empty")])
def test_file_that_is_not_numpy_is_named_as_such(tmp_path, suffix, content, why):
    path = tmp_path / f"fake{suffix}"
    path.write_bytes(content)
    with pytest.raises(ContractiveError, match=f"cannot read .*fake\\{suffix}: not a NumPy .*{why}") as info:
        load_dataset(str(path))
    message = str(info.value)
    assert message.startswith(f"cannot read {path}: not a NumPy ") and message.count("cannot read") == 1
    assert "pickle" not in message


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(ContractiveError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.npy"))
    (tmp_path / "x.parquet").write_bytes(b"x")
    with pytest.raises(ContractiveError, match="unsupported data file"):
        load_dataset(str(tmp_path / "x.parquet"))


def test_non_numeric_csv(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,x\n")
    with pytest.raises(ContractiveError, match="cannot read"):
        load_dataset(str(tmp_path / "t.csv"))


def test_split_is_seeded_and_disjoint():
    train, val = train_val_split(100, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    again = train_val_split(100, 0.1, seed=3)
    assert (train == again[0]).all() and (val == again[1]).all()
    with pytest.raises(ContractiveError, match="leaves no training data"):
        train_val_split(1, 0.5, seed=0)
