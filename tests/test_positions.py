"""Position encodings as an axis (`position`, or `model.position`): expansion and identity, the trainer on each
encoding, what `plan` shows, and bad input (rope or none on a recurrent model) as one line naming the field."""

import subprocess
import sys

import pytest
import yaml

from aot_ray.errors import SpecError
from aot_ray.spec import expand, parse_sweep

from specs import tiny_sweep


def test_the_position_axis_multiplies_cells_and_learned_keeps_its_ids():
    plain = expand(parse_sweep(tiny_sweep("pos")))
    trials = expand(parse_sweep(tiny_sweep("pos", grid={"position": ["learned", "rope", "none"]})))
    assert len(trials) == 3 * len(plain)
    assert {t.model.position for t in trials} == {"learned", "rope", "none"}
    assert len({t.cell_key for t in trials}) == 3  # each encoding is a cell of its own: pairs never mix them
    assert all(dict(t.axes)["model.position"] == t.model.position for t in trials)
    # learned is what every GPT had before the axis: without the axis in the slug, the ids are the same content
    dotted = expand(parse_sweep(tiny_sweep("pos", grid={"model.position": ["learned"]})))
    same = expand(parse_sweep(tiny_sweep("pos", model={"position": "learned"})))
    assert [t.trial_id for t in same] == [t.trial_id for t in plain]
    assert [t.trial_id.rsplit("-", 1)[1] for t in dotted] == [t.trial_id.rsplit("-", 1)[1] for t in plain]


@pytest.mark.parametrize("change,message", [
    ({"grid": {"position": ["alibi"]}}, "grid.position[0]: must be one of learned, rope, none; got 'alibi'"),
    ({"grid": {"position": ["rope"], "model.position": ["none"]}}, "grid.position: is the model.position axis"),
    ({"grid": {"position": ["rope"], "model": ["tiny", "lstm-tiny"]}},
     "grid.model.position: position rope does not apply to LSTM preset 'lstm-tiny'"),
    ({"model": {"position": "none"}, "grid": {"model": ["gru-tiny"]}},
     "defaults.model.position: position none does not apply to GRU preset 'gru-tiny'"),
])
def test_bad_positions_are_one_line_naming_the_field(change, message):
    raw = tiny_sweep("bad", model=change.get("model"), grid=change.get("grid"))
    with pytest.raises(SpecError) as err:
        parse_sweep(raw)
    assert str(err.value).startswith(message), str(err.value)


def test_plan_refuses_rope_on_an_lstm_in_one_line_and_starts_nothing(tmp_path):
    raw = tiny_sweep("bad", grid={"position": ["rope"], "model": ["lstm-tiny"]})
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(raw))
    for cmd in ("plan", "run"):
        out = subprocess.run([sys.executable, "-m", "aot_ray.cli", cmd, str(f), "--storage", str(tmp_path / "s"),
                              "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], capture_output=True, text=True)
        assert out.returncode == 2
        (line,) = out.stderr.strip().splitlines()
        assert "grid.model.position: position rope does not apply to LSTM" in line
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "s").exists()


def test_each_encoding_trains_through_the_trainer_and_is_logged(tmp_path):
    from aot_ray.data.prepare import prepare
    from aot_ray.models import count_params, resolve_shape
    from aot_ray.train import RecordingTracker, train

    trials = expand(parse_sweep(tiny_sweep("pos", train={"steps": 30, "eval_every": 10, "checkpoint_every": 0},
                                           grid={"position": ["learned", "rope", "none"],
                                                 "direction": ["forward"]})))
    data = prepare(trials[0].data, tmp_path / "r")[0]
    for t in trials:
        tracker = RecordingTracker()
        result = train(t, tracker, data=data, workdir=tmp_path / t.model.position)
        curve = [v for _, v in tracker.metrics["val_loss"]]
        assert curve[-1] < curve[0], (t.model.position, curve)  # it learns
        assert tracker.params["model.position"] == t.model.position
        assert result.n_params == count_params(resolve_shape(t.model), data.vocab_size, 32)


def test_plan_shows_the_position_column(tmp_path, capsys):
    from aot_ray.sweep import ResolvedSweep
    from aot_ray.sweep.commands import plan_command

    raw = tiny_sweep("pos", grid={"position": ["learned", "none"], "direction": ["forward"]})
    sweep = ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=f"sqlite:///{tmp_path}/m.db",
                             storage=str(tmp_path / "s"))
    assert plan_command(sweep) == 0
    text = capsys.readouterr().out
    assert "model.position" in text.splitlines()[0]
    rows = [ln for ln in text.splitlines() if "-s0-" in ln]
    assert any(" learned " in r for r in rows) and any(" none " in r for r in rows)
