"""The sign of a cell is decided across seeds: the sequential test over seeds, its guarantee proved by simulation
(no false stop beyond alpha on a null whose pairs have transient, seed-specific gaps), its power on a true gap,
and the stop requests that stop a cell's pairs together."""

import numpy as np
import pytest
from scipy import stats as st

from aot_ray import signs
from aot_ray.spec import SignStopSpec
from aot_ray.stats import SignState, seed_sign_look, seed_sign_sequence, spend


def test_one_seed_never_decides_and_agreeing_seeds_do():
    assert seed_sign_look([0.3], 1, 0.05)[3] == 0  # one seed: no interval, undetermined
    m, lo, hi, sign = seed_sign_look([0.020, 0.021, 0.019, 0.022], 1, 0.05)
    assert sign == 1 and lo > 0 and lo < m < hi
    assert seed_sign_look([0.02, -0.01, 0.03], 1, 0.05)[3] == 0  # seeds disagree: undetermined
    assert seed_sign_look([-0.020, -0.021, -0.019], 1, 0.05)[3] == -1
    # the same seeds decide at look 1 but not at look 50, where less alpha is left to spend
    d = [0.02, 0.023, 0.018]
    assert seed_sign_look(d, 1, 0.05)[3] == 1 and seed_sign_look(d, 50, 0.05)[3] == 0


def test_sequence_tracks_since_when_a_sign_holds():
    looks = [(100, [0.01, -0.01, 0.0]), (200, [0.02, 0.021, 0.0205]), (300, [0.03, 0.031, 0.0305]),
             (400, [-0.03, -0.031, -0.0305])]
    states = seed_sign_sequence(looks, 0.05)
    assert [s.sign for s in states] == [0, 1, 1, -1]
    assert [s.established_at for s in states] == [None, 200, 200, 400]
    assert [s.n for s in states] == [3, 3, 3, 3] and [s.look for s in states] == [1, 2, 3, 4]
    assert signs.word(states) == "backward easier (the other sign held earlier in training)"
    assert signs.word(seed_sign_sequence([(10, [0.5])])) == "undetermined (1 seed)"


def simulate(n_sweeps, seeds, gap, *, looks=16, first=4, transient=0.03, persistent=0.005, noise=0.002,
             tail_df=None, seed=0):
    """Per sweep one cell: delta of seed i at evaluation j = gap + g_i exp(-j / 4) + b_i + e_ij, with a transient
    seed-specific gap g_i, a persistent seed effect b_i (both zero mean across seeds) and AR(1) noise e."""
    rng = np.random.default_rng(seed)
    j = np.arange(1, looks + 1)
    draw = (lambda size: rng.standard_t(tail_df, size) / np.sqrt(tail_df / (tail_df - 2))) if tail_df else \
        (lambda size: rng.standard_normal(size))
    g = transient * draw((n_sweeps, seeds, 1))
    b = persistent * draw((n_sweeps, seeds, 1))
    e = np.zeros((n_sweeps, seeds, looks))
    e[..., 0] = rng.standard_normal((n_sweeps, seeds))
    for k in range(1, looks):
        e[..., k] = 0.8 * e[..., k - 1] + 0.6 * rng.standard_normal((n_sweeps, seeds))
    d = gap + g * np.exp(-j / 4) + b + noise * e
    return d[..., first - 1 :]  # the looks start at `after` x steps (here the 4th of 16 evaluations)


def stop_rates(d, alpha, consecutive=1, planned=True):
    """(rate of stops with a positive sign, with a negative sign) under the sequential test over seeds, vectorised:
    the same arithmetic as `seed_sign_look` at every look (alpha over the known looks, or 6 alpha / (pi^2 k^2))."""
    n_sweeps, n, looks = d.shape
    k = np.arange(1, looks + 1)
    crit = st.t.ppf(1 - np.array([spend(alpha, i, looks if planned else None) for i in k]) / 2, n - 1)
    m = d.mean(axis=1)
    se = d.std(axis=1, ddof=1) / np.sqrt(n)
    sign = np.where(m - crit * se > 0, 1, np.where(m + crit * se < 0, -1, 0))
    stopped = np.zeros(n_sweeps, dtype=int)
    for i in range(consecutive - 1, looks):
        run = sign[:, i - consecutive + 1 : i + 1]
        hit = (stopped == 0) & (run != 0).all(axis=1) & (run == run[:, :1]).all(axis=1)
        stopped[hit] = sign[hit, i]
    return float((stopped == 1).mean()), float((stopped == -1).mean())


def test_vectorised_rule_is_the_library_rule():
    d = simulate(20, 4, 0.01)
    for s in range(20):
        for planned in (True, False):
            states = seed_sign_sequence([(i, d[s, :, i]) for i in range(d.shape[2])], 0.05,
                                        d.shape[2] if planned else None)
            first = next((x.sign for x in states if x.sign), 0)
            pos, neg = stop_rates(d[s : s + 1], 0.05, planned=planned)
            assert first == (1 if pos else -1 if neg else 0)


@pytest.mark.parametrize("seeds", [3, 5, 10])
@pytest.mark.parametrize("tail_df", [None, 4])
@pytest.mark.parametrize("planned", [True, False])
def test_no_false_stop_beyond_alpha_on_a_null_with_transient_seed_gaps(seeds, tail_df, planned):
    """2000 simulated sweeps of a cell with no arrow (zero mean over seeds at every look) but large transient
    seed-specific gaps, normal or heavy-tailed (t with 4 df): the test stops (declares any sign) in at most alpha of
    them. A test whose unit were a pair's windows stops almost always: every pair has a real, seed-specific gap."""
    alpha = 0.05
    d = simulate(2000, seeds, 0.0, tail_df=tail_df, seed=seeds)
    pos, neg = stop_rates(d, alpha, planned=planned)
    assert pos + neg <= alpha, (pos, neg)
    # the window-level view: each pair on its own, its gap measured to +-0.001 (many windows)
    window_z = np.abs(d[:, 0, :]) / 0.001
    crit = st.norm.ppf(1 - np.array([spend(alpha, i) for i in range(1, d.shape[2] + 1)]) / 2)
    assert (window_z > crit).any(axis=1).mean() > 0.8


@pytest.mark.parametrize("seeds,want", [(3, 0.15), (5, 0.38), (10, 0.93)])
def test_a_true_gap_is_found_with_its_sign(seeds, want, capsys):
    """Power: a persistent gap of 0.01 (twice the seeds' persistent spread) under the same transient gaps; alpha
    split over the 13 known looks (measured: 18%, 45%, 97% of 2000 sweeps for 3, 5, 10 seeds)."""
    d = simulate(2000, seeds, 0.01, seed=100 + seeds)
    pos, neg = stop_rates(d, 0.05)
    with capsys.disabled():
        print(f"\npower, {seeds} seeds, gap 0.01: stopped forward-easier in {pos:.1%}, backward in {neg:.2%}")
    assert pos >= want and neg <= 0.025


def state_list(*sign_values, every=100):
    return [SignState(k, k * every, 0.0, 0.0, 0.0, 3, s, None) for k, s in enumerate(sign_values, start=1)]


def test_stop_step_needs_consecutive_looks_of_one_sign():
    assert signs.stop_step(state_list(0, 1, 1, 1), looks=2) == 300
    assert signs.stop_step(state_list(0, 1, 1, 1), looks=1) == 200
    assert signs.stop_step(state_list(1, -1, 1, 0), looks=2) is None  # the sign never held twice
    assert signs.stop_step([], looks=1) is None


