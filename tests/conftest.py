"""Shared fixtures: paths to the real datasets and a CLI runner that captures exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The real MNIST test set lives beside the project (../shared), never inside it.
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

torch.set_num_threads(2)


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {MNIST_DIR} (expected ../shared/data/mnist beside the repo)")
    return MNIST_DIR


@pytest.fixture
def one_thread():
    """For tests of tiny models: a second thread only adds synchronisation, which dominates on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m contractive ARGS`` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "contractive", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli
