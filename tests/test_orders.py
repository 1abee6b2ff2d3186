"""Token orders: the named permutations against README's table, every order scoring exactly forward's tokens,
random orders drawn from their own seed, custom permutations, the checks at load, and the report comparing each
order with forward (backward as before)."""

import re
from pathlib import Path

import numpy as np
import pytest

from aot_ray.aggregate import pair_rows, summarize
from aot_ray.data.windows import orient, with_bos, with_direction
from aot_ray.errors import SpecError
from aot_ray.spec import expand, flatten, parse_sweep
from aot_ray.spec.orders import NAMED, PERMUTATIONS, QUARTER, permutation

from specs import tiny_sweep

ROOT = Path(__file__).resolve().parent.parent


def readme_table() -> dict[str, list[int]]:
    """The docs' table of the named orders at T = 8 (docs/guide/designs.md)."""
    rows = re.findall(r"^\| (\w+) \| ([\d ]+) \|$", (ROOT / "docs" / "guide" / "designs.md").read_text(), re.M)
    return {name: [int(x) for x in perm.split()] for name, perm in rows}


def test_the_named_orders_are_readmes_table():
    table = readme_table()
    assert set(table) == set(NAMED)
    for name, perm in table.items():
        assert permutation(name, 8).tolist() == perm, name


@pytest.mark.parametrize("context", [8, 12, 16, 32, 64])
@pytest.mark.parametrize("order", PERMUTATIONS)
def test_every_order_scores_exactly_the_tokens_forward_scores(order, context):
    if (order in QUARTER and context % 4) or (order == "random_chunk" and context % 8):
        pytest.skip("refused at load: the order does not divide this context")
    rng = np.random.default_rng(context)
    windows = rng.integers(1, 50, size=(5, context))
    perm = permutation(order, context, seed=3)
    assert sorted(perm.tolist()) == list(range(context))  # a permutation of the positions
    inputs, targets = with_bos(orient(windows, perm), bos_id=0)
    assert (inputs[:, 0] == 0).all() and (inputs[:, 1:] == targets[:, :-1]).all()  # BOS first, teacher forcing
    for w, t in zip(windows, targets):  # every token of the window predicted once: the same multiset as forward
        assert sorted(t.tolist()) == sorted(w.tolist()) and t.tolist() == w[perm].tolist()


def test_the_joint_model_alternates_directions_each_led_by_its_token_and_scores_every_token():
    windows = np.random.default_rng(0).integers(1, 50, size=(6, 10))
    backward = np.arange(6) % 2 == 1
    inputs, targets = with_direction(windows, backward, first_id=50)
    assert inputs[:, 0].tolist() == [50, 51] * 3  # forward's token, backward's token, in turn
    assert (targets[~backward] == windows[~backward]).all() and (targets[backward] == windows[backward, ::-1]).all()
    assert (inputs[:, 1:] == targets[:, :-1]).all()  # every token of the window predicted


def test_the_joint_model_trains_on_forwards_budget_and_logs_each_direction(tmp_path):
    from aot_ray.data.prepare import prepare
    from aot_ray.train import RecordingTracker, train

    raw = tiny_sweep("joint", train={"steps": 10, "eval_every": 5, "checkpoint_every": 0},
                     grid={"order": ["forward", "joint"]})
    trials = {t.direction: t for t in expand(parse_sweep(raw))}
    data = prepare(trials["joint"].data, tmp_path / "r")[0]
    runs = {o: (RecordingTracker(), t) for o, t in trials.items()}
    results = {o: train(t, m, data=data, workdir=tmp_path / o) for o, (m, t) in runs.items()}
    assert results["joint"].tokens == results["forward"].tokens  # the same token budget
    m = runs["joint"][0]
    fw, bw = m.metrics["final_val_loss_forward"][-1][1], m.metrics["final_val_loss_backward"][-1][1]
    assert results["joint"].val_loss == pytest.approx((fw + bw) / 2)
    assert [s for s, _ in m.metrics["val_loss_backward"]] == [5, 10]
    assert results["joint"].n_params > results["forward"].n_params  # the two direction tokens' embeddings
    assert "val_loss_forward" not in runs["forward"][0].metrics


def test_backward_is_the_reversal_as_before():
    w = np.arange(24).reshape(3, 8)
    assert (orient(w, permutation("backward", 8)) == orient(w, "backward")).all()


