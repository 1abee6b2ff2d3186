"""2 languages x 2 directions x 2 seeds on local text: exactly 2 corpora prepared, then none; language tags."""

import json
from pathlib import Path

import pytest

from aot_ray import sweep, tracking
from aot_ray.spec import load_sweep_text

from corpus_util import docs, write_text

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parent.parent


def test_languages_local_prepares_each_corpus_once(tmp_path, ray_local):
    for lang in ("en", "fr"):
        write_text(tmp_path / "corpora" / f"{lang}.txt.gz", docs(lang, 400))
    sets = [
        f"data.local.paths=['{tmp_path}/corpora/{{lang}}.txt.gz']",
        "data.local.tokenizer.vocab_size=300", "data.local.val_fraction=0.1",
        "grid.language=[en, fr]", "grid.seed=[0, 1]", "grid.model=[tiny]", "grid.context_length=[32]",
        "defaults.train={steps: 6, batch_size: 4, eval_every: 6, checkpoint_every: 6, log_every: 3}",
        "defaults.optim.warmup_steps=1", "defaults.resources.cpu=1",
    ]
    spec, text = load_sweep_text(ROOT / "sweeps" / "languages-local.yaml", sets)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = str(tmp_path / "results")
    lines: list[str] = []
    first = sweep.run(sweep.ResolvedSweep.of(spec, text, uri=uri, storage=storage), verbose=0, say=lines.append)
    assert len(first.ran) == 8 and not first.failed

    manifests = [json.loads(m.read_text()) for m in (tmp_path / "results" / "data").glob("*/manifest.json")]
    assert len(manifests) == 2
    assert sorted(Path(m["source"]["paths"][0]).name for m in manifests) == ["en.txt.gz", "fr.txt.gz"]
    assert sum(built for _, built, _ in first.prepared.values()) == 2
    assert sum(l.startswith("prepared data.local[") for l in lines) == 2

    second_lines: list[str] = []
    second = sweep.run(sweep.ResolvedSweep.of(spec, text, uri=uri, storage=storage), verbose=0, say=second_lines.append)
    assert sum(built for _, built, _ in second.prepared.values()) == 0
    assert sum(l.startswith("reused data.local[") for l in second_lines) == 2
    assert second.ran == [] and len(second.skipped) == 8
    assert len(list((tmp_path / "results" / "data").glob("*/manifest.json"))) == 2

    c = tracking.client(uri)
    runs = tracking.SweepRuns(uri, spec.name).trials()
    assert sorted(r.data.tags["language"] for r in runs) == ["en"] * 4 + ["fr"] * 4
    r = runs[0]
    per_pos = c.download_artifacts(r.info.run_id, "eval/per_position.json", str(tmp_path / "dl"))
    assert len(json.loads(Path(per_pos).read_text())["loss"]) == 32
    assert {p["language"] for p in second.report["pairs"]} == {"en", "fr"} and len(second.report["pairs"]) == 4


def test_one_seed_per_language_the_report_rests_on_the_languages(tmp_path, ray_local, capsys):
    """The paper's design (one seed per language) run for real on small local text: the report states its claim
    over the languages (sign test and interval over them), never within a language, and draws delta per
    language with one point each."""
    langs = ["en", "fr", "de", "fi", "tr", "id"]
    for lang in langs:
        write_text(tmp_path / "corpora" / f"{lang}.txt", docs(lang, 300))
    spec, text = load_sweep_text(ROOT / "sweeps" / "languages-local.yaml", [
        f"data.local.paths=['{tmp_path}/corpora/{{lang}}.txt']", "data.local.tokenizer.vocab_size=300",
        "data.local.val_fraction=0.1", f"grid.language=[{', '.join(langs)}]", "grid.model=[tiny]",
        "grid.context_length=[32]", "defaults.train={steps: 40, batch_size: 8, eval_every: 20, checkpoint_every: 40}",
        "defaults.optim.warmup_steps=4", "defaults.resources.cpu=1",
    ])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = sweep.run(sweep.ResolvedSweep.of(spec, text, uri=uri, storage=str(tmp_path / "results")), verbose=0, say=lambda _: None)
    assert len(res.ran) == 12 and not res.failed
    from aot_ray.aggregate import report
    from aot_ray.aggregate.text import render

    rep = report(uri, spec.name, tmp_path / "report")
    [row] = rep["across"]
    assert row["axis"] == "language" and row["n"] == 6 and row["positive"] + row["negative"] == 6
    assert row["seeds_per_cell"] == [1]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "over 6 languages" in md and "one seed per language: each language is one pair" in md
    assert "within a cell: one seed each" in md
    assert "one seed in 6 of 6 cells: no sign test over seeds there" in md
    assert rep["figures"]["delta_by_language"] == 6
    assert rep["references"] == []  # local text: no paper value matches
    print(render(rep))  # shown with -s (the closing note quotes it)


