"""Dataset specs: real data loads with the right shapes and ranges; every kind of bad file is a clear error."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest

from contractive import ContractiveError, load_dataset
from contractive.data import _IDX_DTYPES, read_idx, train_val_split

from .conftest import run_cli


def write_idx(path, array: np.ndarray, *, compress: bool = False, truncate: int = 0, code: int = 0x08) -> None:
    """Write ``array`` as an IDX file of element type ``code`` (0x08 ubyte, 0x09 byte, 0x0B short, 0x0D float…)."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
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


# Labels: one non-negative integer per sample, returned as int64; the first bad value is named.


def npz_with_labels(tmp_path, y, n_samples: int = 4):
    path = tmp_path / "labelled.npz"
    np.savez(path, X=np.zeros((n_samples, 3)), y=y)
    return path


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("y", "problem"),
    [
        (np.array([1, 2, -4, -7]), "found -4"),
        (np.array([0.0, np.nan, 1.0, 2.0]), "found NaN"),
        (np.array([0.0, 1.0, np.inf, 2.0]), "found inf"),
        (np.array([0.0, 0.5, 1.5, 2.0]), "found 0.5"),
        (np.array([0, 1, 2, 0.1], dtype=np.float32), "found 0.1"),
        (np.array([-2.0, 0.5, 1.0, 2.0]), "found -2"),
        (np.array(["a", "b", "cat", "d"]), "but have dtype <U3"),
        (np.ones(4, dtype=np.complex128), "but have dtype complex128"),
    ],
)
def test_npz_labels_must_be_non_negative_integers(tmp_path, y, problem):
    path = npz_with_labels(tmp_path, y)
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path))
    assert str(info.value) == f"{path}: labels 'y' must be non-negative integers, {problem}"


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("y", "found"),
    [(np.array([1e20, 0.0, 1.0, 2.0]), "100000000000000000000"), (np.array([0, 2**63, 1, 2], np.uint64), str(2**63))],
)
def test_npz_labels_beyond_int64_are_refused_not_wrapped(tmp_path, y, found):
    path = npz_with_labels(tmp_path, y)
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path))
    assert str(info.value) == f"{path}: labels 'y' must fit in 64-bit integers, found {found}"


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        (np.array([2e8, 0.0, 1.0, 3.0]), [200_000_000, 0, 1, 3]),  # no upper limit: fine-tuning remaps classes
        (np.array([True, False, True, True]), [1, 0, 1, 1]),
        (np.array([9, 0, 255, 3], dtype=np.uint8), [9, 0, 255, 3]),
    ],
)
def test_valid_npz_labels_become_int64(tmp_path, y, expected):
    data = load_dataset(str(npz_with_labels(tmp_path, y)))
    assert data.y.dtype == np.int64 and data.y.tolist() == expected


@pytest.mark.parametrize(("y", "shape"), [(np.zeros((4, 1)), "(4, 1)"), (np.arange(3), "(3,)")])
def test_npz_labels_must_be_one_per_sample(tmp_path, y, shape):
    path = npz_with_labels(tmp_path, y)
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path))
    assert str(info.value) == f"{path}: 'y' has shape {shape} but there are 4 samples"


@pytest.mark.parametrize(("code", "labels", "found"), [(0x09, [1, -1, 0], "-1"), (0x0D, [1.0, 0.5, 0.0], "0.5")])
def test_idx_labels_must_be_non_negative_integers(tmp_path, code, labels, found):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 2, 2)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array(labels), code=code)
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(tmp_path))
    assert (
        str(info.value) == f"{tmp_path / 't10k-labels-idx1-ubyte'}: labels must be non-negative integers, found {found}"
    )


def test_idx_labels_of_other_integer_types_become_int64(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 2, 2)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([7.0, 0.0, 1000.0]), code=0x0D)
    data = load_dataset(str(tmp_path))
    assert data.y.dtype == np.int64 and data.y.tolist() == [7, 0, 1000]


# .npz archives: the zip signature is checked, and a damaged archive that has it is one clean error.


def savez_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_npz_starting_with_pk_but_not_a_zip(tmp_path):
    path = tmp_path / "fake.npz"
    path.write_bytes(b"PK not really")
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path))
    assert str(info.value) == (
        f"cannot read {path}: not a NumPy .npz (zip) archive (it does not start with that format's header)"
    )


def damage(archive: bytes, how: str) -> bytes:
    if how == "truncated":
        return archive[: len(archive) // 2]
    # Flip one byte: inside the stored X.npy (its CRC no longer matches), or the first local header's
    # extra-field length at offset 28 (the member's data then seems to start past the end of the file).
    at = archive.index(b"NUMPY") + 20 if how == "data byte" else 29
    return archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1 :]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("truncated", "File is not a zip file"),
        ("data byte", "Bad CRC-32 for file 'X.npy'"),
        ("header byte", "unexpected end of data"),
    ],
)
def test_damaged_npz_is_one_clean_error(tmp_path, how, reason):
    path = tmp_path / "damaged.npz"
    path.write_bytes(damage(savez_bytes(X=np.ones((20, 5))), how))
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path))
    assert str(info.value) == f"cannot read {path}: damaged file ({reason})"