def test_random_orders_come_from_their_seed_and_multiply_by_it():
    raw = tiny_sweep("rand", grid={"direction": ["forward", "uniform_random", "random_chunk"], "order_seed": [0, 1]})
    trials = expand(parse_sweep(raw))
    got = sorted((t.direction, t.order_seed) for t in trials)
    assert got == [("forward", 0), ("random_chunk", 0), ("random_chunk", 1), ("uniform_random", 0),
                   ("uniform_random", 1)]  # forward once: the order seed draws random orders only
    ur = {t.order_seed: t for t in trials if t.direction == "uniform_random"}
    assert ur[0].trial_id != ur[1].trial_id and flatten(ur[1])["order_seed"] == 1  # identity, and a param
    assert not np.array_equal(ur[0].permutation(), ur[1].permutation())
    assert np.array_equal(ur[1].permutation(), permutation("uniform_random", 32, seed=1))  # a function of the seed
    chunks = next(t for t in trials if t.direction == "random_chunk").permutation().reshape(-1, 8)
    assert (np.diff(chunks, axis=1) == 1).all()  # chunks of 8 kept forward


def test_forward_and_backward_keep_their_ids():
    plain = expand(parse_sweep(tiny_sweep("ids")))
    zoo = expand(parse_sweep(tiny_sweep("ids", grid={"order": ["forward", "backward", "middle_out"]})))
    assert {t.trial_id for t in plain} <= {t.trial_id for t in zoo}
    assert len({t.pair_key for t in zoo}) == 1  # one seed: the three trials share the pair of their cell and seed


def test_a_custom_order_reproduces_the_named_order_it_spells(tmp_path):
    from aot_ray.data.prepare import prepare
    from aot_ray.train import RecordingTracker, train

    spelled = permutation("middle_out", 32).tolist()
    (tmp_path / "mo.txt").write_text(" ".join(map(str, spelled)))
    raw = tiny_sweep("spell", train={"steps": 6, "eval_every": 6, "checkpoint_every": 0},
                     grid={"order": ["middle_out", "mine", "from_file"]})
    raw["orders"] = {"custom": {"mine": spelled, "from_file": str(tmp_path / "mo.txt")}}
    trials = {t.direction: t for t in expand(parse_sweep(raw))}
    assert trials["mine"].trial_id != trials["middle_out"].trial_id
    data = prepare(trials["mine"].data, tmp_path / "r")[0]
    losses = {o: train(t, RecordingTracker(), data=data, workdir=tmp_path / o).val_loss for o, t in trials.items()}
    assert losses["mine"] == losses["middle_out"] == losses["from_file"]


@pytest.mark.parametrize("change,message", [
    ({"grid": {"order": ["forward", "sideways"]}}, "grid.order[1]: unknown order 'sideways'"),
    ({"grid": {"order": ["forward"], "direction": ["backward"]}}, "grid.order: is the direction axis by another name"),
    ({"grid": {"order": ["forward", "mine"]}, "orders": {"custom": {"mine": [0, 1, 2]}}},
     "orders.custom.mine: has 3 positions; a window has 32 (context_length)"),
    ({"grid": {"order": ["forward", "mine"]}, "orders": {"custom": {"mine": [0] * 32}}},
     "orders.custom.mine: is not a permutation of 0..31"),
    ({"grid": {"order": ["forward", "random_chunk"], "context_length": [36]}},
     "grid.direction[1]: order random_chunk needs a context that is a multiple of its chunk (8), got 36"),
    ({"grid": {"order": ["forward", "quarter_end_in_concat"], "context_length": [30]}},
     "grid.direction[1]: order quarter_end_in_concat needs a context that is a multiple of 4, got 30"),
    ({"grid": {"order_seed": [-1]}}, "grid.order_seed[0]: must be a non-negative integer, got -1"),
    ({"orders": {"custom": {"backward": [0, 1]}}}, "orders.custom.backward: a custom order's name"),
    ({"orders": {"custom": {"f": "/no/such/file"}}}, "orders.custom.f: cannot read /no/such/file"),
])
def test_bad_orders_are_one_line_naming_the_field(change, message):
    raw = tiny_sweep("bad")
    raw["grid"].update(change.get("grid", {}))
    raw.update({k: v for k, v in change.items() if k != "grid"})
    with pytest.raises(SpecError) as err:
        parse_sweep(raw)
    assert str(err.value).startswith(message), str(err.value)


