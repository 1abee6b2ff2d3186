"""The sequential sign test over seeds on a sweep's cells (pure but for reading curves): records grouped into cells
and pairs, where the looks fall and how many there are, each cell's sequence of looks, the pairs a look waits for,
the step a cell stops at, the latest look in words. See the package's docstring for the rule."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .. import stats
from ..spec.schema import SignStopSpec, TrialSpec
from ..stats import delta

# aot_sign_step: the look's step as a value, so one search tells how far each run's looks are logged
SIGN_METRICS = ("aot_sign", "aot_sign_delta", "aot_sign_lo", "aot_sign_hi", "aot_sign_seeds", "aot_sign_step")
DEFAULT = SignStopSpec()  # alpha and the start of the looks when the sweep does not stop on sign

Curves = dict[str, "tuple[str, dict[int, float], dict[int, float]]"]  # pair_key -> (cell_key, fw, other val loss)
# Forward is the reference: every other order of a cell and seed is compared with its forward trial. The pair and
# cell of backward keep their keys; those of another order are "<key>~<order>", a comparison of their own.
ORDER_SEP = "~"


def compared_key(key: str, order: str) -> str:
    """The pair or cell key of `order` compared with forward."""
    return key if order == "backward" else f"{key}{ORDER_SEP}{order}"


def order_of(key: str) -> str:
    """The order a pair or cell key compares with forward."""
    return key.partition(ORDER_SEP)[2] or "backward"


def comparisons(records: list[dict[str, Any]]) -> tuple[dict[str, dict[str, dict]], list[dict]]:
    """(compared pair key -> {"forward": its forward record, "other": the compared order's}, the records with no
    forward partner). A forward trial serves every order of its cell and seed."""
    sides: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in records:
        if r["direction"] != "joint":  # one model on both directions is its own comparison (`tables.joint_rows`)
            sides[r["pair_key"]][r["direction"]] = r
    out, alone = {}, []
    for key, s in sides.items():
        fw = s.get("forward")
        others = [o for o in s if o != "forward"]
        if fw is None or not others:
            alone.extend(s.values())
            continue
        for order in others:
            out[compared_key(key, order)] = {"forward": fw, "other": s[order]}
    return out, alone


def cells_of(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict]]]:
    """cell_key -> pair_key -> {"forward", "other"} -> record, for each order compared with forward (keys:
    `compared_key`)."""
    cells: dict[str, dict[str, dict[str, dict]]] = defaultdict(dict)
    for key, s in comparisons(records)[0].items():
        cells[compared_key(s["forward"]["cell_key"], s["other"]["direction"])][key] = s
    return dict(cells)


def plan_looks(cells: dict[str, dict[str, dict[str, dict]]], after: float) -> tuple[dict[str, float], dict[str, int]]:
    """(cell_key -> the first step that counts as a look, `after` x train.steps; cell_key -> how many looks
    there will be: the evaluations from that step to the end of training, known before any is seen)."""
    first, planned = {}, {}
    for cell, pairs in cells.items():
        runs = [r for s in pairs.values() for r in s.values()]
        steps = max((r.get("steps") or 0 for r in runs), default=0)
        every = min((r.get("eval_every") or 0 for r in runs), default=0)
        first[cell] = after * steps
        if steps and every:
            evals = set(range(every, steps + 1, every)) | {steps}
            planned[cell] = sum(s >= first[cell] for s in evals)
    return first, planned


def sequences(curves: Curves, *, alpha: float = DEFAULT.alpha, start: dict[str, float] | None = None,
              planned: dict[str, int] | None = None, waiting: dict[str, set[str]] | None = None
              ) -> dict[str, list[stats.SignState]]:
    """cell_key -> the sequential test over its looks (pure); alpha is spent over `planned[cell]` looks where
    known, else as 6 alpha / (pi^2 k^2). With `waiting` (cell_key -> the pairs still expected to evaluate), a
    step counts only once each of those pairs has both directions there."""

    by_cell: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _, (cell, fw, bw) in sorted(curves.items()):
        first = (start or {}).get(cell, 0)
        for step, l_fw in fw.items():
            l_bw = bw.get(step)
            if step >= first and l_bw is not None and l_fw == l_fw and l_bw == l_bw:
                by_cell[cell][step].append(float(delta(l_fw, l_bw)))

    def reached(cell: str, step: int) -> bool:
        return all(p in curves and step in curves[p][1] and step in curves[p][2] for p in (waiting or {}).get(cell, ()))

    return {cell: stats.seed_sign_sequence(sorted((st, d) for st, d in steps.items() if reached(cell, st)), alpha,
                                           (planned or {}).get(cell))
            for cell, steps in sorted(by_cell.items())}


def waiting_pairs(cells: dict[str, dict[str, dict[str, dict]]], expected: dict[str, set[str]]
                  ) -> dict[str, set[str]]:
    """cell_key -> the planned pairs of the cell that are still to report: not both directions finished (a pair
    not started yet, or failed, counts as to report, so the cell waits for it)."""
    out = {}
    for cell, pairs in expected.items():
        have = cells.get(cell, {})
        out[cell] = {p for p in pairs if not (p in have and all(r["finished"] for r in have[p].values()))}
    return out


def stop_step(states: list[stats.SignState], *, looks: int) -> int | None:
    """The first look where the same sign has been established at `looks` consecutive looks (ending there)."""
    for i in range(looks - 1, len(states)):
        run = states[i - looks + 1 : i + 1]
        if states[i].sign and all(s.sign == states[i].sign for s in run):
            return states[i].step
    return None


def word(states: list[stats.SignState], order: str = "backward") -> str:
    """The latest look of a cell (forward against `order`), in words."""
    if not states:
        return "no look yet"
    last = states[-1]
    if last.n < 2:
        return "undetermined (1 seed)"
    if not last.sign:
        return "undetermined"
    w = "forward easier" if last.sign > 0 else f"{order} easier"
    flipped = any(s.sign and s.sign != last.sign for s in states)
    return w + (" (the other sign held earlier in training)" if flipped else "")


def read_curves(reader: Any, cells: dict[str, dict[str, dict[str, dict]]]) -> Curves:
    """Both directions' validation curves of every pair, read on the reader's threads."""
    from concurrent.futures import ThreadPoolExecutor

    items = [(cell, pair, s) for cell, pairs in cells.items() for pair, s in pairs.items()]
    with ThreadPoolExecutor(max(1, getattr(reader, "threads", 1)), thread_name_prefix="aot-curves") as pool:
        got = list(pool.map(lambda x: (dict(reader.curve(x[2]["forward"])), dict(reader.curve(x[2]["other"]))),
                            items))
    return {pair: (cell, fw, bw) for (cell, pair, _), (fw, bw) in zip(items, got)}


def evaluate(reader: Any, records: list[dict[str, Any]], alpha: float = DEFAULT.alpha, after: float = DEFAULT.after,
             expected: dict[str, set[str]] | None = None
             ) -> tuple[dict[str, list[stats.SignState]], dict[str, dict[str, dict[str, dict]]]]:
    """(cell_key -> states, cell_key -> pairs) for the records (running trials included); with `expected`
    (cell_key -> its planned pair keys) a step is a look only once every unfinished planned pair reached it."""
    cells = cells_of(records)
    first, planned = plan_looks(cells, after)
    waiting = waiting_pairs(cells, expected) if expected is not None else None
    return sequences(read_curves(reader, cells), alpha=alpha, start=first, planned=planned, waiting=waiting), cells


def expected_pairs(trials: list[TrialSpec]) -> dict[str, set[str]]:
    """cell_key -> its pair keys (`compared_key`: one per order compared with forward), for the live sign test to
    wait on."""
    out: dict[str, set[str]] = {}
    for t in trials:
        if t.direction not in ("forward", "joint"):
            out.setdefault(compared_key(t.cell_key, t.direction), set()).add(compared_key(t.pair_key, t.direction))
    return out
