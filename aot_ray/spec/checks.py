"""The checks of a parsed sweep that need more than one field: a dataset's settings against what they can
generate, a model's shape, the language axis against the datasets' placeholders, every expanded trial (its id's
length, context against the data, warmup against steps, data-parallel workers, micro-batches, the shape with its
overrides), and the lr search. Each rejection names the YAML path of the field to change."""

from __future__ import annotations

from typing import Any

from ..errors import SpecError
from . import orders
from .build import join
from .presets import resolve_shape
from .schema import SYNTHETIC_KINDS, ModelSpec, SweepSpec, split_sizes

MAX_TRIAL_ID = 200


def check_lr_search(spec: SweepSpec) -> None:
    from .expand import lr_search_trials  # expand imports this module's checks: a circle at import time

    ls = spec.lr_search
    if ls.high <= ls.low:
        raise SpecError("lr_search.high", f"must be greater than lr_search.low ({ls.low:g}), got {ls.high:g}")
    if not ls.directions or len(set(ls.directions)) != len(ls.directions):
        raise SpecError("lr_search.directions", "must list forward and/or backward, each once")
    if any(k == "optim.lr" for k, _ in spec.grid.overrides):
        raise SpecError("lr_search", "the grid already has an optim.lr axis; drop one of them")
    for preset, sections in spec.per_model.items():
        if "lr" in sections.get("optim", {}):
            raise SpecError(f"per_model.{preset}.optim.lr", "lr_search sets the learning rate; drop one of them")
    for preset in spec.grid.model:
        trial = lr_search_trials(spec, preset, ls.low)[0]
        if trial.optim.warmup_steps >= trial.train.steps:
            raise SpecError("lr_search.steps", f"must be more than optim.warmup_steps ({trial.optim.warmup_steps}) "
                                               f"of model {preset}, got {trial.train.steps}")


def check_dataset(data: Any, path: str) -> None:
    if data.kind not in SYNTHETIC_KINDS:
        if data.kind == "text" and not data.paths:
            raise SpecError(join(path, "paths"), "must list at least one file, glob or URL")
        tok = data.tokenizer
        least = {"bpe": 257, "bytes": 257, "chars": 3}[tok.kind]
        if tok.vocab_size < least:
            holds = {"bpe": "256 byte symbols + <|endoftext|>", "bytes": "256 bytes + <|endoftext|>",
                     "chars": "<|endoftext|>, the unknown id and one character"}[tok.kind]
            raise SpecError(join(path, "tokenizer.vocab_size"),
                            f"must be at least {least} for kind {tok.kind} ({holds}), got {tok.vocab_size}")
        return
    limit = data.capacity()
    if data.n_samples > limit:
        raise SpecError(join(path, "n_samples"), f"{data.n_samples} exceeds the {limit} distinct lines these settings allow")
    if data.kind == "linear" and data.k > data.bits * (data.bits - 1):
        raise SpecError(join(path, "k"), f"a {data.bits}x{data.bits} matrix has only {data.bits * (data.bits - 1)} off-diagonal entries, got {data.k}")


def check_model(model: ModelSpec, path: str) -> None:
    try:
        resolve_shape(model)
    except ValueError as e:
        raise SpecError(path, str(e)) from None


def check_languages(languages: tuple, datasets: tuple, data: dict) -> None:
    """A `language` axis needs datasets with `{lang}` placeholders, and `{lang}` needs a language axis."""
    from .expand import lang_fields  # expand imports this module's checks: a circle at import time

    for name in datasets:
        fields = lang_fields(data[name])
        if languages and not fields:
            raise SpecError("grid.language", f"dataset {name!r} has no {{lang}} placeholder to fill (put {{lang}} in "
                                             f"its paths, name or data_files, or drop it from grid.dataset)")
        if fields and not languages:
            raise SpecError(f"data.{name}.{fields[0]}", "uses {lang} but the grid has no language axis")
        known = getattr(data[name], "languages", ())
        for i, lang in enumerate(languages):
            if known and lang not in known:
                raise SpecError(join("grid.language", i),
                                f"unknown language {lang!r} for dataset {name!r} (known: {' '.join(known)})")


def check_trials(spec: SweepSpec) -> None:
    """Checks that need a whole trial: context vs. data size, warmup vs. steps, model shape with overrides."""
    from .expand import expand  # expand imports this module's checks: a circle at import time

    for trial in expand(spec):
        axes = dict(trial.axes)
        if len(trial.trial_id) > MAX_TRIAL_ID:  # Tune names each trial's folder by its id
            raise SpecError("grid", f"trial id {trial.trial_id[:40]}... is {len(trial.trial_id)} characters long, at "
                                    f"most {MAX_TRIAL_ID} (it names the trial's folder); use shorter axis values")
        given = spec.grid.context_length
        ctx_path = join("grid.context_length", given.index(trial.context_length)) \
            if trial.context_length in given else "grid.context_length"
        _check_line_windows(spec, trial)
        _check_order(spec, trial)
        if trial.data.kind not in SYNTHETIC_KINDS:
            lines = per_line = 0  # corpus sizes are known once prepared; checked before any trial starts
        else:
            n_train, n_val = split_sizes(trial.data)
            per_line = trial.data.line_tokens()
        for split, lines in (() if not per_line else (("validation", n_val), ("training", n_train))):
            if lines * per_line < trial.context_length:
                raise SpecError(
                    ctx_path,
                    f"context length {trial.context_length} is longer than the {split} split of dataset "
                    f"{trial.dataset!r} ({lines} lines x {per_line} tokens = {lines * per_line}); lower it or raise "
                    f"data.{trial.dataset}.n_samples",
                )
        if trial.optim.warmup_steps >= trial.train.steps:
            where = "grid.optim.warmup_steps" if "optim.warmup_steps" in axes else "defaults.optim.warmup_steps"
            raise SpecError(where, f"must be less than train.steps ({trial.train.steps}), got {trial.optim.warmup_steps}")
        _check_workers(spec, trial)
        _check_micro_batch(spec, trial)
        _check_model_of(spec, trial)


