"""Live sign checking, in one place: the sequential sign test over seeds, per cell, on a sweep's MLflow runs; its
state logged as `aot_sign*` metrics on every trial run of the cell; and the stop requests of `run.stop_on_sign`.

The unit that replicates an arrow is the seed: a cell's sign is decided from the spread of its pairs' deltas
(`stats.seed_sign_sequence`), never from one pair's validation windows. A look is an evaluation step at or after
`after` x train.steps (the gap moves early in training, so alpha is not spent there); alpha is split evenly over
the looks the cell will have (its evaluations from there to the end of training, known in advance); at each look
the test uses every pair of the cell with both directions evaluated at that step. While a sweep runs, a step is a
look only once every pair of the cell planned to reach it has (`waiting`): deciding on the seeds that happen to
report first would spend a look on fewer seeds than the report later finds there. `run.stop_on_sign` stops a
cell (all of its pairs together, tag `aot.stop_at`) once the test has held one sign at `looks` consecutive looks.

Used while a sweep runs (`execution.sign_callback`: a Tune callback that hands each refresh to a thread of the
driver, so Tune's event loop never waits on MLflow) and by the report (`aggregate.assemble` and
`aggregate.reporting`). Both read through `aggregate.read.Reader`, which the caller makes: this package needs
only its `curve`, `client`, `records` and `runs`. cells.py holds the test on cells (pure but for reading curves),
watch.py the refresh that costs what changed (`Watcher`) and the writes.
"""

from .cells import (DEFAULT, ORDER_SEP, SIGN_METRICS, cells_of, compared_key, comparisons, evaluate, expected_pairs,
                    order_of, plan_looks, read_curves, sequences, stop_step, waiting_pairs, word)
from .watch import MARGIN_S, Watcher, log_metrics, request_stops, update

__all__ = ["DEFAULT", "MARGIN_S", "ORDER_SEP", "SIGN_METRICS", "Watcher", "cells_of", "compared_key", "comparisons",
           "evaluate", "expected_pairs", "log_metrics", "order_of",
           "plan_looks", "read_curves", "request_stops", "sequences", "stop_step", "update",
           "waiting_pairs", "word"]
