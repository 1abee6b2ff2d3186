"""expand(sweep) -> trials: the one pure function that turns a sweep into trial specs with content-hash ids.

Identity comes from content. `cell_key` hashes everything but seed and direction, `pair_key` adds the seed,
`trial_id` adds the direction. Settings that cannot change a result (logging cadence, thread count, device)
are left out of the hash, so changing them does not orphan finished runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from typing import Any

from ..errors import SpecError
from . import orders
from .schema import LinearData, SweepSpec, TrialSpec, by_line

# micro_batch and compile change how a step is computed, not which windows it sees: not part of a trial's identity
NOT_IDENTITY = {"train": {"log_every", "checkpoint_every", "keep_checkpoints", "threads", "device", "micro_batch",
                          "compile"}}


def content_hash(obj: Any, n: int = 8) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def _fragments(obj: dict[str, Any]) -> dict[str, str]:
    """Each top-level item of `obj` as content_hash serializes it (`"key":value`), to be joined per trial."""
    return {k: json.dumps({k: v}, sort_keys=True, separators=(",", ":"), default=str)[1:-1] for k, v in obj.items()}


def _hash_of(parts: dict[str, str], n: int = 8) -> str:
    """content_hash of the dict whose items `parts` holds serialized: the same JSON, joined in key order, so a
    cell is serialized once and each of its trials adds only its own few items."""
    blob = "{" + ",".join(parts[k] for k in sorted(parts)) + "}"
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def _slug_part(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "", text)


def _identity(section: str, obj: Any) -> dict:
    d = dataclasses.asdict(obj)
    for name in NOT_IDENTITY.get(section, ()):
        d.pop(name, None)
    if section == "data" and d.get("windows") == "stream":
        del d["windows"]  # the design of every run before `windows` existed: those trials keep their ids
    if section == "model" and d.get("position") == "learned":
        del d["position"]  # likewise: every GPT before `position` existed had learned positions
    return d


LANG = "{lang}"


def lang_fields(data: Any) -> list[str]:
    """Dotted names of the dataset's string fields that contain `{lang}`."""
    out = []
    for f in dataclasses.fields(data):
        v = getattr(data, f.name)
        items = v if isinstance(v, tuple) else (v,)
        for i, item in enumerate(items):
            if isinstance(item, str) and LANG in item:
                out.append(f.name if not isinstance(v, tuple) else f"{f.name}[{i}]")
    return out


def fill_lang(data: Any, lang: str | None) -> Any:
    """The dataset with `{lang}` replaced in its string fields (unchanged when `lang` is None)."""
    if lang is None:
        return data
    changes = {}
    for f in dataclasses.fields(data):
        v = getattr(data, f.name)
        if isinstance(v, str) and LANG in v:
            changes[f.name] = v.replace(LANG, lang)
        elif isinstance(v, tuple) and any(isinstance(x, str) and LANG in x for x in v):
            changes[f.name] = tuple(x.replace(LANG, lang) if isinstance(x, str) else x for x in v)
    return dataclasses.replace(data, **changes) if changes else data


CONTROL_AXIS = "control"
CONTROLS = {"null": "A=I", "reversed": "reversed-chars"}  # dataset suffix -> what the control is


def control_data(data: Any) -> tuple[str, Any]:
    """(suffix, dataset) of a dataset's control: linear A = I for synthetic data, the reversed-characters
    tokenizer for text."""
    if data.kind in ("primes", "linear"):
        bits = data.bits if data.kind == "linear" else 16
        return "null", LinearData(bits=bits, k=0, noise=0.0, n_samples=data.n_samples, val_fraction=data.val_fraction,
                                  seed=data.seed, windows=data.windows)
    return "reversed", dataclasses.replace(data, tokenizer=dataclasses.replace(data.tokenizer, reverse_chars=True))


def control_trials(spec: SweepSpec) -> list[TrialSpec]:
    """The control cells of `null_controls`: per dataset (and language), the grid's first model, context and
    value of each non-data axis, every seed and direction; tagged with the `control` axis. Controls that come out
    identical (two linear datasets of one width) are kept once."""
    g = spec.grid
    out: dict[str, TrialSpec] = {}
    for name in g.dataset:
        suffix, data = control_data(spec.data[name])
        sub = dataclasses.replace(
            spec, data={f"{name}:{suffix}": data}, null_controls=False, lr_search=None,
            grid=dataclasses.replace(g, dataset=(f"{name}:{suffix}",), model=g.model[:1],
                                     context_length=() if by_line(data) else g.context_length[:1],
                                     overrides=tuple((k, v[:1]) for k, v in g.overrides if not k.startswith("data."))))
        for t in expand(sub):
            out.setdefault(t.trial_id, dataclasses.replace(t, axes=t.axes + ((CONTROL_AXIS, CONTROLS[suffix]),)))
    return list(out.values())


