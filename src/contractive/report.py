"""A static HTML page comparing runs side by side: config, metrics, diagnostics and every figure.

``write_report`` writes ``OUT/index.html``, ``OUT/diagnostics.json`` and the PNGs under ``OUT/figures/``.
The page has no scripts and no external resources: it opens from disk, offline, in any browser, and the
folder can be copied or archived as a whole.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, plots
from .checkpoint import Run, load_run
from .diagnostics import DEFAULT_EPS, DEFAULT_FRACTION, DEFAULT_RADII, Diagnostics, average_spectrum, diagnose, tangents
from .errors import ContractiveError
from .models import input_filters

INDEX = "index.html"
FIGURES = "figures"


@dataclass
class _Entry:
    label: str
    run: Run
    diagnostics: Diagnostics | None
    figures: dict[str, Path]


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Short names for runs: the directory name, or the whole path where names repeat."""
    names = [Path(p).name or str(p) for p in paths]
    return [name if names.count(name) == 1 else str(p) for name, p in zip(names, paths, strict=True)]


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    X: np.ndarray | None = None,
    data_label: str | None = None,
    fraction: float = DEFAULT_FRACTION,
    radii: Sequence[float] = DEFAULT_RADII,
    eps: float = DEFAULT_EPS,
    n_tangent_points: int = 4,
    n_tangents: int = 5,
    seed: int = 0,
) -> Path:
    """Write the report for ``run_dirs`` into ``out_dir`` and return the path of ``index.html``.

    Parameters
    ----------
    run_dirs : sequence of paths
        Run directories (``contractive train`` output); all must share the input dimension when ``X`` is given.
    out_dir : path
        Created if needed; ``index.html``, ``diagnostics.json`` and ``figures/`` in it are replaced.
    X : ndarray, shape (n_points, n_features), optional
        Points at which the Jacobian diagnostics are measured (ideally held-out data). Without it the page
        shows config, metrics, learning curves and filters only.
    data_label : str, optional
        Where ``X`` came from, shown on the page.
    fraction, radii, eps, seed
        Passed to :func:`contractive.diagnostics.diagnose`.
    n_tangent_points, n_tangents : int
        Rows and columns of each tangents figure.
    """
    if not run_dirs:
        raise ContractiveError("no run directories given")
    paths = [Path(p) for p in run_dirs]
    runs = [load_run(p) for p in paths]
    if X is not None:
        for run in runs:
            if run.model.config.n_features != X.shape[1]:
                raise ContractiveError(
                    f"run {str(run.path)!r} expects {run.model.config.n_features} features, the data has {X.shape[1]}"
                )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ContractiveError(f"output {str(out)!r} exists and is not a directory")
    figure_dir = out / FIGURES
    try:
        figure_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ContractiveError(f"cannot create report directory {str(out)!r}: {exc.strerror}") from None
    for stale in figure_dir.glob("*.png"):
        stale.unlink()

    entries = []
    for index, (label, run) in enumerate(zip(run_labels(paths), runs, strict=True)):
        stem = f"run{index + 1}"
        diag = (
            diagnose(run.model.encoder, X, fraction=fraction, radii=radii, eps=eps, seed=seed)
            if X is not None
            else None
        )
        entries.append(_Entry(label, run, diag, _run_figures(run, X, figure_dir, stem, n_tangent_points, n_tangents)))

    overlays = _overlay_figures(entries, figure_dir, fraction, eps)
    summaries = {
        e.label: {"run_dir": str(e.run.path), **(e.diagnostics.summary() if e.diagnostics else {})} for e in entries
    }
    checkpoint.write_json(out / "diagnostics.json", {"data": data_label, "runs": summaries})
    page = _render(entries, overlays, out, data_label, X, fraction, eps)
    index_path = out / INDEX

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(page)

    checkpoint.atomic_write(index_path, write)
    return index_path


def _image_shape(run: Run) -> tuple[int, int] | None:
    shape = (run.config.get("data") or {}).get("image_shape")
    if shape and len(shape) == 2 and math.prod(shape) == run.model.config.n_features:
        return (int(shape[0]), int(shape[1]))
    return None


def _run_figures(run: Run, X: np.ndarray | None, figure_dir: Path, stem: str, n_points: int, k: int) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    if run.history:
        figures["learning curves"] = plots.learning_curves(run.history, figure_dir / f"{stem}_learning_curves.png")
    shape = _image_shape(run)
    if shape is None:
        return figures
    weight = input_filters(run.model)
    if weight is not None:  # dense models only: a conv encoder's first layer is not one image per unit
        figures["filters"] = plots.filters(weight.detach().cpu().numpy(), shape, figure_dir / f"{stem}_filters.png")
    if X is not None:
        with torch.no_grad():
            X_hat = run.model(torch.as_tensor(X[:10], dtype=torch.float32)).numpy()
        figures["reconstructions"] = plots.reconstructions(
            X[:10], X_hat, shape, figure_dir / f"{stem}_reconstructions.png"
        )
        points = X[:n_points]
        with torch.no_grad():  # the code width, whatever the architecture (a stack's is its last layer's)
            width = run.model.encoder(torch.as_tensor(points[:1], dtype=torch.float32)).shape[1]
        k = min(k, width, run.model.config.n_features)
        found = tangents(run.model.encoder, points, k)
        figures["tangents"] = plots.tangents(
            points, found.vectors, shape, figure_dir / f"{stem}_tangents.png", singular_values=found.singular_values
        )
    return figures


