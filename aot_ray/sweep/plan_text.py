"""The plan as text: one row per trial (resources, GPU memory, cost, state), the totals, the datasets, the lr
search and the warnings a researcher should read before spending GPU-hours. Nothing here computes a figure:
`plan.plan` does."""

from __future__ import annotations

from typing import Any

from ..aggregate.tables import MAX_EPOCHS
from ..aggregate.text import format_table
from ..spec import SweepSpec


def plan_text(result: dict[str, Any], spec: SweepSpec) -> str:
    """`aot-ray plan`'s output for `plan.plan`'s result (an unfit trial's error is the caller's to print)."""
    return "\n".join([_table(result["trials"]), *_totals(result, spec), *_datasets_and_search(result),
                      *_warnings(result["trials"])])


def _asks(res: dict[str, float]) -> str:
    each = ",".join(f"{k}={v:g}" for k, v in res.items() if k != "workers")
    return f"{res['workers']:g}x({each})" if "workers" in res else each  # per data-parallel worker


def _memory(m: dict | None) -> dict[str, str]:
    if m is None:
        return {"micro": "", "gpu_mem": ""}
    peak = f"{m['predicted']['total'] / 2**30:.1f}G"
    share = f"/{m['budget'] / 2**30:.1f}G" if m["budget"] else "/?"
    flag = "" if m["fits"] is not False else " OVER"
    return {"micro": f"{m['micro_batch']}x{m['passes']}", "gpu_mem": peak + share + flag}


def _table(trials: list[dict[str, Any]]) -> str:
    rows = [{**r, "resources": _asks(r["resources"]), **_memory(r["memory"]),
             "gpu_h": f"{r['gpu_hours']:.2f}" if r["gpu_hours"] else "",
             "params": f"{r['n_params'] / 1e6:.2f}M", "tokens": f"{r['tokens'] / 1e6:.2f}M",
             "epochs": "?" if r["epochs"] is None else f"{r['epochs']:.1f}"} for r in trials]
    gpu = any(r["memory"] for r in trials)
    design = ["windows"] if any(r["windows"] == "line" for r in trials) else []
    # the grid's dotted axes (model.position, optim.lr, data.k, ...), each a column of its values
    dotted = list(dict.fromkeys(k for r in trials for k in r["axes"] if "." in k))
    rows = [{**r, **{k: r["axes"].get(k, "") for k in dotted}} for r in rows]
    return format_table(rows, ["trial_id", "direction", "dataset", *design, "model", *dotted, "context_length", "seed",
                               "params",
                               "tokens", "epochs", "resources", "status"] + (["micro", "gpu_mem"] if gpu else [])
                        + (["gpu_h"] if any(r["gpu_hours"] for r in rows) else []))


def _totals(result: dict[str, Any], spec: SweepSpec) -> list[str]:
    """What is done and what the rest costs: tokens, FLOPs, checkpoints, GPU-hours, the stop on sign."""
    trials = result["trials"]
    n, done = len(trials), sum(r["status"] == "done" for r in trials)
    todo = [r for r in trials if r["status"] != "done"]
    tokens, flops = sum(r["tokens"] for r in todo), sum(r["flops"] for r in todo)
    gpu_hours = sum(r["gpu_hours"] or 0 for r in todo)
    out = [f"\n{n} trials ({_pairs_text(trials)}): {done} done, {n - done} to run; "
           f"to run: {tokens / 1e6:.1f}M training tokens, {flops:.2e} FLOPs (6*N*D)"]
    stale = [r for r in trials if r["status"] == "stale"]
    if stale:
        changed = sorted({r["dataset"] + (f"[{r['language']}]" if r["language"] else "") for r in stale})
        out.append(f"stale: {len(stale)} trial(s) finished on data that has changed since ({', '.join(changed)}); "
                   f"`run` trains them again on the data of now (their old runs stay in MLflow, role 'superseded')")
    if result.get("storage_need"):
        out.append(f"checkpoints: about {result['storage_need'] / 1e6:,.1f} MB in {result['storage']} while the "
                   f"trials to run keep theirs (train.keep_checkpoints each)")
    if gpu_hours:
        out.append(f"estimated {gpu_hours:,.1f} GPU-hours at {spec.run.gpu_tflops:g} sustained TFLOP/s per GPU "
                   f"(run.gpu_tflops)")
    if any(r["direction"] == "joint" for r in trials):
        out.append("joint: one model per cell and seed, trained on forward and backward windows in turn (each led "
                   "by its direction token) on the same token budget as a one-direction trial (train.steps x batch "
                   "windows), and evaluated in each direction on the same windows")
    st = spec.run.stop_on_sign
    if st is not None:
        out.append(f"stop on sign: a pair stops once its sign holds for {st.looks} evaluation(s) at alpha "
                   f"{st.alpha:g}, from {st.after:.0%} of its steps on; the cost above is the most it can take")
    return out