_EXPANDED: dict[int, tuple[Any, tuple[TrialSpec, ...]]] = {}  # id(spec) -> (weak ref to it, its trials)


def expand(spec: SweepSpec) -> list[TrialSpec]:
    """All trials of the sweep, forward and backward of a cell adjacent, in a deterministic order; the control
    cells of `null_controls` last. A sweep is frozen, so it is expanded once (the loader's checks, `plan` and
    `run` then share the result); a new sweep state (learned rates, --set) is a new object, expanded anew."""
    import weakref

    held = _EXPANDED.get(id(spec))
    if held is not None and held[0]() is spec:
        return list(held[1])
    trials = _expand(spec)
    _EXPANDED[id(spec)] = (weakref.ref(spec, lambda _, key=id(spec): _EXPANDED.pop(key, None)), tuple(trials))
    return trials


def context_of(data: Any, given: int | None, dataset: str) -> int:
    """A trial's context length: the grid's value, else its dataset's line when it is windowed by line (the check
    that a given value is that line is `checks.check_trials`'s)."""
    if given is not None:
        return given
    if not by_line(data):
        raise SpecError("grid.context_length", f"is required: dataset {dataset!r} is not windowed by line (only a "
                                               f"synthetic set with windows: line has a context of its own)")
    return data.line_tokens()


def _check_contexts(given: tuple[int, ...], lines: dict[str, set[int]], used: set[int]) -> None:
    """With a context_length axis given: every dataset windowed by line finds its line there, and every value is
    used by some dataset (a value meant for a line dataset that is not its line is a mistake, named here)."""
    if not given:
        return
    for dataset, lengths in lines.items():
        missing = sorted(lengths - set(given))
        if missing:
            raise SpecError("grid.context_length", f"has no {' or '.join(map(str, missing))}: the line of dataset "
                                                   f"{dataset!r}, whose windows are one line each (windows: line, "
                                                   f"the authors' design); leave grid.context_length out (each such "
                                                   f"dataset then has its own), add it, or set data.{dataset}."
                                                   f"windows: stream")
    for i, ctx in enumerate(given):
        if ctx not in used:
            raise SpecError(f"grid.context_length[{i}]", f"{ctx} is used by no dataset: those of the grid are "
                                                          f"windowed by line, each with its own line length; "
                                                          f"remove it, or set windows: stream on a dataset")


def _expand(spec: SweepSpec) -> list[TrialSpec]:
    g = spec.grid
    override_names = [name for name, _ in g.overrides]
    trials: list[TrialSpec] = []
    lines: dict[str, set[int]] = {d: set() for d in g.dataset}  # a dataset windowed by line -> its line lengths
    used: set[int] = set()
    for dataset, lang, preset, given_ctx, *ovals in itertools.product(
        g.dataset, g.language or (None,), g.model, g.context_length or (None,), *(v for _, v in g.overrides)
    ):
        sections = _sections(spec, dataset, lang, preset, dict(zip(override_names, ovals)))
        if by_line(sections["data"]):
            lines[dataset].add(sections["data"].line_tokens())
            if given_ctx not in (None, sections["data"].line_tokens()):
                continue  # a dataset windowed by line takes the one value that is its line
        ctx = context_of(sections["data"], given_ctx, dataset)
        used.add(ctx)
        cell = {s: _identity(s, sections[s]) for s in ("data", "model", "optim", "train")}
        cell["context_length"] = ctx
        if lang is not None:
            cell["language"] = lang
        slug = "-".join(
            [_slug_part(dataset)] + ([_slug_part(lang)] if lang is not None else []) + [_slug_part(preset), f"c{ctx}"]
            + [f"{name.partition('.')[2]}{_slug_part(v)}" for name, v in zip(override_names, ovals)]
        )
        axes = (("dataset", dataset), *((("language", lang),) if lang is not None else ()), ("model", preset),
                ("context_length", ctx), *zip(override_names, ovals))
        parts = _fragments(cell)  # the cell serialized once; each of its trials adds its seed and order
        for seed, (order, order_seed) in itertools.product(g.seed, _orders(spec)):
            trials.append(_trial(spec, sections, parts, slug, seed, order, order_seed, dataset=dataset,
                                 context_length=ctx, language=lang, axes=tuple(axes)))
    _check_contexts(g.context_length, lines, used)
    if spec.null_controls:
        trials += [t for t in control_trials(spec) if t.trial_id not in {x.trial_id for x in trials}]
    return trials


