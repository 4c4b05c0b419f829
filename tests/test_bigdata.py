"""Data larger than memory: memory-mapped .npy/IDX reading, chunked validation, streamed encoding."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contractive import Autoencoder, ModelConfig, TrainConfig, encode, fit
from contractive import data as data_module
from contractive.data import MappedArray, load_dataset, read_idx
from contractive.errors import ContractiveError
from contractive.runs import encode_to_npy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def images_npy(tmp_path) -> Path:
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, size=(300, 8, 8), dtype=np.uint8))
    return path


def test_mapped_npy_reads_the_same_values_as_loading(images_npy):
    mapped, eager = load_dataset(str(images_npy), mmap=True), load_dataset(str(images_npy), mmap=False)
    assert isinstance(mapped.X, MappedArray) and isinstance(eager.X, np.ndarray)
    assert mapped.X.shape == eager.X.shape == (300, 64)
    assert mapped.image_shape == eager.image_shape == (8, 8)
    np.testing.assert_array_equal(np.asarray(mapped.X), eager.X)
    rows = np.array([299, 3, 150, 3])  # unsorted, repeated: returned in the order asked for
    np.testing.assert_array_equal(mapped.X[rows], eager.X[rows])
    np.testing.assert_array_equal(mapped.X[10:20], eager.X[10:20])
    subset = mapped.X.take(np.array([7, 2, 9]))
    np.testing.assert_array_equal(subset[[2, 0]], eager.X[[9, 7]])
    assert float(mapped.X.max()) == float(eager.X.max()) and float(mapped.X.min()) == float(eager.X.min())
    limited = load_dataset(str(images_npy), mmap=True, limit=25)
    assert limited.X.shape == (25, 64)
    np.testing.assert_array_equal(limited.X[0:25], eager.X[:25])


def test_chunked_validation_finds_nan_in_a_mapped_file(tmp_path, monkeypatch):
    X = np.random.default_rng(1).random((500, 16), dtype=np.float32)
    X[317, 4] = np.nan
    X[420, 0] = np.inf
    np.save(tmp_path / "bad.npy", X)
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 64 * 16 * 4)  # 64-row chunks: the bad rows sit in later chunks
    with pytest.raises(ContractiveError, match=r"2 rows affected, first at row 317"):
        load_dataset(str(tmp_path / "bad.npy"), mmap=True)


def _write_idx(path: Path, values: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, values.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in values.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + values.astype(np.uint8).tobytes())


def test_idx_read_in_place_raw_gzip_and_mapped(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, size=(40, 5, 6), dtype=np.uint8)
    _write_idx(tmp_path / "raw.idx", images)
    _write_idx(tmp_path / "packed.idx.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw.idx"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.idx.gz"), images)
    mapped = read_idx(tmp_path / "raw.idx", mmap=True)
    assert isinstance(mapped, MappedArray)
    np.testing.assert_array_equal(np.asarray(mapped), images.reshape(40, -1).astype(np.float32) / np.float32(255))
    # Size checks still hold without the whole file in one bytes object.
    (tmp_path / "short.idx").write_bytes((tmp_path / "raw.idx").read_bytes()[:-7])
    (tmp_path / "long.idx").write_bytes((tmp_path / "raw.idx").read_bytes() + b"\0")
    with pytest.raises(ContractiveError, match="truncated"):
        read_idx(tmp_path / "short.idx")
    with pytest.raises(ContractiveError, match="trailing bytes"):
        read_idx(tmp_path / "long.idx")
    with pytest.raises(ContractiveError, match="truncated"):
        read_idx(tmp_path / "short.idx", mmap=True)


def test_training_from_a_mapped_file_equals_training_in_memory(images_npy):
    mapped, eager = load_dataset(str(images_npy), mmap=True), load_dataset(str(images_npy), mmap=False)
    config = ModelConfig(n_features=64, hidden=8, reconstruction="bce")
    models = []
    for X in (mapped.X, eager.X):
        torch.manual_seed(0)
        model = Autoencoder(config)
        fit(model, X, None, TrainConfig(epochs=2, batch_size=32), progress=False, device="cpu")
        models.append(model)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_encode_streams_into_an_npy_identical_to_in_memory_codes(images_npy, tmp_path):
    mapped = load_dataset(str(images_npy), mmap=True)
    torch.manual_seed(0)
    model = Autoencoder(ModelConfig(n_features=64, hidden=8, reconstruction="bce"))
    out = tmp_path / "codes.npy"
    shape = encode_to_npy(model, mapped.X, out, batch_size=37, device="cpu")
    assert shape == (300, 8)
    expected = encode(model, np.asarray(mapped.X), device="cpu")
    np.testing.assert_array_equal(np.load(out), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npy", "images.npy"]  # no temporary left behind


@pytest.mark.slow
def test_encoding_a_large_mapped_file_keeps_peak_rss_low():
    """A 0.3 GB random .npy (the 2 GB case is benchmarks/bigdata_memory.py --gb 2).

    Reading it into memory would grow the process by at least its 286 MiB (float32 as stored); streaming
    grows it by about one chunk plus one batch. Measured here: 30-130 MiB growth over a ~260 MiB baseline
    (torch imported), independent of the file size (the same for 0.6 GB and 2 GB).
    """
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bigdata_memory.py"), "--gb", "0.3", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    growth = measured["peak_rss_mb"] - measured["rss_before_encode_mb"]
    assert measured["codes_match"]
    assert measured["file_mb"] > 280
    assert growth < 0.6 * measured["file_mb"], measured
