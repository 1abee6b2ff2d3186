"""Reliability round 3, the fast part: --set on dotted grid axes and every documented --set example, the sweep
name's length, Tune state checks and checkpoint discovery, the own-Ray clean-up, the store watch, a read-only
store, the parent run a report reads, and eval_windows cut to the data."""

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aot_ray.tracking import lease as L
from aot_ray import tracking
from aot_ray.execution import own_ray
from aot_ray.execution import tune_state
from aot_ray.cli import main
from aot_ray.sweep.options import SET_HELP
from aot_ray.errors import SpecError, disk_full
from aot_ray.spec import expand, load_sweep, parse_sweep

from specs import tiny_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_set_addresses_a_dotted_grid_axis():
    spec = load_sweep(ROOT / "sweeps/quickstart.yaml", ["grid.optim.lr=[1.0e-3, 2.0e-3]", "grid.seed=[0]"])
    assert dict(spec.grid.overrides)["optim.lr"] == (1e-3, 2e-3) and spec.grid.seed == (0,)
    assert len(expand(spec)) == 2 * 2 * 2  # datasets x lr x directions


def test_set_prefers_an_existing_dotted_key_and_names_a_non_mapping():
    from aot_ray.spec.load import apply_sets

    raw = {"data": {"cc.100": {"paths": ["a"]}}, "grid": {"seed": [0]}}
    assert apply_sets(raw, ["data.cc.100.paths=[b]"])["data"]["cc.100"]["paths"] == ["b"]
    with pytest.raises(SpecError, match="grid.seed is not a mapping|empty field"):
        apply_sets(raw, ["grid..x=1"])


def _documented_sets() -> list[tuple[str, list[str]]]:
    """(where, the --set values) of every example in `aot-ray ... --help` and the command lines of README and
    the docs."""
    out = []
    for value in re.findall(r"--set (\S+?)[,;]?(?= |$)", SET_HELP):
        out.append(("aot-ray --help", shlex.split(value)))
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for line in (ln for page in pages for ln in page.read_text().splitlines()):
        if "--set" in line and "aot-ray" in line:
            cmd = line[line.index("aot-ray"):].strip("` $")
            words = shlex.split(cmd.split("`")[0])
            sets = [words[i + 1] for i, w in enumerate(words) if w == "--set" and i + 1 < len(words)]
            if sets:
                out.append((f"README: {cmd}", sets))
    return out


@pytest.mark.parametrize("where,sets", _documented_sets(), ids=lambda v: str(v)[:60])
def test_every_documented_set_example_loads(where, sets):
    """Each example is accepted by the sweep its line names, or (help) by one of the shipped sweeps."""
    named = [ROOT / w for w in re.findall(r"sweeps/[\w.-]+\.yaml", where)]
    errors = []
    for path in named or SWEEPS:
        try:
            load_sweep(path, sets)
            return
        except SpecError as e:
            errors.append(str(e))
    pytest.fail(f"{where}: no sweep accepts {sets}: {errors[:3]}")


def test_documented_sets_are_found():
    found = _documented_sets()
    assert any("grid.optim.lr" in s for _, sets in found for s in sets)
    assert any(w.startswith("README") for w, _ in found)


def test_a_long_sweep_name_is_refused_at_load(capsys, tmp_path):
    with pytest.raises(SpecError, match=r"^name: is 300 characters long; at most 100"):
        parse_sweep({**tiny_sweep("x"), "name": "a" * 300})
    f = tmp_path / "s.yaml"
    f.write_text(json.dumps({**tiny_sweep("x"), "name": "a" * 300}))
    assert main(["plan", str(f)]) == 2
    assert "at most 100" in capsys.readouterr().err


def test_tune_state_problem_and_set_aside(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    assert tune_state.problem(str(exp)) == "no experiment_state file"
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    (exp / "tuner.pkl").write_bytes(b"x")
    assert tune_state.problem(str(exp)) is None
    newest = exp / "experiment_state-2026-01-02_00-00-00.json"
    newest.write_text('{"trial_data": ["cut off')
    assert "JSONDecodeError" in tune_state.problem(str(exp)) and newest.name in tune_state.problem(str(exp))
    (exp / "trial-a").mkdir()
    aside = Path(tune_state.set_aside(str(exp)))
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        ["experiment_state-2026-01-01_00-00-00.json", newest.name, "tuner.pkl"])
    assert (exp / "trial-a").is_dir() and not newest.exists()


