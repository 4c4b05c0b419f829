"""The benchmark protocol: `contractive benchmark --quick` end to end on a tiny digits subset, the fixed
splits, and measurements checked against independent computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from contractive import ContractiveError
from contractive.benchmark import (
    PRETRAINED,
    BenchmarkConfig,
    compare_with_paper,
    encoder_measures,
    format_report,
    linear_probe,
    load_results,
    make_splits,
    sigmoid_encoder,
)
from contractive.diagnostics import jacobians

TINY = ["--train-size", "300", "--val-size", "120", "--test-size", "200", "--hidden", "16",
        "--grid-train-size", "200", "--grid-epochs", "1", "--epochs", "2", "--finetune-epochs", "5", "--probe-max-iter", "3000",
        "--grid-probe-max-iter", "500"]  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("bench")
    proc = run_cli("benchmark", "--data", "digits", "--quick", "--out", str(out), *TINY, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_quick_run_writes_every_output_with_finite_numbers(quick_run):
    out, proc = quick_run
    for name in ("results.md", "results.json", "error_vs_jacobian.png", "spectra.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    names = [row["model"] for row in results["rows"]]
    assert names == [*PRETRAINED, "RBM", "PCA-16", "raw", "random init"]
    for row in results["rows"]:
        assert 0 <= row["probe_error"] < 0.5, row  # far better than chance (90%) on digits
        assert math.isfinite(row["jacobian_norm"]) and row["jacobian_norm"] > 0, row
    trained = [r for r in results["rows"] if r["model"] in (*PRETRAINED, "RBM")]
    for row in trained:
        for key in ("finetune_error", "saturation_percent", "reconstruction_error", "train_time_s", "time_per_epoch_s"):
            assert row[key] is not None and math.isfinite(row[key]), (row["model"], key)
        assert 0 <= row["saturation_percent"] <= 100
    # Grids and choices are recorded, and every choice is a grid point.
    for name in ("AE+wd", "DAE-g", "DAE-b", "CAE", "CAE+H"):
        selection = results["selection"][name]
        assert len(selection["grid"]) == 2
        assert selection["chosen"] in [t["params"] for t in selection["grid"]]
    assert results["selection"]["CAE+H"]["chosen"]["lam"] == results["selection"]["CAE"]["chosen"]["lam"]
    # Fixed splits as requested; the Markdown says quick mode and holds the table.
    assert (results["data"]["n_train"], results["data"]["n_val"], results["data"]["n_test"]) == (300, 120, 200)
    text = (out / "results.md").read_text()
    assert "Quick mode" in text and "| CAE+H |" in text and "contractive benchmark --data digits --quick" in text
    assert "| CAE |" in proc.stdout


def test_reference_rows_match_independent_computations(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    rows = {row["model"]: row for row in results["rows"]}
    # PCA's rows are orthonormal, so ‖J‖_F = √k exactly; raw pixels: the identity, √64.
    assert rows["PCA-16"]["jacobian_norm"] == pytest.approx(4.0, rel=1e-5)
    assert rows["raw"]["jacobian_norm"] == pytest.approx(8.0)
    # The raw-pixel probe equals logistic regression on standardised pixels fitted here, on the same split.
    splits = make_splits("digits", BenchmarkConfig.quick_defaults(train_size=300, val_size=120, test_size=200))
    scaler = StandardScaler().fit(splits.X_train)
    clf = LogisticRegression(max_iter=3000).fit(scaler.transform(splits.X_train), splits.y_train)
    expected = np.mean(clf.predict(scaler.transform(splits.X_test)) != splits.y_test)
    assert rows["raw"]["probe_error"] == pytest.approx(expected)
    assert rows["raw"]["probe_converged"] is True


def test_pool_split_is_fixed_disjoint_and_70_10_20():
    config = BenchmarkConfig.quick_defaults(train_size=None, val_size=None, test_size=None)
    a, b = make_splits("digits", config), make_splits("digits", config)
    assert (len(a.X_train), len(a.X_val), len(a.X_test)) == (1257, 179, 361)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    # Disjoint: the parts together are the whole dataset, each sample once (digits has no duplicate rows).
    together = np.concatenate([a.X_train, a.X_val, a.X_test])
    assert len({row.tobytes() for row in together}) == len(together) == 1797
    assert "70/10/20" in a.description["how"]


def test_idx_directory_with_test_files_keeps_them_as_the_test_set(tmp_path):
    import gzip

    rng = np.random.default_rng(0)

    def write(name, array):
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
        with gzip.open(tmp_path / f"{name}.gz", "wb") as fh:
            fh.write(header + array.astype(np.uint8).tobytes())

    write("train-images-idx3-ubyte", rng.integers(0, 256, (60, 4, 4)))
    write("train-labels-idx1-ubyte", np.arange(60) % 10)
    write("t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 4, 4)))
    write("t10k-labels-idx1-ubyte", np.arange(12) % 10)
    splits = make_splits(str(tmp_path), BenchmarkConfig(hidden=4))
    assert (len(splits.X_train), len(splits.X_val), len(splits.X_test)) == (50, 10, 12)
    np.testing.assert_array_equal(splits.y_test, np.arange(12) % 10)


def test_measures_match_brute_force_jacobians():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    encoder = sigmoid_encoder(rng.normal(size=(7, 5)), rng.normal(size=7), torch.nn.Sigmoid())
    X = rng.random((9, 5)).astype(np.float32)
    measures = encoder_measures(encoder, X, n_spectrum=9)
    J = jacobians(encoder.double(), torch.as_tensor(X, dtype=torch.float64))
    assert measures["jacobian_norm"] == pytest.approx(float(J.flatten(1).norm(dim=1).mean()), rel=1e-5)
    expected_spectrum = torch.linalg.svdvals(J).mean(dim=0).numpy()
    np.testing.assert_allclose(measures["spectrum"], expected_spectrum, rtol=1e-4)
    h = 1 / (1 + np.exp(-(X @ encoder[0].weight.detach().numpy().T + encoder[0].bias.detach().numpy())))
    expected_sat = 100 * np.mean((h <= 0.05) | (h >= 0.95))
    assert measures["saturation"] == pytest.approx(expected_sat)


def test_comparison_with_the_paper_counts_pairs_and_ranks(recwarn):
    # Errors here in the paper's own order except AE+wd and AE swapped; ‖J_f‖ ranked like the errors.
    errors = {"CAE": 0.01, "DAE-g": 0.02, "RBM": 0.03, "DAE-b": 0.04, "AE+wd": 0.06, "AE": 0.05}
    rows = [{"model": m, "finetune_error": e, "probe_error": 0.1, "jacobian_norm": 100 * e} for m, e in errors.items()]
    lines = compare_with_paper(rows)
    fine, probe = [line for line in lines if line.startswith("- ")]
    text = "\n".join(lines)
    assert "Pairs of the paper's ordering that hold: 14 of 15." in fine
    assert "AE+wd < AE: no (-1.00 pt)" in text and "CAE < AE: yes (+4.00 pt)" in text
    assert "with fine-tuned error over 6 models: +1.00." in text
    # Every model has the same probe error: every pair is a tie, and the rank correlation is undefined.
    assert "Pairs of the paper's ordering that hold: 0 of 15." in probe
    assert "with linear probe error over 6 models: undefined (equal for every model)." in text
    assert not [w for w in recwarn if "constant" in str(w.message).lower()]  # no scipy ConstantInputWarning


@pytest.mark.parametrize(("run", "stopped"), [("fashion-mnist", "16 of 16"), ("mnist", "1 of 16")])
def test_committed_reports_are_what_their_results_json_generates(run, stopped):
    from tests.conftest import ROOT

    out = ROOT / "benchmarks" / "results" / run
    results = load_results(out / "results.json")
    assert (out / "results.md").read_text(encoding="utf-8") == format_report(results)
    assert f"{stopped} validation-grid probes reached max_iter (300) without converging" in format_report(results)


def test_grid_probe_budget_is_an_option(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["grid_probe_max_iter"] == 500 and "--grid-probe-max-iter=500" in results["command"]
    assert "(probe max_iter 500)" in (out / "results.md").read_text()


def test_linear_probe_reports_non_convergence():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 20)), rng.integers(0, 3, 200)
    assert linear_probe(X, y, X, y, max_iter=2, seed=0)["converged"] is False
    assert linear_probe(X, y, X, y, max_iter=5000, seed=0)["converged"] is True


def test_bad_inputs_are_one_line_errors(cli, tmp_path):
    with pytest.raises(ContractiveError, match="hidden"):
        BenchmarkConfig(hidden=0)
    with pytest.raises(ContractiveError, match="lam-grid"):
        BenchmarkConfig(lam_grid=())
    np.save(tmp_path / "unlabelled.npy", np.random.default_rng(0).random((50, 4)))
    proc = cli("benchmark", "--data", str(tmp_path / "unlabelled.npy"), "--quick", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'unlabelled.npy'}: the benchmark needs labels, and this dataset has none"
    ]
    assert not (tmp_path / "o").exists()  # refused before any output: no empty directory left behind
    one_class = tmp_path / "one_class.npz"
    np.savez(one_class, X=np.random.default_rng(0).random((50, 4)), y=np.zeros(50, dtype=np.int64))
    proc = cli("benchmark", "--data", str(one_class), "--quick", "--out", str(tmp_path / "o1"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {one_class}: the benchmark needs at least 2 classes in its training split, found 1"
    ]


# Measured quantities of a row; times differ between runs, everything else is seeded.
SEEDED_KEYS = ("model", "params", "probe_error", "probe_converged", "probe_iter", "finetune_error", "jacobian_norm",
               "saturation_percent", "reconstruction_error")  # fmt: skip


def test_resume_trains_only_the_missing_models_and_gets_the_same_rows(quick_run, cli, tmp_path):
    import shutil

    out, _ = quick_run
    full = json.loads((out / "results.json").read_text())
    stopped = tmp_path / "stopped"
    shutil.copytree(out, stopped)
    # As if stopped after the CAE: five rows written, the run marked incomplete.
    partial = {**full, "rows": full["rows"][:5], "complete": False,
               "spectra": {k: v for k, v in full["spectra"].items() if k in PRETRAINED[:5]},
               "machine": {**full["machine"], "cpu": "Earlier CPU"}}  # fmt: skip
    (stopped / "results.json").write_text(json.dumps(partial))
    proc = cli("benchmark", "--data", "digits", "--quick", "--out", str(stopped), *TINY, "--resume", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "keeping its selection and 5 finished rows (AE, AE+wd, DAE-g, DAE-b, CAE)" in proc.stderr
    assert "grid " not in proc.stderr  # the selection was not redone
    resumed = json.loads((stopped / "results.json").read_text())
    assert resumed["complete"] is True and resumed["resumed"] == [["AE", "AE+wd", "CAE", "DAE-b", "DAE-g"]]
    assert resumed["selection"] == full["selection"] and resumed["command"] == full["command"]
    assert [r["model"] for r in resumed["rows"]] == [r["model"] for r in full["rows"]]
    for got, want in zip(resumed["rows"], full["rows"], strict=True):
        assert {k: got[k] for k in SEEDED_KEYS} == {k: want[k] for k in SEEDED_KEYS}, want["model"]
    assert resumed["spectra"] == full["spectra"]
    assert resumed["total_time_s"] > partial["total_time_s"]
    text = (stopped / "results.md").read_text()
    assert "Resumed (run 2) after a stop" in text and "Partial results" not in text
    # The kept rows' timings come from the first run's machine, and the report says which one that was.
    assert resumed["earlier_machines"] == [partial["machine"]] and resumed["machine"] == full["machine"]
    assert "Run 1 ran on Earlier CPU (" in text


def test_resume_refuses_other_options_missing_results_and_force(quick_run, cli, tmp_path):
    out, _ = quick_run
    base = ["benchmark", "--data", "digits", "--quick", *TINY]
    proc = cli(*base, "--out", str(out), "--hidden", "17", "--resume")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot resume: {out / 'results.json'} was made with other options (hidden differ); "
        "pass the same options, or start afresh with --force"
    ]
    proc = cli(*base, "--out", str(tmp_path / "none"), "--resume")
    assert proc.returncode == 2 and "no results.json" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    proc = cli(*base, "--out", str(tmp_path / "bad"), "--resume")
    assert proc.returncode == 2 and "not a readable results file" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli(*base, "--out", str(out), "--resume", "--force")
    assert proc.returncode == 2 and "pass one" in proc.stderr
