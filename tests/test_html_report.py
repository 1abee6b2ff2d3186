"""report.html: the report's markdown as one self-contained page (figures inline, nothing fetched, raw HTML in
names escaped), and the headline that becomes the parent run's description in MLflow."""

from pathlib import Path

import numpy as np

from aot_ray.aggregate.html_page import page
from aot_ray.aggregate.text import headline


def test_the_page_inlines_its_figures_and_fetches_nothing(tmp_path: Path):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
    (tmp_path / "curves_1.png").write_bytes(png)
    md = ("# Arrow of Time report: s\n\n## Cells\n\n| dataset | delta |\n|---|---|\n| primes | +0.07 |\n\n"
          "Name <script>alert(1)</script> here.\n\n![curves_1](curves_1.png)\n\n![gone](missing.png)\n")
    html = page(md, tmp_path, "Arrow of Time report: s")
    assert html.startswith("<!DOCTYPE html>") and "<title>Arrow of Time report: s</title>" in html
    assert "<table>" in html and "<td>primes</td>" in html
    assert 'src="data:image/png;base64,' in html
    assert "<script>" not in html and "&lt;script&gt;" in html  # a name from a YAML is text, never markup
    assert 'src="missing.png"' in html  # a figure that is not there stays a plain reference
    assert "http://" not in html and "https://" not in html and "<link" not in html


def test_headline_names_each_claims_level_and_each_cell():
    cells = [{"cell_key": "c1", "dataset": "primes", "model": "tiny", "context_length": 19, "axes": {},
              "n_seeds": 4, "delta_mean": 0.0863, "delta_lo": 0.0697, "delta_hi": 0.103, "direction": "forward easier"},
             {"cell_key": "c2~even_odd", "order": "even_odd", "dataset": "linear", "model": "tiny",
              "context_length": 32, "axes": {"model.position": "rope"}, "n_seeds": 4, "delta_mean": -0.01,
              "delta_lo": float("nan"), "delta_hi": np.nan, "direction": "undetermined"}]
    result = {"conf": 0.95, "rows": [{}] * 16, "running": [], "pairs": [{}] * 8, "summary": cells, "across": [],
              "trends": [], "joint_summary": []}
    text = headline(result, "s")
    assert "**Arrow of Time: s**" in text and "16 finished trials" in text
    assert "within a cell, over 4 seeds: 1 of 2 cells state a direction" in text
    assert "- primes, tiny, context 19: +8.6% [+7.0%, +10.3%], 4 seed(s): **forward easier**" in text
    assert "linear, tiny, context 32, position rope, forward vs even_odd: -1.0% [n/a, n/a]" in text
    assert "report/report.html" in text