def test_trial_checkpoints_are_ordered_by_their_step(tmp_path):
    """Whatever Tune's names say: a rebuilt experiment numbers its checkpoints from 0 again, over older ones."""
    trial = tmp_path / "exp" / "t1"
    for name, step in (("checkpoint_000000", 300), ("checkpoint_000001", 100), ("checkpoint_000002", 200)):
        (trial / name).mkdir(parents=True)
        (trial / name / "meta.json").write_text(json.dumps({"step": step}))
    (trial / "checkpoint_000003").mkdir()
    (trial / "checkpoint_000003" / "meta.json").write_text("")  # cut off by a full disk: tried last
    got = [Path(p).name for p in tune_state.trial_checkpoints(str(tmp_path / "exp"), "t1")]
    assert got == ["checkpoint_000000", "checkpoint_000002", "checkpoint_000001", "checkpoint_000003"]
    assert tune_state.trial_checkpoints(str(tmp_path / "exp"), "missing") == []


def test_disk_full_names_the_path_and_size(tmp_path):
    e = disk_full(OSError(28, "No space left on device"), str(tmp_path / "x"), 3_000_000)
    assert e is not None and str(tmp_path / "x") in str(e) and "3.0 MB to write" in str(e) and "MB free" in str(e)
    assert disk_full(OSError(13, "Permission denied"), str(tmp_path)) is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc")
def test_own_ray_clean_up_stops_only_what_a_gone_driver_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(own_ray, "_state_dir", lambda: tmp_path)
    left = subprocess.Popen(["sleep", "60"])  # stands for a process of the killed driver's Ray
    other = subprocess.Popen(["sleep", "60"])  # someone else's: recorded with another start time
    dead = subprocess.Popen(["true"])
    dead.wait()
    note = {"driver": {"pid": dead.pid, "start": 1},
            "procs": [{"pid": left.pid, "start": own_ray._start_time(left.pid)},
                      {"pid": other.pid, "start": own_ray._start_time(other.pid) + 1}]}
    own_ray.record_path("k").write_text(json.dumps(note))
    try:
        assert own_ray.clean_up_left("k") == [left.pid]
        assert left.wait(10) is not None and other.poll() is None
        assert not own_ray.record_path("k").exists()
        # a driver that still runs keeps its processes
        note["driver"] = {"pid": os.getpid(), "start": own_ray._start_time(os.getpid())}
        note["procs"] = [{"pid": other.pid, "start": own_ray._start_time(other.pid)}]
        own_ray.record_path("k").write_text(json.dumps(note))
        assert own_ray.clean_up_left("k") == [] and other.poll() is None
    finally:
        for p in (left, other):
            p.kill()
            p.wait()


@pytest.mark.slow  # seconds: the full suite runs it
def test_the_store_watch_stops_a_driver_whose_sqlite_file_is_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CHECK_S", 0.05)
    uri = f"sqlite:///{tmp_path}/m.db"
    lost = []
    with L.Lease(uri, "sw", on_lost=lambda why, deadline: lost.append(why)) as held:
        held.acquire()
        time.sleep(0.3)
        assert held.lost is None and not lost
        (tmp_path / "m.db").unlink()
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
    assert lost == [f"database file {tmp_path}/m.db was deleted"] and held.lost == lost[0]


def test_a_deleted_store_recreated_empty_by_a_late_write_still_reads_as_deleted(tmp_path):
    """SQLite creates a missing file on the next connection: a store deleted under a running sweep is often back,
    empty, before the watch looks. A file that holds another MLflow store is a replacement."""
    uri = f"sqlite:///{tmp_path}/m.db"
    tracking.client(uri).search_experiments()  # creates the store
    before = L.sqlite_identity(uri)
    (tmp_path / "m.db").unlink()
    sqlite3.connect(tmp_path / "m.db").execute("CREATE TABLE t (x)").connection.close()  # a stray late write
    assert L.sqlite_gone(uri, before) == (f"database file {tmp_path}/m.db was deleted (a write after that left an "
                                          f"empty file in its place)")
    (tmp_path / "m.db").unlink()
    (tmp_path / "m.db").touch()  # an empty file: no tables at all
    assert "was deleted" in L.sqlite_gone(uri, before)
    other = f"sqlite:///{tmp_path}/other.db"
    tracking.client(other).search_experiments()
    os.replace(tmp_path / "other.db", tmp_path / "m.db")
    assert L.sqlite_gone(uri, before) == f"database file {tmp_path}/m.db was replaced by another file"
    assert not list(tmp_path.glob("*.db-journal"))  # the watch's read created nothing


