"""The HTML report: its content, and that it renders in a real (headless) Chromium with every image."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from contractive import ModelConfig, TrainConfig, load_dataset, train_run
from contractive.diagnostics import diagnose
from contractive.errors import ContractiveError
from contractive.report import write_report

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]

# Injected into a copy of the page: records failed resources, script errors and console errors, then, after
# the load event (all images settled), writes every <img>'s state into the DOM for --dump-dom to print.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => {
  const t = e.target;
  window.__errors.push(t && t.src ? "failed to load " + t.src : String(e.message));
}, true);
window.addEventListener("unhandledrejection", e => window.__errors.push("rejection: " + e.reason));
const originalError = console.error;
console.error = (...args) => { window.__errors.push("console: " + args.join(" ")); originalError(...args); };
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => ({src: i.getAttribute("src"), complete: i.complete,
                                                       width: i.naturalWidth, height: i.naturalHeight}));
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({images, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def image_sources(page: str) -> list[str]:
    parser = _Images()
    parser.feed(page)
    return parser.sources


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A plain AE and a CAE trained briefly on 600 digits; the diagnostics use later digits."""
    data = load_dataset("digits", limit=600)
    paths = []
    for name, lam in (("ae", 0.0), ("cae", 0.5)):
        out = tmp_path_factory.mktemp("runs") / name
        config = ModelConfig(n_features=64, hidden=16, lam=lam)
        train_run(data, config, TrainConfig(epochs=3, seed=0), out, progress=False, figures=False)
        paths.append(out)
    return paths, load_dataset("digits").X[1600:1700]


def test_report_holds_config_metrics_diagnostics_and_all_figures(two_runs, tmp_path):
    paths, X = two_runs
    index = write_report(paths, tmp_path / "report", X=X, data_label="digits 1600–1699")
    page = index.read_text(encoding="utf-8")
    sources = image_sources(page)
    expected = {"spectrum.png", "contraction.png", "saturation.png"}
    for run in ("run1", "run2"):
        expected |= {f"{run}_{kind}.png" for kind in ("learning_curves", "filters", "reconstructions", "tangents")}
    assert {Path(s).name for s in sources} == expected
    for src in sources:
        assert (index.parent / src).stat().st_size > 1000
    # Runs side by side: one column per run, differing config rows highlighted (λ differs).
    assert re.search(r'<tr class=differs><th>model\.lam</th><td class="num">0</td><td class="num">0\.5</td>', page)
    assert "val_reconstruction_error" in page and "Effective dimension" in page
    assert "<script" not in page and "http" not in page  # offline, self-contained
    saved = json.loads((index.parent / "diagnostics.json").read_text())
    for path in paths:
        from contractive import load_run

        expected_summary = diagnose(load_run(path).model.encoder, X).summary()
        assert saved["runs"][path.name]["effective_dimension"] == pytest.approx(expected_summary["effective_dimension"])


def test_report_rejects_mismatched_data(two_runs, tmp_path):
    paths, X = two_runs
    with pytest.raises(ContractiveError, match="features"):
        write_report(paths, tmp_path / "r", X=X[:, :10])


def test_report_renders_in_headless_chromium(two_runs, tmp_path, cli):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); cannot check the page renders")
    paths, _ = two_runs
    out = tmp_path / "report"
    made = cli("report", *map(str, paths), "--out", str(out), "--data", "digits", "--skip", "1600", "--n-points", "80")
    assert made.returncode == 0, made.stderr
    page = (out / "index.html").read_text(encoding="utf-8")
    n_images = len(image_sources(page))
    assert n_images == 11
    state = probe_in_chromium(browser, out, page, tmp_path / "profile")
    assert state["errors"] == []
    assert len(state["images"]) == n_images
    broken = [i["src"] for i in state["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert broken == []

    # The probe itself must be able to fail: a page with a missing figure is caught.
    missing = page.replace("figures/spectrum.png", "figures/no-such-figure.png")
    state = probe_in_chromium(browser, out, missing, tmp_path / "profile2")
    assert [i["width"] for i in state["images"] if i["src"].endswith("no-such-figure.png")] == [0]
    assert any("no-such-figure.png" in e for e in state["errors"])


def probe_in_chromium(browser: str, out: Path, page: str, profile: Path) -> dict:
    """Open ``page`` (saved beside the report, so relative paths resolve) in headless Chromium; return the probe."""
    probe_page = out / "probe.html"
    probe_page.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom"]
    done = subprocess.run([*command, probe_page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe output from chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))
