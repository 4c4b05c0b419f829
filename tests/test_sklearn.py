"""``contractive.sklearn.CAE``: scikit-learn's own estimator checks, values against independent computations,
partial_fit equivalence, pipelines and grid search, pickling, and the shared run-directory format."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from contractive import ContractiveError, load_dataset
from contractive.cli import app
from contractive.sklearn import CAE

ROOT = Path(__file__).resolve().parents[1]

# Every scikit-learn check passes, so nothing is expected to fail.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def one_thread_per_process():
    # These models are tiny: extra BLAS/OpenMP threads only add contention (notably with GridSearchCV's
    # worker processes), never speed. Results do not depend on it.
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small(**params) -> CAE:
    defaults = dict(n_components=8, max_iter=3, batch_size=32, random_state=0)
    return CAE(**{**defaults, **params})


@parametrize_with_checks(
    [CAE(n_components=3, max_iter=2, batch_size=16, random_state=0, device="cpu")],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_estimator_checks(estimator, check, monkeypatch):
    # check_array_api_input skips itself unless SCIPY_ARRAY_API=1; with NumPy input (the only namespace
    # checked for estimators without array API support) SciPy's array API mode changes nothing, so the
    # flag is set here rather than before SciPy is imported.
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    check(estimator)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_codes_reconstructions_and_score_match_numpy(digits):
    X = digits.X[:300].astype(np.float64)
    cae = small().fit(X)
    H = cae.transform(X)
    np.testing.assert_allclose(H, _sigmoid(X @ cae.components_.T + cae.intercept_hidden_), rtol=1e-12)
    X_hat = cae.inverse_transform(H)
    assert cae.decoder_components_ is cae.components_  # tied weights
    np.testing.assert_allclose(X_hat, _sigmoid(H @ cae.components_ + cae.intercept_visible_), rtol=1e-12)
    assert cae.score(X) == pytest.approx(-np.mean(np.sum((X - X_hat) ** 2, axis=1)), rel=1e-12)
    assert cae.get_feature_names_out().tolist() == [f"cae{i}" for i in range(8)]

    untied = small(tied=False, decoder="linear").fit(X)
    H = untied.transform(X)
    np.testing.assert_allclose(
        untied.inverse_transform(H), H @ untied.decoder_components_ + untied.intercept_visible_, rtol=1e-10
    )


def test_jacobian_norm_matches_autograd_and_shrinks_with_lambda(digits):
    X = digits.X[:300].astype(np.float64)
    cae = small(n_components=16).fit(X)
    encoder = cae.autoencoder_.encoder
    norms = [
        torch.linalg.matrix_norm(torch.autograd.functional.jacobian(encoder, torch.from_numpy(x))).item()
        for x in X[:10]
    ]
    assert cae.jacobian_norm(X[:10]) == pytest.approx(np.mean(norms), rel=1e-10)

    plain = small(n_components=16, lam=0.0, max_iter=10).fit(X)
    contractive = small(n_components=16, lam=1.0, max_iter=10).fit(X)
    assert contractive.jacobian_norm(X) < 0.7 * plain.jacobian_norm(X)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(digits, dtype):
    X = digits.X[:200].astype(dtype)
    cae = small().fit(X)
    assert cae.components_.dtype == dtype and cae.autoencoder_.encoder[0].weight.dtype == getattr(torch, dtype.__name__)
    assert cae.transform(X).dtype == dtype
    assert cae.inverse_transform(cae.transform(X)).dtype == dtype
    other = np.float64 if dtype == np.float32 else np.float32
    np.testing.assert_allclose(cae.transform(X.astype(other)), cae.transform(X), rtol=1e-5, atol=1e-6)
    assert cae.transform(X.astype(other)).dtype == other
    assert cae.transform((X * 16).astype(np.int64) / 16).dtype == np.float64


def test_random_state_makes_fit_bit_reproducible_and_leaves_global_rng_alone(digits):
    X = digits.X[:200]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second = small(random_state=3).fit(X), small(random_state=3).fit(X)
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(first.components_, second.components_)
    np.testing.assert_array_equal(first.transform(X), second.transform(X))
    assert first.loss_curve_ == second.loss_curve_
    assert not np.array_equal(small(random_state=4).fit(X).components_, first.components_)


def test_verbose_prints_one_line_per_epoch(digits, capsys):
    cae = small(max_iter=3, verbose=1).fit(digits.X[:100])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for epoch, (line, loss) in enumerate(zip(lines, cae.loss_curve_, strict=True), 1):
        assert re.match(rf"epoch +{epoch}  loss {loss:.6g}  reconstruction .+  penalty .+", line), line
    small(max_iter=2).fit(digits.X[:100])
    assert capsys.readouterr().out == ""
    small(max_iter=1, lam=0.0, verbose=1).fit(digits.X[:100])  # a plain AE computes no training penalty
    (line,) = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"epoch +1  loss \S+  reconstruction \S+  \(\d+\.\d\ds\)", line), line


def test_fit_then_partial_fit_equals_one_longer_fit(digits):
    X = digits.X[:300].astype(np.float64)
    reference = small(max_iter=3).fit(X)
    fit_then_partial = small(max_iter=2).fit(X).partial_fit(X)
    only_partial = small()
    for _ in range(3):
        only_partial.partial_fit(X)
    for other in (fit_then_partial, only_partial):
        np.testing.assert_array_equal(other.components_, reference.components_)
        np.testing.assert_array_equal(other.intercept_visible_, reference.intercept_visible_)
        assert other.loss_curve_ == reference.loss_curve_ and other.n_iter_ == 3


def test_partial_fit_on_batches_learns_like_fit(digits):
    """In the style of scikit-learn's test_rbm.py: seven passes of partial_fit over mini-batches reach the
    score of fit with seven epochs, and the input is not modified."""
    X = digits.X[:400].astype(np.float64)
    X_copy = X.copy()
    fitted = CAE(n_components=32, max_iter=7, batch_size=50, random_state=9).fit(X)
    streamed = CAE(n_components=32, batch_size=50, random_state=9)
    batches = np.array_split(X, int(np.ceil(X.shape[0] / streamed.batch_size)))
    for _ in range(7):
        for batch in batches:
            streamed.partial_fit(batch)
    initial = -np.mean(np.sum((X - X.mean(axis=0)) ** 2, axis=1))  # score of predicting the mean image
    assert fitted.score(X) > 0.5 * initial  # both explain most of the variance…
    assert streamed.score(X) == pytest.approx(fitted.score(X), rel=0.15)  # …and equally well
    assert streamed.n_iter_ == 7 * len(batches)
    np.testing.assert_array_equal(X, X_copy)


def test_warm_start_continues_from_the_current_weights(digits):
    X = digits.X[:300]
    cae = small(max_iter=2, warm_start=True).fit(X)
    first_curve = list(cae.loss_curve_)
    cae.fit(X)
    assert cae.n_iter_ == 4 and cae.loss_curve_[:2] == first_curve
    assert cae.loss_curve_[2] < first_curve[0]
    cold = small(max_iter=2).fit(X)
    cold.fit(X)
    assert cold.n_iter_ == 2 and cold.loss_curve_ == first_curve


def test_clear_errors_for_bad_input(digits):
    X = digits.X[:50]
    with pytest.raises(NotFittedError):
        small().transform(X)
    for bad in (np.nan, np.inf):
        X_bad = X.copy()
        X_bad[3, 5] = bad
        with pytest.raises(ValueError, match="NaN" if bad is np.nan else "infinity"):
            small().fit(X_bad)
    with pytest.raises(TypeError, match="dense data is required"):
        small().fit(sp.csr_matrix(X))
    cae = small().fit(X)
    with pytest.raises(ValueError, match="X has 3 features, but CAE is expecting 64 features"):
        cae.transform(X[:, :3])
    with pytest.raises(ValueError, match="expecting 8 codes"):
        cae.inverse_transform(np.zeros((2, 5)))
    with pytest.raises(ContractiveError, match="needs data in \\[0, 1\\]"):
        cae.partial_fit(X * 16)  # BCE was chosen for the first, [0, 1]-scaled data
    bad_params = CAE(lam=-1.0)  # __init__ only stores…
    with pytest.raises(ContractiveError, match="lam"):
        bad_params.fit(X)  # …fit validates
    with pytest.raises(ContractiveError, match="unknown device"):
        CAE(device="gpu0").fit(X)
    # Parameters named differently from the configs' fields: the error names the estimator's parameter.
    renamed = [
        ({"n_components": 0}, "n_components must be an integer ≥ 1, got 0"),
        ({"n_components": 2.5}, "n_components must be an integer ≥ 1, got 2.5"),
        ({"max_iter": 0}, "max_iter must be an integer ≥ 1, got 0"),
        ({"learning_rate_init": -0.1}, "learning_rate_init must be a finite number > 0, got -0.1"),
        ({"random_state": "x"}, "random_state must be None, an integer or a numpy RandomState, got 'x'"),
    ]
    for params, message in renamed:
        for method in ("fit", "partial_fit"):
            with pytest.raises(ContractiveError, match=f"^{re.escape(message)}$"):
                getattr(CAE(**params), method)(X)
    if not torch.cuda.is_available():
        with pytest.raises(ContractiveError, match="not available"):
            CAE(device="cuda").fit(X)
        assert small(device="auto").fit(X).autoencoder_.encoder[0].weight.device.type == "cpu"


def test_pandas_in_and_out(digits):
    frame = pd.DataFrame(digits.X[:100], columns=[f"px{i}" for i in range(64)], index=np.arange(100, 200))
    cae = small().set_output(transform="pandas").fit(frame)
    assert cae.feature_names_in_.tolist() == list(frame.columns)
    codes = cae.transform(frame)
    assert isinstance(codes, pd.DataFrame)
    assert list(codes.columns) == [f"cae{i}" for i in range(8)] and codes.index.equals(frame.index)
    np.testing.assert_array_equal(codes.to_numpy(), small().fit(digits.X[:100]).transform(digits.X[:100]))


def test_pipeline_grid_search_with_one_and_two_jobs(digits):
    X, y = digits.X[:240].astype(np.float64), digits.y[:240]
    pipe = Pipeline(
        [("scale", MinMaxScaler()), ("cae", small(max_iter=6)), ("classify", LogisticRegression(max_iter=500))]
    )
    grid = {"cae__lam": [0.0, 0.3], "cae__n_components": [16, 32]}
    results = {}
    for n_jobs in (1, 2):
        search = GridSearchCV(clone(pipe), grid, cv=2, n_jobs=n_jobs).fit(X, y)
        results[n_jobs] = search
        assert search.best_score_ > 0.6  # 120 training images per fold; chance is 0.1
    np.testing.assert_array_equal(results[1].cv_results_["mean_test_score"], results[2].cv_results_["mean_test_score"])
    best = results[2].best_estimator_.named_steps["cae"]
    assert (best.lam, best.n_components) == (
        results[2].best_params_["cae__lam"],
        results[2].best_params_["cae__n_components"],
    )
    # clone copies parameters, not fitted state, and a clone refits to the same model.
    copy = clone(best)
    assert copy.get_params() == best.get_params() and not hasattr(copy, "components_")
    scaled = MinMaxScaler().fit_transform(X)
    np.testing.assert_array_equal(copy.fit(scaled).components_, best.components_)


def test_readme_shows_the_pipeline_grid_search():
    """tests/test_readme.py runs every Python block of the README; this checks the estimator's block shows
    what it should (so it is not run twice here)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text.split("## scikit-learn estimator", 1)[1], re.S).group(1)
    for needed in ("load_digits", "MinMaxScaler()", "CAE(", "LogisticRegression(", "cae__lam", "cae__n_components"):
        assert needed in block
    assert re.search(r"GridSearchCV\(.*n_jobs=2\)", block)


def test_pickle_and_joblib_round_trip(digits, tmp_path):
    X = digits.X[:200].astype(np.float64)
    cae = small().fit(X)
    restored = pickle.loads(pickle.dumps(cae))
    joblib.dump(cae, tmp_path / "cae.joblib")
    from_joblib = joblib.load(tmp_path / "cae.joblib")
    for other in (restored, from_joblib):
        np.testing.assert_array_equal(other.transform(X), cae.transform(X))
        assert other.get_params() == cae.get_params() and other.loss_curve_ == cae.loss_curve_
    # The optimiser and shuffling state travel too: training continues exactly as it would have.
    restored.partial_fit(X)
    cae.partial_fit(X)
    np.testing.assert_array_equal(restored.components_, cae.components_)


def test_save_and_load_round_trip(digits, tmp_path):
    frame = pd.DataFrame(digits.X[:200].astype(np.float64), columns=[f"px{i}" for i in range(64)])
    cae = small(lam=0.3, tied=False).fit(frame)
    run_dir = cae.save(tmp_path / "run")
    assert {p.name for p in run_dir.iterdir()} == {
        "model.safetensors",
        "config.json",
        "metrics.jsonl",
        "metrics.json",
        "learning_curves.png",
    }
    loaded = CAE.load(run_dir)
    assert loaded.get_params() == cae.get_params()
    assert loaded.components_.dtype == np.float64
    np.testing.assert_array_equal(loaded.transform(frame), cae.transform(frame))
    assert loaded.feature_names_in_.tolist() == list(frame.columns)
    assert loaded.loss_curve_ == cae.loss_curve_ and loaded.n_iter_ == 3
    with pytest.raises(
        ContractiveError,
        match=r"is not empty; choose another one or overwrite it \(--force on the command line, overwrite=True in Python\)$",
    ):
        cae.save(run_dir)
    with pytest.raises(ContractiveError, match="does not exist"):
        CAE.load(tmp_path / "missing")


