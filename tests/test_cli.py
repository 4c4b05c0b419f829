"""The command line as a user meets it: a full run on real data, encode/info, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from contractive.cli import main


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "cae"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "digits", "--out", str(run_dir), "--epochs", "3", "--hidden", "16", "--no-progress"])
    assert exit_info.value.code == 0
    return run_dir


def test_train_writes_a_complete_run_directory(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.jsonl", "metrics.json"} <= names
    assert {"learning_curves.png", "filters.png", "reconstructions.png"} <= names
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["hidden"] == 16 and config["model"]["reconstruction"] == "bce"
    assert config["training"]["epochs"] == 3 and config["data"]["name"] == "digits"
    assert config["contractive_version"]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["val_reconstruction_error"] > 0 and metrics["val_jacobian_norm"] > 0
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]


def test_encode_and_info(trained_run, tmp_path, capsys):
    code, out, _ = invoke(capsys, "encode", str(trained_run), "--data", "digits", "--output", str(tmp_path / "f.npy"))
    assert code == 0 and "(1797, 16)" in out
    codes = np.load(tmp_path / "f.npy")
    assert codes.shape == (1797, 16) and ((codes > 0) & (codes < 1)).all()
    code, out, _ = invoke(capsys, "info", str(trained_run))
    assert code == 0 and json.loads(out)["config"]["model"]["hidden"] == 16


def test_refuses_to_overwrite_a_run(trained_run, capsys):
    before = (trained_run / "model.safetensors").read_bytes()
    code, _, err = invoke(capsys, "train", "--out", str(trained_run), "--epochs", "1", "--no-progress")
    assert code == 2 and "not empty" in err and "--force" in err
    assert (trained_run / "model.safetensors").read_bytes() == before


def bad_inputs(tmp_path):
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([[0.0, np.nan], [1.0, 0.5]]))
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(10))
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 3)))
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "t10k-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(7))
    return {
        "nan": (["--data", str(nan)], "NaN or infinite"),
        "dimensions": (["--data", str(flat)], "got shape (10,)"),
        "empty": (["--data", str(empty)], "no data"),
        "missing": (["--data", str(tmp_path / "missing")], "does not exist"),
        "truncated idx": (["--data", str(idx)], "truncated"),
        "negative lam": (["--lam", "-1"], "lam"),
        "hidden 0": (["--hidden", "0"], "hidden size must be ≥ 1"),
        "activation": (["--activation", "swish"], "unknown activation 'swish'"),
        "not a number": (["--epochs", "many"], "'many' is not a valid integer"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "nan",
        "dimensions",
        "empty",
        "missing",
        "truncated idx",
        "negative lam",
        "hidden 0",
        "activation",
        "not a number",
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    args, message = bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "run"
    code, _, err = invoke(capsys, "train", "--out", str(out_dir), "--epochs", "1", "--no-progress", *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_checkpoint_that_does_not_match_config(trained_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "metrics.json"):
        (broken / name).write_bytes((trained_run / name).read_bytes())
    tensors = load_file(str(trained_run / "model.safetensors"))
    tensors["encoder.0.weight"] = tensors["encoder.0.weight"][:8]
    save_file(tensors, str(broken / "model.safetensors"))
    code, _, err = invoke(capsys, "info", str(broken))
    assert code == 2 and "encoder.0.weight has shape (8, 64), config implies (16, 64)" in err


def test_corrupt_checkpoint_and_missing_run(trained_run, tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_bytes((trained_run / "config.json").read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 10)
    code, _, err = invoke(capsys, "encode", str(corrupt), "--output", str(tmp_path / "x.npy"))
    assert code == 2 and err.startswith("error: cannot read") and err.count("\n") == 1
    assert not (tmp_path / "x.npy").exists()
    code, _, err = invoke(capsys, "info", str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in err


def test_outputs_that_cannot_be_written_are_refused_before_the_work(trained_run, tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.full((4, 64), 0.5, dtype=np.float32))
    before = data.read_bytes()
    (tmp_path / "adir.npy").mkdir()
    cases = [
        (["encode", str(trained_run), "--data", str(data), "--output", str(data)],
         f"error: output '{data}' is the input data file; choose another name"),
        (["encode", str(trained_run), "--data", str(data), "--output", str(tmp_path / "adir.npy")],
         f"error: output '{tmp_path / 'adir.npy'}' is a directory"),
        (["diagnose", str(trained_run), "--data", str(data), "--n-points", "4", "--json", str(tmp_path / "no/d.json")],
         f"error: output directory '{tmp_path / 'no'}' does not exist"),
    ]  # fmt: skip
    for args, message in cases:
        code, out, err = invoke(capsys, *args)
        assert (code, err) == (2, message + "\n"), args
        assert out == ""  # refused before any work was done
    assert data.read_bytes() == before


def test_write_errors_are_one_line(tmp_path):
    from contractive.checkpoint import write_json
    from contractive.errors import ContractiveError

    (tmp_path / "taken").mkdir()
    with pytest.raises(ContractiveError, match=f"^cannot write {tmp_path / 'taken'}: Is a directory$"):
        write_json(tmp_path / "taken", {"a": 1})
    with pytest.raises(
        ContractiveError, match=f"^cannot write {tmp_path / 'no' / 'f.json'}: No such file or directory$"
    ):
        write_json(tmp_path / "no" / "f.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary file left behind


def test_encode_rejects_data_of_the_wrong_width(trained_run, tmp_path, capsys):
    np.save(tmp_path / "wide.npy", np.zeros((3, 65)))
    code, _, err = invoke(capsys, "encode", str(trained_run), "--data", str(tmp_path / "wide.npy"))
    assert (code, err) == (2, f"error: {tmp_path / 'wide.npy'} has 65 features but the model expects 64\n")


def test_entry_point_runs_as_a_program(cli, tmp_path):
    result = cli("train", "--help")
    assert result.returncode == 0 and "--lam" in result.stdout
    result = cli("train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_mnist_end_to_end(mnist_dir, tmp_path, capsys):
    out = tmp_path / "mnist"
    code, stdout, _ = invoke(
        capsys, "train", "--data", str(mnist_dir), "--out", str(out), "--limit", "1000", "--epochs", "2",
        "--hidden", "32", "--no-progress",
    )  # fmt: skip
    assert code == 0 and "reconstruction error" in stdout
    assert json.loads((out / "config.json").read_text())["data"]["image_shape"] == [28, 28]


def test_ctrl_c_exits_130_and_keeps_a_loadable_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from contractive import load_run

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "contractive", "train", "--out", str(out), "--epochs", "100000", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted after" in err and "Traceback" not in err
    run = load_run(out)
    assert len(run.history) >= 1 and run.model.config.hidden == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "ae", "--lam", "0.5"], "--lam has no effect with --model ae (it has no Jacobian penalty)"),
        (["--model", "ae", "--penalty-method", "projection"],
         "--penalty-method has no effect with --model ae (it is read by --model cae / rcae / caeh)"),
        (["--noise", "masking"], "--noise has no effect with --model cae (it is read by --model dae)"),
        (["--model", "dae", "--noise", "masking", "--sigma", "0.2"],
         "--sigma has no effect with --noise masking (it is for --noise gaussian)"),
        (["--model", "dae", "--mask-prob", "0.3"],
         "--mask-prob has no effect with --noise gaussian (it is for --noise masking)"),
        (["--model", "cae", "--gamma", "2"], "--gamma has no effect with --model cae (it is read by --model caeh)"),
        (["--patience", "2", "--val-fraction", "0"],
         "--patience needs validation data to stop on; it has no effect with --val-fraction 0"),
    ],
)  # fmt: skip
def test_options_that_would_do_nothing_are_refused(args, message, tmp_path, capsys):
    code, _, err = invoke(capsys, "train", "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress", *args)
    assert (code, err) == (2, f"error: {message}\n")
    assert not (tmp_path / "run").exists()


def test_options_read_by_the_chosen_criterion_are_accepted(tmp_path, capsys):
    cases = [
        (["--model", "dae", "--noise", "masking", "--mask-prob", "0.3"], {"model": "dae", "noise": "masking",
                                                                          "mask_prob": 0.3}),
        (["--model", "caeh", "--gamma", "2", "--sigma", "0.2", "--n-corruptions", "2"],
         {"model": "caeh", "gamma": 2.0, "sigma": 0.2, "n_corruptions": 2}),
    ]  # fmt: skip
    for i, (args, expected) in enumerate(cases):
        out = tmp_path / f"run{i}"
        code, _, err = invoke(capsys, "train", "--data", "digits", "--limit", "100", "--hidden", "8", "--epochs", "1",
                              "--no-progress", "--out", str(out), *args)  # fmt: skip
        assert code == 0, err
        model = json.loads((out / "config.json").read_text())["model"]
        assert {k: model[k] for k in expected} == expected


def test_a_run_stopped_before_its_first_epoch_can_simply_be_started_again(trained_run, tmp_path, capsys):
    # What Ctrl-C during data loading or the first epoch leaves behind: config.json alone.
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "config.json").write_bytes((trained_run / "config.json").read_bytes())
    code, _, err = invoke(capsys, "train", "--resume", str(stopped))
    assert (code, err) == (2, f"error: {stopped} stopped before its first epoch finished: nothing to resume; run "
                              "the same command without --resume (the directory is reused)\n")  # fmt: skip
    code, _, err = invoke(capsys, "train", "--data", "digits", "--limit", "100", "--hidden", "8", "--epochs", "1",
                          "--no-progress", "--out", str(stopped))  # fmt: skip
    assert code == 0, err
    assert (stopped / "model.safetensors").is_file()
    # A config.json that is not one of ours is somebody's file: still refused without --force.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model": "resnet"}')
    code, _, err = invoke(capsys, "train", "--data", "digits", "--epochs", "1", "--no-progress", "--out", str(foreign))
    assert code == 2 and "is not empty" in err and (foreign / "config.json").read_text() == '{"model": "resnet"}'


def test_a_file_given_as_run_dir_and_a_bad_value_in_config_json_are_named(trained_run, tmp_path, capsys):
    a_file = tmp_path / "codes.npy"
    np.save(a_file, np.zeros((2, 2)))
    for command in (["info", str(a_file)], ["train", "--resume", str(a_file)]):
        code, _, err = invoke(capsys, *command)
        assert (code, err) == (2, f"error: '{a_file}' is a file, not a run directory\n"), command
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in ("model.safetensors", "metrics.json"):
        (edited / name).write_bytes((trained_run / name).read_bytes())
    config = json.loads((trained_run / "config.json").read_text())
    config["model"]["activation"] = "swish"
    (edited / "config.json").write_text(json.dumps(config))
    code, _, err = invoke(capsys, "info", str(edited))
    assert code == 2 and err.startswith(f"error: {edited / 'config.json'}: unknown activation 'swish'")


def test_run_files_are_not_overwritten_by_other_outputs_and_widths_are_checked(trained_run, tmp_path, capsys):
    before = {name: (trained_run / name).read_bytes() for name in ("config.json", "model.safetensors")}
    for name in before:
        target = trained_run / name
        code, out, err = invoke(capsys, "diagnose", str(trained_run), "--data", "digits", "--n-points", "4",
                                "--json", str(target))  # fmt: skip
        assert (code, out) == (2, "")
        assert err == f"error: output '{target}' would overwrite the {name} of the run in '{trained_run}'\n"
    code, _, err = invoke(capsys, "report", str(trained_run), "--out", str(trained_run), "--n-points", "4")
    assert (code, err) == (2, f"error: --out '{trained_run}' is a run directory; write the report somewhere else\n")
    assert not (trained_run / "index.html").exists()
    assert {name: (trained_run / name).read_bytes() for name in before} == before
    wide = tmp_path / "wide.npz"
    np.savez(wide, X=np.zeros((20, 65)), y=np.arange(20) % 2)
    code, _, err = invoke(capsys, "finetune", str(trained_run), "--data", str(wide), "--epochs", "1")
    assert (code, err) == (2, f"error: {wide} has 65 features but the model expects 64\n")
