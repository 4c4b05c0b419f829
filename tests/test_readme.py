"""The README's examples are run as written: every ```python block, and every `contractive …` line of the
```bash blocks after the first (which holds the make targets)."""

from __future__ import annotations

import re
import shlex

import pytest

from contractive.cli import main

from .conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCES = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [code for lang, code in FENCES if lang == "python"]
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def test_cli_examples_run(tmp_path, monkeypatch, mnist_dir):
    # The examples use ../shared/data/mnist relative to the repo root: mirror that layout around a temp dir.
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(mnist_dir.parents[1], target_is_directory=True)
    monkeypatch.chdir(work)
    lines = [line for lang, code in FENCES[1:] if lang == "bash" for line in code.splitlines()]
    commands = [shlex.split(line.split("#")[0]) for line in lines if line.startswith("contractive ")]
    assert len(commands) >= 4
    for argv in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv[1:], *(["--no-progress"] if argv[1] == "train" else [])])
        assert exit_info.value.code == 0, " ".join(argv)
    assert (work / "codes.npy").is_file()