def _sections(spec: SweepSpec, dataset: str, lang: str | None, preset: str, overrides: dict[str, Any]) -> dict:
    """A cell's data, model, optim, train and resources: the defaults, the preset's per_model settings, then the
    grid's own axes (which win)."""
    d = spec.defaults
    sections = {"data": fill_lang(spec.data[dataset], lang), "model": dataclasses.replace(d.model, preset=preset),
                "optim": d.optim, "train": d.train, "resources": d.resources}
    for section, fields in spec.per_model.get(preset, {}).items():
        sections[section] = dataclasses.replace(sections[section], **fields)
    for name, value in overrides.items():
        section, _, fld = name.partition(".")
        sections[section] = dataclasses.replace(sections[section], **{fld: value})
    return sections


def _orders(spec: SweepSpec) -> list[tuple[str, int]]:
    """(order, order_seed) of each trial of a cell and seed: a random order once per order seed, the others once."""
    return [(o, s) for o in spec.grid.direction
            for s in (spec.grid.order_seed if o in orders.RANDOM else (0,))]


def _trial(spec: SweepSpec, sections: dict, cell_parts: dict[str, str], slug: str, seed: int, order: str,
           order_seed: int, **fields: Any) -> TrialSpec:
    """One trial of a cell; its id hashes the cell, the seed and the order (with a random order's draw and a
    custom order's permutation, so that two of them never share an id)."""
    custom = spec.orders.custom.get(order, ())
    ident: dict[str, Any] = {"direction": order}
    short = orders.SHORT.get(order) or _slug_part(order)
    if order in orders.RANDOM:
        ident["order_seed"] = order_seed
        short += f"{order_seed}"
        if order == "random_chunk":
            ident["order_chunk"] = spec.orders.chunk
    if custom:
        ident["permutation"] = list(custom)
    return TrialSpec(
        sweep=spec.name,
        trial_id=f"{slug}-s{seed}-{short}-{_hash_of({**cell_parts, **_fragments({'seed': seed, **ident})})}",
        pair_key=f"{slug}-s{seed}-{_hash_of({**cell_parts, **_fragments({'seed': seed})})}",
        cell_key=f"{slug}-{_hash_of(cell_parts)}",
        direction=order, data=sections["data"], model=sections["model"], optim=sections["optim"],
        train=sections["train"], seed=seed, resources=sections["resources"], order_seed=order_seed,
        order_chunk=spec.orders.chunk, custom_order=tuple(custom), **fields)


def trial_to_dict(trial: TrialSpec) -> dict:
    """A JSON-ready dict of a trial (axes as a mapping)."""
    out = dataclasses.asdict(trial)
    out["axes"] = dict(trial.axes)
    return out


def flatten(trial: TrialSpec) -> dict[str, Any]:
    """Dotted `section.field -> value` params for MLflow, every field of the trial."""
    out: dict[str, Any] = {}
    for key, value in trial_to_dict(trial).items():
        if isinstance(value, dict) and key != "axes":
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        elif key != "axes":
            out[key] = value
    return out


def lr_search_trials(spec: SweepSpec, preset: str, lr: float) -> list[TrialSpec]:
    """The short runs of one learning-rate candidate for one model preset: the grid's first dataset, language,
    context length, override values and seed, in each of `lr_search.directions`, for `lr_search.steps` steps."""
    ls = spec.lr_search
    assert ls is not None
    g = spec.grid
    first = lambda values: values[:1]  # noqa: E731
    grid = dataclasses.replace(
        g, dataset=first(g.dataset), language=first(g.language), model=(preset,),
        context_length=() if by_line(spec.data[g.dataset[0]]) else first(g.context_length), seed=first(g.seed),
        direction=tuple(ls.directions),
        overrides=tuple((k, first(v)) for k, v in g.overrides) + (("optim.lr", (lr,)),))
    defaults = spec.defaults
    if ls.steps is not None:
        defaults = dataclasses.replace(defaults, train=dataclasses.replace(defaults.train, steps=ls.steps))
    per_model = {p: {s: {k: v for k, v in f.items() if not (p == preset and s == "train" and k == "steps"
                                                             and ls.steps is not None)}
                     for s, f in sections.items()} for p, sections in spec.per_model.items()}
    return expand(dataclasses.replace(spec, grid=grid, defaults=defaults, per_model=per_model, lr_search=None))


def with_learning_rates(spec: SweepSpec, lrs: dict[str, float]) -> SweepSpec:
    """The sweep with each searched preset's learning rate set (as per_model optim.lr), the search done."""
    per_model = {p: {s: dict(f) for s, f in sections.items()} for p, sections in spec.per_model.items()}
    for preset, lr in lrs.items():
        per_model.setdefault(preset, {}).setdefault("optim", {})["lr"] = lr
    return dataclasses.replace(spec, per_model=per_model, lr_search=None)