def test_corrupt_compressed_npz_member(tmp_path):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=np.arange(400.0).reshape(20, 20))
    archive = buffer.getvalue()
    at = archive.index(b"X.npy") + 40  # inside the deflate stream of the only member
    path = tmp_path / "z.npz"
    path.write_bytes(archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1 :])
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path))
    assert str(info.value).startswith(f"cannot read {path}: damaged file (")


def test_empty_zip_is_accepted_as_npz_and_reported_as_holding_no_array(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(savez_bytes())
    assert path.read_bytes()[:4] == b"PK\x05\x06"
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path))
    assert str(info.value) == f"{path}: expected an array named 'X' (or a single array), found []"


def test_corrupt_deflate_stream_in_gzip_idx(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, np.arange(4 * 28 * 28).reshape(4, 28, 28) % 256, compress=True)
    data = path.read_bytes()
    at = data.index(b"ubyte\x00") + 6  # the first deflate byte, after the file name in the gzip header
    path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])  # a garbled block header
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(tmp_path))
    assert str(info.value) == f"cannot read {path}: Error -3 while decompressing data: invalid code lengths set"


# Integer data: one scaling rule for every format, in memory and memory-mapped (see data.py's docstring).


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.int64])
def test_integer_pixels_in_0_255_are_divided_by_255(tmp_path, dtype, mmap):
    values = np.array([[0, 1, 128], [255, 17, 3]], dtype=dtype)
    np.save(tmp_path / "px.npy", values)
    data = load_dataset(str(tmp_path / "px.npy"), mmap=mmap)
    np.testing.assert_array_equal(np.asarray(data.X), values.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("mmap", [False, True])
def test_binary_integer_images_are_kept_as_they_are(tmp_path, mmap):
    np.save(tmp_path / "bits.npy", np.array([[0, 1, 1], [1, 0, 0]], dtype=np.int64))
    data = load_dataset(str(tmp_path / "bits.npy"), mmap=mmap)
    assert np.asarray(data.X).tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


def test_uint8_is_always_8_bit_even_when_only_0_and_1(tmp_path):
    np.save(tmp_path / "u8.npy", np.array([[0, 1]], dtype=np.uint8))
    assert load_dataset(str(tmp_path / "u8.npy")).X.tolist() == [[0.0, np.float32(1) / np.float32(255)]]


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize(
    ("values", "dtype", "low", "high"), [([0, 300, 65535], np.uint16, 0, 65535), ([-1, 0, 2], np.int8, -1, 2)]
)
def test_integers_outside_0_255_are_refused(tmp_path, values, dtype, low, high, mmap):
    path = tmp_path / "wide.npy"
    np.save(path, np.array([values], dtype=dtype))
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path), mmap=mmap)
    assert str(info.value) == (
        f"{path}: {np.dtype(dtype)} values range from {low} to {high}, but integer data must be 8-bit pixels "
        "(0..255) or 0/1; convert other ranges to floats in [0, 1] yourself"
    )


@pytest.mark.parametrize("mmap", [False, True])
def test_int16_idx_images_are_scaled_like_uint8(tmp_path, mmap):
    images = np.arange(2 * 3 * 3).reshape(2, 3, 3) * 15  # 0..255 stored as big-endian int16
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, code=0x0B)
    data = load_dataset(str(tmp_path), mmap=mmap)
    np.testing.assert_array_equal(np.asarray(data.X), images.reshape(2, 9).astype(np.float32) / np.float32(255))


# Non-real data and stray NumPy warnings.


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize(
    ("array", "dtype"), [(np.ones((10, 4), np.complex64), "complex64"), (np.zeros((2, 2), "m8[s]"), "timedelta64[s]")]
)
def test_non_real_data_is_refused(tmp_path, array, dtype, mmap):
    path = tmp_path / "c.npy"
    np.save(path, array)
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path), mmap=mmap)
    assert str(info.value) == f"{path}: expected real numeric data, got dtype {dtype}"


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("content", ["", "f0,f1\n"])
def test_csv_without_rows_is_one_error_and_no_warning(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path))
    assert str(info.value) == f"{path}: no data (shape (0, 1))"


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("mmap", [False, True])
def test_float64_beyond_float32_range_is_an_error_not_a_warning(tmp_path, mmap):
    path = tmp_path / "big.npy"
    np.save(path, np.array([[0.0, 1.0], [2.0, 1e300]]))
    with pytest.raises(ContractiveError) as info:
        load_dataset(str(path), mmap=mmap)
    assert str(info.value) == f"{path}: contains NaN or infinite values (1 rows affected, first at row 1)"


def test_cli_prints_only_the_error_line_for_an_empty_csv(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    result = run_cli("train", "--data", str(path), "--out", str(tmp_path / "run"), "--no-progress")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"error: {path}: no data (shape (0, 1))\n")
