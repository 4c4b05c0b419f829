"""Peak memory of ``contractive encode`` on a memory-mapped ``.npy`` far larger than one batch.

Writes a random float32 ``.npy`` of ``--gb`` gigabytes (block by block, never whole in memory), trains a
tiny model on its first rows, then runs ``contractive encode`` on the whole file in a fresh Python
process and reports that process's resident memory before encoding and its peak (``ru_maxrss``),
next to the file size. The file and the codes are deleted afterwards.

    python benchmarks/bigdata_memory.py --gb 2          # the 2 GB case of issue 8
    python benchmarks/bigdata_memory.py --gb 0.6 --json  # what tests/test_bigdata.py runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run in a child process so its ru_maxrss covers only imports + encoding, not the file's creation.
_MEASURE = r"""
import json, os, resource, sys
from contractive.cli import main
from contractive import checkpoint, data, runs  # imported before the baseline is taken

def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

before = rss_mb()
try:
    main(["encode", sys.argv[1], "--data", sys.argv[2], "--output", sys.argv[3], "--device", "cpu"])
except SystemExit as exc:
    if exc.code:
        raise
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"rss_before_encode_mb": before, "peak_rss_mb": peak}))
"""


def write_random_npy(path: Path, n_rows: int, n_features: int, seed: int = 0, block_rows: int = 65536) -> None:
    """A float32 (n_rows, n_features) file of uniform [0, 1) values, written one block at a time."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, n_features))
    offset = out.offset
    del out
    with open(path, "r+b") as fh:
        fh.seek(offset)
        for start in range(0, n_rows, block_rows):
            rows = min(block_rows, n_rows - start)
            fh.write(rng.random((rows, n_features), dtype=np.float32).tobytes())


def measure(gb: float, n_features: int = 256, hidden: int = 16) -> dict[str, float]:
    from contractive import ModelConfig, TrainConfig, train_run
    from contractive.data import Dataset

    n_rows = int(gb * 1e9) // (4 * n_features)
    with tempfile.TemporaryDirectory(prefix="contractive-bigdata-") as tmp:
        tmp = Path(tmp)
        data_path, codes_path = tmp / "big.npy", tmp / "codes.npy"
        started = time.perf_counter()
        write_random_npy(data_path, n_rows, n_features)
        write_s = time.perf_counter() - started
        head = np.load(data_path, mmap_mode="r")[:512].copy()
        config = ModelConfig(n_features=n_features, hidden=hidden, reconstruction="bce")
        train_run(
            Dataset(head), config, TrainConfig(epochs=1), tmp / "run", progress=False, figures=False, device="cpu"
        )
        started = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(tmp / "run"), str(data_path), str(codes_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        encode_s = time.perf_counter() - started
        if child.returncode:
            raise SystemExit(f"encode failed ({child.returncode}):\n{child.stderr}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        codes = np.load(codes_path, mmap_mode="r")
        assert codes.shape == (n_rows, hidden), codes.shape
        # Spot-check that the streamed codes are the model's codes of the right rows.
        from contractive import encode, load_run

        rows = np.array([0, n_rows // 2, n_rows - 1])
        expected = encode(load_run(tmp / "run").model, np.load(data_path, mmap_mode="r")[rows], device="cpu")
        result["codes_match"] = bool(np.allclose(np.asarray(codes[rows]), expected, atol=1e-6))
        del codes
        result.update(
            file_mb=data_path.stat().st_size / 2**20,
            codes_mb=codes_path.stat().st_size / 2**20,
            rows=n_rows,
            n_features=n_features,
            write_s=write_s,
            encode_process_s=encode_s,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0, help="size of the random .npy in GB (1e9 bytes)")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    result = measure(args.gb, args.features)
    if args.json:
        print(json.dumps(result))
        return
    growth = result["peak_rss_mb"] - result["rss_before_encode_mb"]
    print(f"input .npy              {result['file_mb']:9.1f} MiB  ({result['rows']} × {result['n_features']} float32)")
    print(f"codes .npy written      {result['codes_mb']:9.1f} MiB")
    print(f"RSS after imports       {result['rss_before_encode_mb']:9.1f} MiB")
    print(f"peak RSS (ru_maxrss)    {result['peak_rss_mb']:9.1f} MiB")
    print(f"growth during encode    {growth:9.1f} MiB  = {growth / result['file_mb']:.1%} of the input file")
    print(f"codes spot-check        {'ok' if result['codes_match'] else 'MISMATCH'}")
    print(f"time: write {result['write_s']:.1f}s, encode process {result['encode_process_s']:.1f}s")


if __name__ == "__main__":
    main()