def contractive(*args: str):
    """Run a ``contractive`` CLI command in this process (the same code path as the console script)."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_cli_run_loads_as_estimator_with_the_same_codes(digits, tmp_path):
    run_dir, codes_path = tmp_path / "run", tmp_path / "codes.npy"
    contractive("train", "--data", "digits", "--hidden", "8", "--epochs", "2", "--out", str(run_dir), "--no-progress")
    contractive("encode", str(run_dir), "--data", "digits", "--output", str(codes_path))
    cae = CAE.load(run_dir)
    assert (cae.n_components, cae.max_iter, cae.n_iter_) == (8, 2, 2)
    codes = cae.transform(digits.X)
    assert codes.dtype == np.float32
    np.testing.assert_array_equal(codes, np.load(codes_path))


def test_estimator_run_encodes_with_the_cli(digits, tmp_path):
    cae = small().fit(digits.X)  # float32, like the CLI
    run_dir = cae.save(tmp_path / "run", figures=False)
    codes_path = tmp_path / "codes.npy"
    contractive("encode", str(run_dir), "--data", "digits", "--output", str(codes_path))
    assert '"epochs_trained": 3' in contractive("info", str(run_dir)).output
    np.testing.assert_array_equal(np.load(codes_path), cae.transform(digits.X))