def test_looks_start_at_after_and_use_the_pairs_evaluated():
    curves = {"p0": ("c", {100: 2.0, 200: 1.9, 300: 1.8}, {100: 2.1, 200: 1.95, 300: 1.85}),
              "p1": ("c", {100: 2.0, 200: 1.9, 300: 1.8}, {100: 2.0, 200: 1.95}),
              "q0": ("d", {100: 1.0}, {100: 1.0})}
    seqs = signs.sequences(curves, start={"c": 200})
    assert [(s.step, s.n) for s in seqs["c"]] == [(200, 2), (300, 1)]
    assert seqs["c"][0].look == 1 and seqs["d"][0].n == 1
    cells = {"c": {"p0": {d: {"steps": 1000, "eval_every": 100} for d in ("forward", "backward")}},
             "e": {"p0": {d: {"steps": 1050, "eval_every": 100} for d in ("forward", "backward")}}}
    first, planned = signs.plan_looks(cells, 0.25)
    assert first == {"c": 250, "e": 262.5} and planned == {"c": 8, "e": 9}  # 300..1000; 300..1000 and 1050


def test_a_live_look_waits_for_every_planned_seed_of_the_cell():
    """Two seeds that agree closely at step 200 would settle the sign on their own; the third seed has not
    evaluated 200 yet (and the fourth has not started), so 200 is not a look while they are awaited, and a finished
    pair that ended before a step does not block it."""
    agree = {100: 2.0, 200: 1.9}
    curves = {"p0": ("c", agree, {100: 2.1, 200: 2.0}), "p1": ("c", agree, {100: 2.1, 200: 2.0001}),
              "p2": ("c", {100: 2.0}, {100: 2.0})}
    records = [{"pair_key": p, "cell_key": "c", "direction": d, "finished": False}
               for p in ("p0", "p1", "p2") for d in ("forward", "backward")]
    cells = signs.cells_of(records)
    waiting = signs.waiting_pairs(cells, {"c": {"p0", "p1", "p2", "p3"}})
    assert waiting == {"c": {"p0", "p1", "p2", "p3"}}
    assert signs.sequences(curves, alpha=0.5, waiting=waiting) == {"c": []}  # p3 has reported nothing
    waiting["c"].discard("p3")  # say it finished (failed runs are not in the records: those stay awaited)
    (state,) = signs.sequences(curves, alpha=0.5, waiting=waiting)["c"]
    assert (state.step, state.n) == (100, 3)
    free = signs.sequences(curves, alpha=0.5)["c"]  # the report (every run finished) uses what is there
    assert [(s.step, s.n) for s in free] == [(100, 3), (200, 2)] and free[1].sign == 1  # what the bug stopped on
    for r in records:
        r["finished"] = r["pair_key"] == "p2"
    assert signs.waiting_pairs(signs.cells_of(records), {"c": {"p0", "p1", "p2"}}) == {"c": {"p0", "p1"}}


def FakeReader():
    """A reader that records the tags set through its client (the report tests' fake, with nothing to read)."""
    from test_aggregate import FakeReader as Reader

    return Reader({}, {})


def _cell(*pairs_state):
    def side(p, d, finished, stop_at):
        return {"run_id": f"{p}-{d}", "trial_id": f"{p}-{d}", "finished": finished, "steps": 1000, "stop_at": stop_at}

    return {p: {"forward": side(p, "fw", f, s), "backward": side(p, "bw", f, s)} for p, f, s in pairs_state}


def test_a_settled_cell_stops_all_its_pairs_together():
    seq = {"c": state_list(0, 1, 1, 1)}
    cells = {"c": _cell(("s0", False, None), ("s1", True, None), ("s2", False, None))}
    reader = FakeReader()
    assert signs.request_stops(reader, seq, cells, SignStopSpec(looks=2)) == {"c": 300}
    assert set(reader.client.tags) == {(f"s{i}-{d}", "aot.stop_at") for i in range(3) for d in ("fw", "bw")}
    assert set(reader.client.tags.values()) == {"300"}
    assert signs.request_stops(reader, seq, cells, SignStopSpec(looks=2)) == {}  # already asked
    # every run finished before the cell settled: nothing to stop
    assert signs.request_stops(FakeReader(), seq, {"c": _cell(("s0", True, None))}, SignStopSpec(looks=1)) == {}
    # a request written on part of the cell is completed with the same step
    half = {"c": _cell(("s0", False, 200), ("s1", False, None))}
    r = FakeReader()
    assert signs.request_stops(r, seq, half, SignStopSpec()) == {"c": 200}
    assert r.client.tags == {("s1-fw", "aot.stop_at"): "200", ("s1-bw", "aot.stop_at"): "200"}
    # one seed, however clear its gap, never stops a cell
    lone = {"c": [SignState(k, 100 * k, 0.1, float("nan"), float("nan"), 1, 0, None) for k in (1, 2, 3)]}
    assert signs.request_stops(FakeReader(), lone, {"c": _cell(("s0", False, None))}, SignStopSpec(looks=1)) == {}


