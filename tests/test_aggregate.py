"""The AoT arithmetic and pairing on known numbers."""

import csv
import io
import math

import pytest

from aot_ray.aggregate import PAIR_COLUMNS, delta, pair_rows, summarize, to_csv


def row(tid, pair, cell, direction, loss, seed=0, dataset="d"):
    return {"trial_id": tid, "pair_key": pair, "cell_key": cell, "direction": direction, "dataset": dataset,
            "model": "tiny", "context_length": 16, "seed": seed, "n_params": 100, "val_loss": loss}


def test_delta_known_values():
    assert delta(1.0, 1.0) == 0.0
    assert delta(2.0, 3.0) == pytest.approx(1.0 / 2.5)
    assert delta(3.0, 2.0) == pytest.approx(-0.4)
    assert delta(4.0, 4.04) == pytest.approx(0.04 / 4.02)


def test_pairs_seed_means_and_orphans():
    rows = [
        row("a-fw", "p0", "c", "forward", 2.0, seed=0), row("a-bw", "p0", "c", "backward", 3.0, seed=0),
        row("b-fw", "p1", "c", "forward", 2.0, seed=1), row("b-bw", "p1", "c", "backward", 2.0, seed=1),
        row("c-fw", "p2", "c2", "forward", 1.0, seed=0),  # partner missing
        row("d-fw", "p3", "c3", "forward", float("nan")), row("d-bw", "p3", "c3", "backward", 1.0),
    ]
    pairs, orphans = pair_rows(rows)
    assert [p["pair_key"] for p in pairs] == ["p0", "p1"]
    assert pairs[0]["delta"] == pytest.approx(0.4) and pairs[1]["delta"] == 0.0
    assert orphans == ["c-fw", "d-bw"]
    (cell,) = summarize(pairs)
    assert cell["n_seeds"] == 2
    assert cell["delta_mean"] == pytest.approx(0.2)
    assert cell["delta_std"] == pytest.approx(math.sqrt(0.08))
    assert cell["L_fw_mean"] == 2.0 and cell["L_bw_mean"] == 2.5


def test_csv_has_the_documented_columns():
    pairs, _ = pair_rows([row("a", "p", "c", "forward", 1.0), row("b", "p", "c", "backward", 1.1)])
    rows = list(csv.DictReader(io.StringIO(to_csv(pairs, PAIR_COLUMNS))))
    assert {"pair_key", "L_fw", "L_bw", "delta"} <= set(rows[0])
    assert float(rows[0]["delta"]) == pytest.approx(0.1 / 1.05)