def _check_model_of(spec: SweepSpec, trial: Any) -> None:
    """The trial's model with every override (the defaults' n_head or position may not fit an LSTM of the grid),
    named where the field that does not fit was set."""
    try:
        resolve_shape(trial.model)
    except ValueError as e:
        why = str(e)
        name = why.split()[0]
        raise SpecError(_field_path(spec, trial, "model", name) if name in MODEL_FIELDS else
                        join("grid.model", spec.grid.model.index(trial.model.preset)), why) from None


MODEL_FIELDS = ("position", "n_head", "n_layer", "n_embd")


def _field_path(spec: SweepSpec, trial: Any, section: str, name: str) -> str:
    """Where a trial's `<section>.<name>` was set: a grid axis, per_model, or defaults."""
    if f"{section}.{name}" in dict(trial.axes):
        return f"grid.{section}.{name}"
    if name in spec.per_model.get(trial.model.preset, {}).get(section, {}):
        return f"per_model.{trial.model.preset}.{section}.{name}"
    return f"defaults.{section}.{name}"


def _check_order(spec: SweepSpec, trial: Any) -> None:
    """The trial's order can permute its windows: a custom permutation of its context, a chunked or quarter order
    on a context it divides."""
    custom = spec.orders.custom.get(trial.direction)
    why = orders.problem(trial.direction, trial.context_length, trial.order_chunk, custom)
    if why is None:
        return
    if custom is not None:
        raise SpecError(join("orders.custom", trial.direction), f"{why}, for trial {trial.trial_id}")
    path = join("grid.direction", spec.grid.direction.index(trial.direction))
    raise SpecError(path, f"order {trial.direction} {why} (dataset {trial.dataset!r}); drop it or change "
                          f"context_length" + (" or orders.chunk" if trial.direction == "random_chunk" else ""))


def _check_line_windows(spec: SweepSpec, trial: Any) -> None:
    """A synthetic set windowed by line (WINDOWS) has a stride of one line (its context, one line, is expand's)."""
    if trial.windows != "line":
        return
    line = trial.data.line_tokens()
    where = f"data.{trial.dataset}"
    if trial.train.stride not in (None, line):
        path = "grid.train.stride" if "train.stride" in dict(trial.axes) else "defaults.train.stride"
        raise SpecError(path, f"{trial.train.stride} is not the line of dataset {trial.dataset!r} ({line} tokens): "
                              f"its windows are one line each ({where}.windows: line); leave it out")


def _resources_path(spec: SweepSpec, trial: Any, name: str) -> str:
    return _field_path(spec, trial, "resources", name)


def _check_micro_batch(spec: SweepSpec, trial: Any) -> None:
    m, t = trial.train.micro_batch, trial.train
    per_worker = trial.per_worker_batch()
    if isinstance(m, int) and per_worker % m:
        raise SpecError(_field_path(spec, trial, "train", "micro_batch"), f"{m} does not divide the {per_worker} windows each worker takes per step "
                               f"(batch_size {t.batch_size} x grad_accum {t.grad_accum} / {trial.resources.workers} "
                               f"worker(s)); pick a divisor of {per_worker}, or auto")


def _check_workers(spec: SweepSpec, trial: Any) -> None:
    workers, gpu = trial.resources.workers, trial.resources.gpu
    if workers == 1:
        if trial.resources.sharding == "fsdp":
            raise SpecError(_resources_path(spec, trial, "sharding"),
                            f"fsdp shards the model over data-parallel workers; trial {trial.trial_id} has one: set "
                            f"resources.workers to 2 or more (or sharding: ddp)")
        return
    if trial.train.batch_size % workers:
        raise SpecError(_resources_path(spec, trial, "workers"),
                        f"{workers} data-parallel workers cannot split train.batch_size {trial.train.batch_size} "
                        f"evenly (it is the global batch); pick a divisor of it")
    if gpu not in (0, 1):
        raise SpecError(_resources_path(spec, trial, "gpu"),
                        f"a data-parallel trial ({workers} workers) takes one whole GPU per worker (NCCL cannot "
                        f"share one), got {gpu:g}; use gpu: 1, or workers: 1 to share a GPU")