def _pairs_text(trials: list[dict[str, Any]]) -> str:
    """What the trials compare: forward/backward pairs, or each order with forward, and joint models."""
    orders = [r["direction"] for r in trials]
    if set(orders) <= {"forward", "backward"}:
        return f"{len(orders) // 2} forward/backward pairs"
    compared = sum(o not in ("forward", "joint") for o in orders)
    joint = orders.count("joint")
    return f"{compared} comparisons with forward" + (f", {joint} joint models" if joint else "")


def _datasets_and_search(result: dict[str, Any]) -> list[str]:
    out = []
    for d in result["datasets"]:
        label = d["dataset"] + (f"[{d['language']}]" if d["language"] else "")
        state = "prepared" if d["prepared"] else "DAMAGED (rebuilt by prepare/run)" if d.get("damaged") else \
            "not prepared yet"
        out.append(f"dataset {label}: {state} at {d['path']}")
    ls = result["lr_search"]
    if ls:
        found = ", ".join(f"{p}={lr:.3g}" if lr is not None else f"{p}=pending" for p, lr in ls["found"].items())
        out.append(f"lr search first: {ls['trials_per_model']} Optuna trials per model over lr in "
                   f"[{ls['range'][0]:g}, {ls['range'][1]:g}], {'+'.join(ls['directions'])}, "
                   f"{ls['tokens'] / 1e6:.1f}M tokens in all; learning rates: {found}"
                   + ("" if all(v is not None for v in ls["found"].values())
                      else " (trial ids above use defaults.optim.lr until the search has run)"))
    if result["note"]:
        out.append(result["note"])
    return out


def _warnings(trials: list[dict[str, Any]]) -> list[str]:
    """The GPU memory legend, validation windows cut to the split, trials that see their data too often."""
    out = []
    if any(r["memory"] for r in trials):
        known = any(r["memory"]["budget"] for r in trials if r["memory"])
        out.append("gpu_mem: predicted peak per worker / its share of the GPU (micro: windows per pass x passes)"
                   + ("" if known else "; the GPU size is unknown: set run.gpu_memory_gb (or "
                      "run.gpu_memory_gb_by_resource) to check it here, `run` asks the cluster"))
    cut: dict[str, tuple[int, int]] = {}
    for r in trials:
        ew = r.get("eval_windows") or {}
        if ew.get("effective") is not None and ew["effective"] < ew["requested"]:
            cut.setdefault(f"{r['dataset']}{'[' + r['language'] + ']' if r['language'] else ''} at context "
                           f"{r['context_length']}", (ew["requested"], ew["effective"]))
    for where, (asked, got) in cut.items():
        out.append(f"note: train.eval_windows {asked} -> {got} on {where}: its validation split holds {got} windows "
                   f"(the trials evaluate on all of them and log train.eval_windows={got})")
    many = [r for r in trials if r["epochs"] is not None and r["epochs"] > MAX_EPOCHS]
    if many:
        out.append(f"warning: {len(many)} trial(s) see their training split more than {MAX_EPOCHS:g} times (up to "
                   f"{max(r['epochs'] for r in many):.0f}): they may measure memorisation, not the arrow; add data or "
                   f"train fewer steps (the report flags such pairs)")
    return out
