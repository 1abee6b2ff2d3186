"""The MLflow UI as a researcher opens it, in a real browser: a sweep runs through Ray Tune into SQLite, a real
`mlflow ui` serves it on 127.0.0.1, and headless Chromium (Debian's package) renders the experiment page aot-ray
points at (the training-runs layout, with the sweep's parent run), the parent run's overview (its description is
the report's headline), and report.html (text and a figure that decodes). Skips where Chromium is absent."""

import os
import subprocess
import sys

import pytest
import yaml

from aot_ray import sweep, tracking
from aot_ray.tracking.store import experiment_page

from browser import Browser, answers, chromium
from ports import free_port

# .ci/run installs Chromium and sets AOT_BROWSER_TEST=require: there it must run, not skip
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(chromium() is None and os.environ.get("AOT_BROWSER_TEST") != "require",
                                 reason="headless Chromium is not installed (apt: chromium)")]

RAW = {
    "name": "ui-browser",
    "data": {"primes": {"kind": "primes", "digits": 2, "n_samples": 250}},
    "defaults": {"optim": {"lr": 3e-3, "warmup_steps": 2},
                 "train": {"steps": 30, "batch_size": 8, "eval_every": 10, "log_every": 5, "checkpoint_every": 30},
                 "resources": {"cpu": 1}},
    "grid": {"dataset": ["primes"], "model": ["micro"], "seed": [0, 1]},
    "run": {"max_concurrent_trials": 2},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_local):
    """(UI base address, experiment id, parent run id) of a finished sweep served by a real `mlflow ui`."""
    tmp = tmp_path_factory.mktemp("ui")
    f = tmp / "s.yaml"
    f.write_text(yaml.safe_dump(RAW))
    uri = f"sqlite:///{tmp}/mlflow.db"
    out = sweep.run(sweep.resolve(str(f), tracking_uri=uri, storage=str(tmp / "r")), verbose=0, say=lambda _: None)
    assert len(out.ran) == 4 and not out.failed
    parent = tracking.SweepRuns(uri, RAW["name"]).parent()
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                           "--port", str(port)], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                          env={**os.environ, "MLFLOW_ENABLE_WORKSPACES": "false"})
    base = f"http://127.0.0.1:{port}"
    if not answers(f"{base}/health", 120):
        ui.kill()
        pytest.fail("mlflow ui did not answer /health")
    try:
        yield base, parent.info.experiment_id, parent.info.run_id
    finally:
        ui.terminate()
        ui.wait(30)


def test_the_experiment_opens_as_training_runs_with_the_sweeps_parent(served):
    base, exp, _ = served
    with Browser() as b:
        text = b.page(experiment_page(base, exp), "document.body.innerText.includes('ui-browser')"
                                                  " && document.body.innerText.includes('matching run')",
                      "document.body.innerText")
    # the training workflow's navigation (runs, models, model registry), not the GenAI one (traces, judges)
    assert "Model registry" in text and "Judges" not in text and "Evaluation runs" not in text, text[:1500]
    assert "Runs" in text and "ui-browser" in text  # the parent run, its trials nested under it


def test_the_parent_runs_description_is_the_reports_headline(served):
    base, exp, run = served
    with Browser() as b:
        text = b.page(f"{base}/#/experiments/{exp}/runs/{run}?workflowType=machine_learning",
                      "document.body.innerText.includes('What each claim rests on')", "document.body.innerText")
    assert "Arrow of Time: ui-browser" in text and "within a cell, over 2 seeds" in text
    assert "report/report.html" in text


def test_report_html_shows_the_headline_and_a_figure_in_mlflows_viewer(served):
    """MLflow's artifact viewer previews report.html in a sandboxed frame: read inside it, the headline's text is
    there, its figures decode (inline, from the page itself) and nothing points outside."""
    base, exp, run = served
    with Browser() as b:
        seen = b.page(f"{base}/#/experiments/{exp}/runs/{run}/artifacts/report/report.html"
                      f"?workflowType=machine_learning",
                      "document.body && document.body.innerText.includes('Arrow of Time report')"
                      " && document.images.length > 0 && [...document.images].every(i => i.complete)",
                      "({text: document.body.innerText, "
                      "figures: [...document.images].filter(i => i.naturalWidth > 100).length, "
                      "external: [...document.querySelectorAll('[src],[href]')].filter("
                      "e => /^https?:/.test(e.getAttribute('src') || e.getAttribute('href') || '')).length})",
                      frame=True)
    assert "Arrow of Time report: ui-browser" in seen["text"] and "Replication: what each claim rests on" in seen["text"]
    assert seen["figures"] >= 1 and seen["external"] == 0