def _record(order: str, loss: float, seed: int = 0) -> dict:
    return {"trial_id": f"t-{order}-{seed}", "pair_key": f"p{seed}", "cell_key": "c", "direction": order,
            "dataset": "lin", "language": None, "arch": "gpt2", "model": "tiny", "context_length": 32, "seed": seed,
            "axes": {}, "val_loss": loss, "finished": True, "n_params": 1, "tokens": 1}


def test_each_order_is_compared_with_forward_and_backward_reads_as_before():
    rows = [_record(o, loss, s) for s in (0, 1) for o, loss in
            (("forward", 1.0), ("backward", 1.1), ("middle_out", 0.9 + s / 100))]
    pairs, orphans = pair_rows(rows)
    assert orphans == []
    by = {(p["order"], p["seed"]): p for p in pairs}
    bw, mo = by[("backward", 0)], by[("middle_out", 1)]
    assert (bw["pair_key"], bw["cell_key"], bw["L_bw"]) == ("p0", "c", 1.1)  # backward's keys as before
    assert (mo["pair_key"], mo["cell_key"], mo["L_fw"], mo["L_bw"]) == ("p1~middle_out", "c~middle_out", 1.0, 0.91)
    assert mo["delta"] == pytest.approx((0.91 - 1.0) / (0.5 * 1.91))
    cells = {c["cell_key"]: c for c in summarize(pairs)}
    assert set(cells) == {"c", "c~middle_out"}
    assert cells["c"]["direction"] == "forward easier" and cells["c~middle_out"]["direction"] == "middle_out easier"


def test_the_joint_model_is_its_own_kind_of_row_never_a_pair():
    from aot_ray.aggregate.tables import joint_rows

    rows = [_record("forward", 1.0), {**_record("joint", 1.05), "L_forward": 1.0, "L_backward": 1.1}]
    pairs, orphans = pair_rows(rows)
    assert pairs == [] and orphans == ["t-forward-0"]  # the joint model pairs with no forward trial
    (j,) = joint_rows(rows)
    assert (j["kind"], j["cell_key"], j["L_fw"], j["L_bw"]) == ("one model, both directions", "c~joint", 1.0, 1.1)
    cell = summarize([j, {**j, "seed": 1, "delta": j["delta"] + 0.01}])[0]
    assert cell["direction"] == "forward easier"


def test_an_order_without_its_forward_trial_is_an_orphan():
    pairs, orphans = pair_rows([_record("middle_out", 1.0)])
    assert pairs == [] and orphans == ["t-middle_out-0"]


def test_each_orders_final_loss_over_seeds_and_its_figure(tmp_path):
    from aot_ray.aggregate import sweep_plots
    from aot_ray.aggregate.tables import order_losses

    rows = [_record(o, loss + s / 10, s) for s in (0, 1) for o, loss in
            (("forward", 1.0), ("backward", 1.2), ("even_odd", 1.5))]
    pairs, _ = pair_rows(rows)
    got = {r["order"]: r for r in order_losses(pairs)}
    assert list(got) == ["forward", "backward", "even_odd"]  # the reference first
    assert got["even_odd"]["loss_mean"] == pytest.approx(1.55) and got["forward"]["n_seeds"] == 2
    assert got["even_odd"]["loss_lo"] < 1.55 < got["even_odd"]["loss_hi"]  # a t interval over the two seeds
    assert [got[o]["rank"] for o in ("forward", "backward", "even_odd")] == [1, 2, 3]  # ranked by the mean loss
    assert order_losses([p for p in pairs if p["order"] == "backward"]) == []  # forward/backward: the pairs say it
    # a ranking names the claim it rests on: each order's comparison with forward over the cell's seeds
    rows = [_record(o, loss + s / 100, s) for s in (0, 1, 2) for o, loss in
            (("forward", 1.0), ("backward", 0.9), ("even_odd", 1.5), ("middle_out", (0.99, 1.01, 0.97)[s]))]
    pairs3, _ = pair_rows(rows)
    ranked = order_losses(pairs3, cells=summarize(pairs3))
    assert [(r["rank"], r["order"], r["vs_forward"]) for r in ranked] == [
        (1, "backward", "backward easier"), (2, "middle_out", "undetermined"), (3, "forward", "reference"),
        (4, "even_odd", "forward easier")]
    files = sweep_plots.order_losses(order_losses(pairs), tmp_path)
    assert sorted(f.name for f in files) == ["order_losses.png", "order_losses.svg"]