def test_an_edited_corpus_makes_its_finished_trials_stale_and_they_train_again(tmp_path, ray_local):
    """Identity includes the data: a finished trial whose corpus changed is not done (plan says stale), not
    reported as current, and `run` trains it again from step 0 on the new data; its old run stays, superseded."""
    from aot_ray.aggregate import report
    from aot_ray.sweep.plan import plan
    from aot_ray.sweep import SweepPlan

    corpus = write_text(tmp_path / "corpora" / "en.txt", docs("en", 200))
    spec, text = load_sweep_text(ROOT / "sweeps" / "languages-local.yaml", [
        f"data.local.paths=['{tmp_path}/corpora/{{lang}}.txt']", "data.local.tokenizer.vocab_size=300",
        "data.local.val_fraction=0.1", "grid.language=[en]", "grid.model=[tiny]", "grid.context_length=[32]",
        "defaults.train={steps: 8, batch_size: 4, eval_every: 4, checkpoint_every: 4}",
        "defaults.optim.warmup_steps=1", "defaults.resources.cpu=1",
    ])
    uri, storage = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "results")
    first = sweep.run(sweep.ResolvedSweep.of(spec, text, uri=uri, storage=storage), verbose=0, say=lambda _: None)
    assert len(first.ran) == 2 and len(first.report["pairs"]) == 1
    old = {r.data.tags["trial_id"]: r.data.tags[tracking.DATA_VERSION] for r in tracking.SweepRuns(uri, spec.name).trials()}

    write_text(corpus, docs("en", 200) + docs("en", 50, seed=1))  # the corpus is edited
    now = SweepPlan.of(spec).versions
    assert set(now.values()).isdisjoint(old.values())
    assert [r["status"] for r in plan(sweep.ResolvedSweep.of(spec, uri=uri, storage=storage))["trials"]] == ["stale", "stale"]
    before = report(uri, spec.name, tmp_path / "report", versions=now)
    assert before["pairs"] == [] and len(before["stale"]) == 2 and "trains them again" in before["notes"][0]

    lines: list[str] = []
    second = sweep.run(sweep.ResolvedSweep.of(spec, text, uri=uri, storage=storage), verbose=0, say=lines.append)
    assert sorted(o.trial_id for o in second.ran) == sorted(old) and second.skipped == []
    assert any(l.startswith("2 finished trial(s) read data that has changed since they ran (data.local[en])")
               for l in lines)
    runs = tracking.SweepRuns(uri, spec.name).trials()
    assert {r.data.tags[tracking.DATA_VERSION] for r in runs} == set(now.values()) and len(runs) == 2
    c = tracking.client(uri)
    for r in runs:  # trained from step 0 on the new data, not resumed from the old data's last checkpoint
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val_loss")] == [4, 8]
    superseded = c.search_runs([runs[0].info.experiment_id],
                               filter_string=f"tags.`{tracking.ROLE}` = '{tracking.SUPERSEDED}'")
    assert len(superseded) == 2 and all(r.info.status == "FINISHED" for r in superseded)
    assert len(second.report["pairs"]) == 1 and second.report["stale"] == []
    assert [r["status"] for r in plan(sweep.ResolvedSweep.of(spec, uri=uri, storage=storage))["trials"]] == ["done", "done"]


def test_corpus_error_in_a_ray_task_is_one_line_before_any_trial(tmp_path, ray_local):
    from aot_ray.errors import DataError

    write_text(tmp_path / "corpora" / "en.txt", docs("en", 100))
    spec, text = load_sweep_text(ROOT / "sweeps" / "languages-local.yaml", [
        f"data.local.paths=['{tmp_path}/corpora/{{lang}}.txt']", "grid.language=[en]",
        "data.local.tokenizer.vocab_size=60000",
    ])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(DataError) as err:
        sweep.run(sweep.ResolvedSweep.of(spec, text, uri=uri, storage=str(tmp_path / "results")), verbose=0, say=lambda _: None)
    assert str(err.value).startswith("data.local.tokenizer.vocab_size: 60000 is more than this corpus supports")
    assert "\n" not in str(err.value)
    assert tracking.SweepRuns(uri, spec.name).trials() == []  # no sweep, no trial was started
    assert tracking.SweepRuns(uri, spec.name).experiment(create=False) is None