def _order_cell(order, *pairs_state):
    """A comparison cell of `order` against forward: the forward runs are the base cell's (shared by its orders)."""
    def side(p, d, finished, stop_at):
        return {"run_id": f"{p}-{d}", "trial_id": f"{p}-{d}", "finished": finished, "steps": 1000, "stop_at": stop_at,
                "direction": d}

    return {f"{p}~{order}" if order != "backward" else p: {"forward": side(p, "forward", f, s),
                                                           "other": side(p, order, f, s)} for p, f, s in pairs_state}


def test_a_cell_with_orders_stops_once_every_order_is_settled_at_the_latest_step():
    """One forward trial serves backward and middle_out: it (and the cell) stops only when both comparisons are
    settled, at the later of their steps; until a planned order has looks at all, nothing stops."""
    cells = {"c": _order_cell("backward", ("s0", False, None), ("s1", False, None)),
             "c~middle_out": _order_cell("middle_out", ("s0", False, None), ("s1", False, None))}
    expected = {"c": {"s0", "s1"}, "c~middle_out": {"s0~middle_out", "s1~middle_out"},
                "c~even_odd": {"s0~even_odd", "s1~even_odd"}}
    seq = {"c": state_list(1, 1, 1, 1), "c~middle_out": state_list(0, 0, 1, 1)}
    assert signs.request_stops(FakeReader(), seq, cells, SignStopSpec(looks=2), expected) == {}  # even_odd: none yet
    expected.pop("c~even_odd")
    seq["c~middle_out"] = state_list(0, 0, 0, -1)
    assert signs.request_stops(FakeReader(), seq, cells, SignStopSpec(looks=2), expected) == {}  # not settled yet
    seq["c~middle_out"] = state_list(0, 0, -1, -1)
    reader = FakeReader()
    assert signs.request_stops(reader, seq, cells, SignStopSpec(looks=2), expected) == {"c": 400, "c~middle_out": 400}
    assert set(reader.client.tags) == {(f"s{i}-{d}", "aot.stop_at") for i in range(2)
                                       for d in ("forward", "backward", "middle_out")}
    assert set(reader.client.tags.values()) == {"400"}  # backward settled at 200, middle_out at 400: the latest


def test_looks_of_an_order_go_on_its_own_run_and_forward_carries_backwards():
    from aot_ray.signs.watch import Watcher

    class Client:
        def __init__(self):
            self.logged = {}

        def log_batch(self, run_id, metrics):
            self.logged.setdefault(run_id, []).extend(metrics)

    class Reader:
        client = Client()

    w = Watcher(Reader())
    cells = {"c": _order_cell("backward", ("s0", False, None)),
             "c~middle_out": _order_cell("middle_out", ("s0", False, None))}
    w.logged = {r: set() for r in ("s0-forward", "s0-backward", "s0-middle_out")}
    w._log({"c": state_list(1, 1), "c~middle_out": state_list(-1, -1)}, cells)
    signs_on = {run: {m.value for m in ms if m.key == "aot_sign"} for run, ms in Reader.client.logged.items()}
    assert signs_on == {"s0-forward": {1.0}, "s0-backward": {1.0}, "s0-middle_out": {-1.0}}