def _overlay_figures(entries: list[_Entry], figure_dir: Path, fraction: float, eps: float) -> dict[str, Path]:
    measured = [e for e in entries if e.diagnostics is not None]
    if not measured:
        return {}
    figures = {
        "Jacobian spectrum": plots.spectrum(
            {e.label: average_spectrum(e.diagnostics.spectra) for e in measured},
            figure_dir / "spectrum.png",
            fraction=fraction,
        ),
        "contraction curves": plots.contraction_curves(
            {e.label: e.diagnostics.contraction for e in measured}, figure_dir / "contraction.png"
        ),
    }
    saturated = {e.label: e.diagnostics.saturation for e in measured if e.diagnostics.saturation is not None}
    if saturated:
        figures["saturation"] = plots.saturation_histogram(saturated, figure_dir / "saturation.png", eps=eps)
    return figures


# --- HTML ---------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } tr.differs td { background: #fff6d5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.runs { display: grid; grid-template-columns: repeat(var(--n), minmax(0, 1fr)); gap: 1rem; }
figure { margin: 0.5rem 0; } figcaption { font-size: 0.85rem; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
p.note { font-size: 0.85rem; color: #555; max-width: 60rem; }
"""

_DEFINITIONS = (
    "Effective dimension: per point, the number of singular values of J_f(x) above {fraction:g} × that point's "
    "largest, averaged over points. Contraction ratio: mean ‖f(x+δ) − f(x)‖/‖δ‖ for ‖δ‖ = r along random "
    "directions (isotropic) or towards other data points (data); the table shows the smallest r. Saturation: "
    "percentage of hidden units within {eps:g} of a bound of the activation's range."
)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, sub in value.items():
            flat.update(_flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return flat
    return {prefix: value}


def _comparison_table(rows: dict[str, list[Any]], labels: list[str]) -> str:
    """Rows of values, one column per run; rows where runs differ are highlighted."""
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    body = []
    for key, values in rows.items():
        cells = [_format(v) for v in values]
        differs = len(labels) > 1 and len(set(cells)) > 1
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)
        td = '<td class="num">' if numeric else "<td>"
        body.append(
            f"<tr{' class=differs' if differs else ''}><th>{html.escape(key)}</th>"
            + "".join(f"{td}{html.escape(c)}</td>" for c in cells)
            + "</tr>"
        )
    return f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"


def _rows(dicts: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return {k: [d.get(k) for d in dicts] for k in keys}


def _figure(path: Path, out: Path, caption: str) -> str:
    src = html.escape(path.relative_to(out).as_posix())
    return f'<figure><img src="{src}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _render(
    entries: list[_Entry],
    overlays: dict[str, Path],
    out: Path,
    data_label: str | None,
    X: np.ndarray | None,
    fraction: float,
    eps: float,
) -> str:
    labels = [e.label for e in entries]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>contractive report: {html.escape(', '.join(labels))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>contractive report: {html.escape(', '.join(labels))}</h1>",
    ]
    if X is not None:
        where = f" from {html.escape(data_label)}" if data_label else ""
        parts.append(f"<p>Diagnostics measured on {X.shape[0]} points{where}.</p>")
    else:
        parts.append("<p>No data given: Jacobian diagnostics are not shown (pass --data).</p>")

    if any(e.diagnostics for e in entries):
        keep = ("effective_dimension", "effective_dimension_std", "largest_singular_value", "jacobian_frobenius")
        keep += ("contraction_isotropic_smallest_r", "contraction_data_smallest_r", "saturation_percent")
        diag_rows = [
            {k: v for k, v in (e.diagnostics.summary() if e.diagnostics else {}).items() if k in keep} for e in entries
        ]
        parts += ["<h2>Diagnostics</h2>", _comparison_table(_rows(diag_rows), labels)]
        parts.append(f'<p class="note">{html.escape(_DEFINITIONS.format(fraction=fraction, eps=eps))}</p>')
        parts += [_figure(path, out, name) for name, path in overlays.items()]

    parts += ["<h2>Final metrics</h2>", _comparison_table(_rows([e.run.metrics for e in entries]), labels)]

    per_run_names: list[str] = []
    for e in entries:
        per_run_names += [n for n in e.figures if n not in per_run_names]
    for name in per_run_names:
        parts.append(f"<h2>{html.escape(name.capitalize())}</h2>")
        parts.append(f'<div class="runs" style="--n: {len(entries)}">')
        for e in entries:
            cell = (
                _figure(e.figures[name], out, f"{e.label}: {name}") if name in e.figures else "<p>(not available)</p>"
            )
            parts.append(f"<div>{cell}</div>")
        parts.append("</div>")

    configs = [_flatten("", e.run.config) for e in entries]
    parts += ["<h2>Configuration</h2>", _comparison_table(_rows(configs), labels)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