@pytest.mark.slow  # seconds: the full suite runs it
def test_the_store_watch_gives_up_after_its_patience(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CHECK_S", 0.05)
    monkeypatch.setattr(L, "RENEW_S", 0.05)
    uri = f"sqlite:///{tmp_path}/m.db"
    lost = []
    with L.Lease(uri, "sw", patience_s=0.5, on_lost=lambda why, deadline: lost.append(why)) as held:
        held.acquire()

        def refuse(self, with_info):
            raise RuntimeError("attempt to write a readonly database")

        monkeypatch.setattr(L.Lease, "_write", refuse)
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
    assert lost and "could not be renewed for" in lost[0] and "readonly database" in lost[0]


def _fake_sweep(uri: str, name: str, finished: int) -> str:
    """A parent run with `finished` FINISHED trial runs, as the trainer leaves them (no training)."""
    raw = tiny_sweep(name)
    ctx = tracking.SweepRuns(uri, name).start(json.dumps(raw), fresh=True)
    c = tracking.client(uri)
    for t in expand(parse_sweep(raw))[:finished]:
        tags = {tracking.ROLE: "trial", "mlflow.parentRunId": ctx.parent_run_id, "sweep": name,
                "trial_id": t.trial_id, "pair_key": t.pair_key, "cell_key": t.cell_key, "direction": t.direction,
                "dataset": t.dataset, "model": t.model.preset, "context_length": str(t.context_length),
                "seed": str(t.seed)}
        run = c.create_run(ctx.experiment_id, run_name=t.trial_id, tags=tags)
        c.log_metric(run.info.run_id, "train_loss", 1.0, step=t.train.steps)
        c.log_metric(run.info.run_id, "val_loss", 1.0, step=t.train.steps)
        c.set_terminated(run.info.run_id, "FINISHED")
    tracking.end_sweep(ctx, "FINISHED")
    return ctx.parent_run_id


def test_report_and_status_name_the_parent_they_read_and_choose_with_parent(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    old = _fake_sweep(uri, "two", finished=1)
    time.sleep(0.01)
    new = _fake_sweep(uri, "two", finished=2)
    f = tmp_path / "two.yaml"
    f.write_text(json.dumps(tiny_sweep("two")))
    assert main(["status", str(f), "--tracking-uri", uri, "--json"]) == 0
    assert len([r for r in json.loads(capsys.readouterr().out) if r["state"] == "TERMINATED"]) == 2
    assert main(["status", str(f), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"parent run {new}" in out and "1 other parent run(s)" in out and old in out and "--parent" in out
    assert main(["status", str(f), "--tracking-uri", uri, "--json", "--parent", old[:8]]) == 0
    assert len([r for r in json.loads(capsys.readouterr().out) if r["state"] == "TERMINATED"]) == 1
    assert main(["report", str(f), "--tracking-uri", uri, "--no-plots", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert f"parent run {new}" in out and old in out
    assert main(["report", str(f), "--tracking-uri", uri, "--no-plots", "--parent", "nope"]) == 2
    assert "--parent nope: no parent run" in capsys.readouterr().err


@pytest.mark.slow  # seconds: the full suite runs it
def test_status_plan_and_report_work_on_a_read_only_store():
    import shutil
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        if os.environ.get("AOT_ROOT_TESTS") == "require":
            pytest.fail("runs the commands as an unprivileged user: needs root and setpriv (AOT_ROOT_TESTS=require)")
        pytest.skip("runs the commands as an unprivileged user: needs root and setpriv")
    tmp_path = Path(tempfile.mkdtemp(prefix="aot-ro-"))  # pytest's own tmp folders are closed to other users
    try:
        _read_only_store(tmp_path)
    finally:
        os.chmod(tmp_path / "store", 0o755)
        shutil.rmtree(tmp_path)


def _read_only_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store}/m.db"
    _fake_sweep(uri, "ro", finished=2)
    f = tmp_path / "ro.yaml"
    f.write_text(json.dumps(tiny_sweep("ro")))
    os.chmod(store, 0o555)  # read-only for anyone but root
    os.chmod(store / "m.db", 0o444)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "aot_ray.cli"]
    env = {**os.environ, "HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    os.chmod(tmp_path, 0o777)
    for args in (["status", str(f)], ["plan", str(f), "--storage", str(tmp_path / "r")],
                 ["report", str(f), "--no-plots", "--out", str(tmp_path / "out")]):
        p = subprocess.run([*as_nobody, *args, "--tracking-uri", uri], capture_output=True, text=True, timeout=120,
                           env=env, cwd=tmp_path)
        assert p.returncode == 0, (args, p.stderr[-2000:])
        if args[0] == "report":
            assert "read-only" in p.stdout
    p = subprocess.run([*as_nobody, "run", str(f), "--tracking-uri", uri], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    assert p.returncode == 2 and "is not writable" in p.stderr  # a run writes: refused before anything starts


def test_eval_windows_cut_to_the_split_is_planned_and_logged(tmp_path, capsys):
    from aot_ray.data.prepare import prepare
    from aot_ray.sweep import ResolvedSweep
    from aot_ray.sweep.plan import plan
    from aot_ray.train.loop import train
    from aot_ray.train.tracker_api import RecordingTracker

    raw = tiny_sweep("cut", train={"eval_windows": 10000, "steps": 6, "eval_every": 6})
    spec = parse_sweep(raw)
    result = plan(ResolvedSweep.of(spec, uri=f"sqlite:///{tmp_path}/none.db", storage=str(tmp_path / "r")))
    ew = result["trials"][0]["eval_windows"]
    assert ew["requested"] == 10000 and ew["effective"] < 10000
    trial = expand(spec)[0]
    m = RecordingTracker()
    train(trial, m, None, data=prepare(trial.data, tmp_path / "r")[0].location, workdir=tmp_path / "w")
    assert m.params["train.eval_windows"] == ew["effective"] and m.params["train.eval_windows_requested"] == 10000
    f = tmp_path / "cut.yaml"
    f.write_text(json.dumps(raw))
    assert main(["plan", str(f), "--storage", str(tmp_path / "r")]) == 0
    assert f"train.eval_windows 10000 -> {ew['effective']}" in capsys.readouterr().out


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_checkpoint_fallback_works_on_a_uri(tmp_path, scheme):
    """On a bucket (here fsspec's memory file system, and a file:// URI) as on a disk: a trial's checkpoints are
    found by their step, the newest downloaded, and a corrupt newest one falls back to the one before."""
    import fsspec
    import torch

    from aot_ray.train import checkpoint as ckpt

    local = tmp_path / "src"
    for step in (10, 20):
        ckpt.write(local / f"step-{step}", {"model": {"w": torch.full((2,), float(step))}}, {"step": step})
    (local / "step-20" / "state.pt").write_bytes(b"cut off")  # the newest is damaged
    root = f"memory://aot-{tmp_path.name}/exp" if scheme == "memory" else (tmp_path / "bucket" / "exp").as_uri()
    fs, base = fsspec.core.url_to_fs(root)
    for i, step in enumerate((10, 20)):
        fs.put(str(local / f"step-{step}") + "/", f"{base}/t1/checkpoint_{i:06d}/", recursive=True)
    found = tune_state.trial_checkpoints(root, "t1")
    assert len(found) == 2 and all(Path(p).is_dir() for p in found)  # local copies, newest step first
    with pytest.warns(UserWarning, match="falling back"):
        state, meta, _ = ckpt.read_first_valid(found)
    assert meta["step"] == 10 and float(state["model"]["w"][0]) == 10.0
    tune_state.drop_trial_checkpoints(root, ["t1"])
    assert tune_state.trial_checkpoints(root, "t1") == []
