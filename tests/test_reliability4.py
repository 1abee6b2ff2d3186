"""Reliability round 4, the fast part: bad input refused at load with the field named, names from outside kept
under their storage root, the lease's rules (a live driver keeps its sweep, renewal checks ownership, bounded
I/O), the stop notice's bookkeeping, a deleted run ends its trial, the stall watch, failed cells in the report,
a checkpoint fall-back in the driver's output, documents in bounded pieces, MLflow credentials' files."""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aot_ray import tracking
from aot_ray.cli import main
from aot_ray.errors import DataError, RunGone, SpecError, StorageError
from aot_ray.spec import parse_sweep
from aot_ray.storage import Storage, under
from aot_ray.tracking import lease as L

from specs import tiny_sweep

ROOT = Path(__file__).resolve().parents[1]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    return err


# ---------------------------------------------------------------- bad input, refused at load


def test_a_context_of_one_token_is_refused_naming_the_axis():
    with pytest.raises(SpecError, match=r"grid.context_length\[1\]: must be at least 2, got 1: a window of one"):
        parse_sweep(tiny_sweep("c1", grid={"context_length": [32, 1]}))


@pytest.mark.parametrize("where,sets", [("defaults.optim.beta1", {"optim": {"beta1": 1.0}}),
                                        ("defaults.optim.beta2", {"optim": {"beta2": 1.5}})])
def test_betas_of_one_or_more_are_refused(where, sets):
    with pytest.raises(SpecError, match=rf"{where}: must be less than 1, got"):
        parse_sweep(tiny_sweep("b", **sets))
    parse_sweep(tiny_sweep("b", optim={"beta1": 0.0, "beta2": 0.999}))  # the edges that torch takes


def test_a_beta_of_one_on_a_grid_axis_is_refused():
    with pytest.raises(SpecError, match=r"grid.optim.beta2\[1\]: must be less than 1"):
        parse_sweep(tiny_sweep("b", grid={"optim.beta2": [0.95, 1.0]}))


def test_a_sweep_file_over_the_size_limit_is_refused_before_parsing(tmp_path, capsys):
    from aot_ray.spec.load import MAX_SWEEP_BYTES

    big = tmp_path / "big.yaml"
    with big.open("w") as f:  # 270k keys, as in the report: parsing it took 21 s and 517 MB
        f.write("name: big\nx:\n")
        for i in range(270_000):
            f.write(f"  k{i}: {i}\n")
    assert big.stat().st_size > MAX_SWEEP_BYTES
    t0 = time.perf_counter()
    assert main(["plan", str(big)]) == 2
    took = time.perf_counter() - t0
    assert "a sweep file may have at most 1 MiB" in _err(capsys)
    assert took < 2.0  # not parsed (a correctness check, not a benchmark: parsing takes 20 s)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_fifo_or_a_directory_as_a_corpus_says_what_it_is(tmp_path, capsys, kind):
    path = tmp_path / "corpus"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    raw = {"name": "k", "data": {"c": {"kind": "text", "paths": [str(path)], "tokenizer": {"vocab_size": 300}}},
           "grid": {"dataset": ["c"], "model": ["micro"], "context_length": [16]}}
    (tmp_path / "s.yaml").write_text(json.dumps(raw))
    assert main(["plan", str(tmp_path / "s.yaml"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = _err(capsys)
    want = "is a FIFO (a named pipe), not a regular file" if kind == "fifo" else "is a directory (name the files"
    assert f"data.c.paths[0]: {path} {want}" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="root reads every file: the rule is about root")
def test_root_reads_no_private_file_as_a_corpus(tmp_path):
    from aot_ray.data.sources import resolve_paths
    from aot_ray.spec import TextData

    with pytest.raises(DataError, match=r"/etc/shadow is a private file \(mode 0640"):
        resolve_paths(TextData(paths=("/etc/shadow",)), "data.x")
    key = tmp_path / "key.txt"
    key.write_text("secret\n")
    key.chmod(0o600)
    with pytest.raises(DataError, match="chmod o\\+r"):
        resolve_paths(TextData(paths=(str(key),)), "data.x")
    key.chmod(0o644)
    assert resolve_paths(TextData(paths=(str(key),)), "data.x") == [str(key)]


@pytest.fixture
def read_only_root(tmp_path):
    """A read-only mount (a tmpfs mounted ro): root only; .ci/run requires it (AOT_ROOT_TESTS=require)."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        if os.environ.get("AOT_ROOT_TESTS") == "require":
            pytest.fail("mounting a read-only tmpfs needs root (AOT_ROOT_TESTS=require)")
        pytest.skip("mounting a read-only tmpfs needs root")
    yield where
    subprocess.run(["umount", "-l", str(where)])


@pytest.mark.parametrize("command", ["run", "prepare"])
def test_a_read_only_storage_root_is_one_line_before_anything_starts(tmp_path, capsys, read_only_root, command):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps(tiny_sweep("ro")))
    args = [command, str(sweep), "--storage", str(read_only_root)]
    if command == "run":
        args += ["--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--num-cpus", "1"]
    assert main(args) == 2
    assert f"cannot use storage {read_only_root}: Read-only file system" in _err(capsys)


# ---------------------------------------------------------------- nothing written outside storage


@pytest.mark.parametrize("name", ["../../../escape", "..", ".", "a/b", "/etc", "x\\y", " x", ""])
def test_names_from_outside_stay_under_their_root(tmp_path, name):
    s = Storage.of(tmp_path / "S")
    for build in (lambda: s.reports(name), lambda: s.experiment(name), lambda: under(s.root, name, what="trial id")):
        with pytest.raises(StorageError, match="cannot name a folder under storage"):
            build()
    assert s.reports("quickstart") == tmp_path / "S" / "reports" / "quickstart"


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_report_of_an_experiment_named_to_escape_writes_nothing(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    c = tracking.client(uri)
    exp = c.create_experiment("../../../escape", tags={"sweep": "../../../escape"})
    run = c.create_run(exp, tags={"sweep": "../../../escape", tracking.ROLE: "sweep"})
    c.set_terminated(run.info.run_id)
    storage = tmp_path / "S" / "a" / "b"
    capsys.readouterr()  # MLflow's lines as it made the store
    assert main(["report", "../../../escape", "--tracking-uri", uri, "--storage", str(storage)]) == 2
    assert "sweep name '../../../escape' cannot name a folder under storage" in _err(capsys)
    assert not (tmp_path / "S" / "escape").exists() and not any((tmp_path / "S").rglob("*.csv"))


# ---------------------------------------------------------------- one driver per sweep: the lease's rules


@pytest.fixture
def quick_lease(monkeypatch):
    monkeypatch.setattr(L, "SETTLE_S", 0.05)
    monkeypatch.setattr(L, "CHECK_S", 0.05)


def _start_ticks(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_an_expired_lease_of_a_live_driver_on_this_machine_still_refuses(tmp_path, quick_lease):
    uri = f"sqlite:///{tmp_path}/m.db"
    c = tracking.client(uri)
    exp = tracking.SweepRuns(uri, "sw").experiment(create=True)
    frozen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a driver frozen (SIGSTOP)
    try:
        info = {"token": "t", "who": f"aot-ray run on here (pid {frozen.pid})", "since": time.time() - 900,
                "host": socket.gethostname(), "pid": frozen.pid, "start": _start_ticks(frozen.pid)}
        c.set_experiment_tag(exp, L.LEASE, json.dumps(info))
        c.set_experiment_tag(exp, L.RENEWED, repr(time.time() - L.TTL_S - 300))  # expired long ago
        h = L.holder(uri, "sw")
        assert h is not None and h.alive_here and "still alive on this machine" in h.describe()
        with pytest.raises(Exception, match="already being run by .*expired, but its process is still alive"):
            L.Lease(uri, "sw").acquire()
        # a process of that pid with another start time is another process: no lease
        c.set_experiment_tag(exp, L.LEASE, json.dumps({**info, "start": info["start"] + 1}))
        assert L.holder(uri, "sw") is None
    finally:
        frozen.kill()
        frozen.wait()
    c.set_experiment_tag(exp, L.LEASE, json.dumps(info))
    c.set_experiment_tag(exp, L.RENEWED, repr(time.time()))
    assert L.holder(uri, "sw") is None  # renewed just now, but its process is gone


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_renewal_checks_the_lease_is_still_its_own(tmp_path, quick_lease, monkeypatch):
    monkeypatch.setattr(L, "RENEW_S", 0.1)
    uri = f"sqlite:///{tmp_path}/m.db"
    lost = []
    with L.Lease(uri, "sw", on_lost=lambda why, deadline: lost.append((why, deadline))) as held:
        held.acquire()
        exp = tracking.SweepRuns(uri, "sw").experiment(create=False)
        other = {"token": "other", "who": "aot-ray run on elsewhere (pid 7)", "since": time.time(), "host": "x",
                 "pid": 7}
        tracking.client(uri).set_experiment_tag(exp, L.LEASE, json.dumps(other))
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        renewed = float(tracking.client(uri).get_experiment(exp).tags[L.RENEWED])
    assert lost and "another driver took the sweep's lease (aot-ray run on elsewhere (pid 7))" in lost[0][0]
    assert held.lost == lost[0][0]
    time.sleep(0.3)
    # it wrote nothing more, and released nothing that is not its own
    assert float(tracking.client(uri).get_experiment(exp).tags[L.RENEWED]) == renewed
    assert json.loads(tracking.client(uri).get_experiment(exp).tags[L.LEASE])["token"] == "other"


def test_lease_io_is_bounded_on_a_server_that_never_answers(monkeypatch):
    monkeypatch.setattr(L, "IO_TIMEOUT_S", 1.0)
    with socket.socket() as blackhole:  # accepts connections (the kernel's backlog) and never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        uri = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="did not answer within 1 s"):
            L.holder(uri, "sw")
        assert time.monotonic() - t0 < 3


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_a_driver_whose_renewals_hang_gives_up_within_its_patience(tmp_path, quick_lease, monkeypatch):
    monkeypatch.setattr(L, "RENEW_S", 0.1)
    monkeypatch.setattr(L, "RETRY_S", 0.1)
    monkeypatch.setattr(L, "IO_TIMEOUT_S", 0.3)
    uri = f"sqlite:///{tmp_path}/m.db"
    lost = []
    with L.Lease(uri, "sw", patience_s=1.0, on_lost=lambda why, deadline: lost.append((why, deadline))) as held:
        held.acquire()
        monkeypatch.setattr(L, "_raw", lambda uri, sweep: time.sleep(60))  # a store that hangs
        t0 = time.monotonic()
        while not lost and time.monotonic() - t0 < 10:
            time.sleep(0.05)
    assert lost and time.monotonic() - t0 < 3, lost
    why, deadline = lost[0]
    assert "could not be renewed for" in why and "did not answer within" in why
    # its trials must have stopped MARGIN_S before the lease it last wrote expires
    assert deadline - time.monotonic() < L.TTL_S - L.MARGIN_S


def test_patience_leaves_the_trials_time_to_stop_before_the_lease_expires():
    assert L.MAX_PATIENCE_S + L.STOP_GRACE_S + L.MARGIN_S == L.TTL_S
    assert L.Lease("sqlite:////x", "s", patience_s=80).patience_s == L.MAX_PATIENCE_S
    with pytest.raises(SpecError, match="run.tracking_patience_s: must be at most 65"):
        parse_sweep({**tiny_sweep("p"), "run": {"tracking_patience_s": 80}})


# ---------------------------------------------------------------- the stop notice


def test_the_stop_notice_waits_for_every_running_trial_and_no_longer(tmp_path):
    from aot_ray.execution.notices import StopNotice, notice_check

    notice = StopNotice(str(tmp_path / "exp"))
    seen = notice_check(notice.path, every_s=0.0)
    assert not seen()
    notice.started("a")
    notice.started("b")
    notice.ended("b")  # finished before the stop: nothing to wait for
    notice.started("c")
    threading.Timer(0.2, notice.ack, ("a", 120)).start()
    notice.post("store lost")
    assert seen() and json.loads(Path(notice.path).read_text())["why"] == "store lost"
    t0 = time.monotonic()
    acks, missing = notice.wait(time.monotonic() + 1.0)
    assert acks == {"a": 120} and missing == {"c"} and 0.9 < time.monotonic() - t0 < 3
    notice.clear()
    assert not Path(notice.path).exists()


def test_a_notice_check_looks_at_most_every_so_often(tmp_path):
    from aot_ray.execution.notices import notice_check

    path = tmp_path / ".aot-stop"
    seen = notice_check(str(path), every_s=3600)
    assert not seen()
    path.write_text("{}")
    assert not seen()  # not looked again yet
    assert notice_check(str(path), every_s=3600)()  # a new look sees it


# ---------------------------------------------------------------- trackers: a deleted run, the flush clock


def _tracker(tmp_path, **kw):
    from specs import tiny_trials

    (trial,) = [t for t in tiny_trials("tr") if t.direction == "forward"]
    ctx = tracking.SweepRuns(f"sqlite:///{tmp_path}/m.db", "tr").start("x")
    tr = tracking.TrialTracker(ctx, trial, **kw)
    tr.begin(None)
    return tr


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_writes_to_a_deleted_run_end_the_trial_at_once(tmp_path):
    tr = _tracker(tmp_path)
    tr.client.delete_run(tr.run_id)  # a second driver's doing, or a person's
    tr.log_metrics({"train_loss": 1.0}, step=5)
    t0 = time.monotonic()
    with pytest.raises(RunGone, match=rf"its MLflow run {tr.run_id} was deleted .* this attempt ends here"):
        tr.finish()
    assert time.monotonic() - t0 < 10  # not the 600 s of patience an outage gets


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_metrics_reach_the_store_every_flush_s_between_evaluations(tmp_path):
    tr = _tracker(tmp_path, flush_s=0.3)
    tr.log_metrics({"train_step": 5}, step=5)
    assert not tr.client.get_metric_history(tr.run_id, "train_step")  # buffered
    time.sleep(0.35)
    tr.log_metrics({"train_step": 10}, step=10)
    assert [m.step for m in tr.client.get_metric_history(tr.run_id, "train_step")] == [5, 10]


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_a_checkpoint_carries_what_the_store_did_not_take_and_a_resume_replays_it(tmp_path, monkeypatch):
    tr = _tracker(tmp_path)
    tr.log_metrics({"val_loss": 2.0, "eval_step": 20}, step=20)
    tr.log_metrics({"train_loss": 1.9}, step=20)
    assert tr.flush() and tr.carry()["confirmed"] == 20 and tr.carry()["metrics"] == []
    real = tr.client.log_batch
    monkeypatch.setattr(tr.client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    with pytest.warns(UserWarning, match="kept for the next flush"):
        for step in (25, 30):
            tr.log_metrics({"train_loss": 1.0 / step}, step=step)
        tr.log_dict({"step": 30}, "eval/windows/step-00000030.json")
        assert not tr.flush()
    carried = json.loads(json.dumps(tr.carry()))  # it travels inside a checkpoint
    assert carried["confirmed"] == 20 and [m[3] for m in carried["metrics"]] == [25, 30]
    monkeypatch.setattr(tr.client, "log_batch", real)
    again = tracking.TrialTracker(tr.ctx, tr.trial)
    again.begin(30, tr.run_id)
    again.replay(carried)
    again.replay(carried)  # twice (a second resume from the same checkpoint): still each step once
    steps = sorted(m.step for m in again.client.get_metric_history(tr.run_id, "train_loss"))
    assert steps == [20, 25, 30]
    assert {a.path for a in again.client.list_artifacts(tr.run_id, "eval/windows")} == {
        "eval/windows/step-00000030.json"}


# ---------------------------------------------------------------- the stall watch


def test_a_trial_without_progress_gets_one_warning_per_stall():
    from aot_ray.execution.progress import Stalls

    s = Stalls(after_s=100)
    assert s.see({"a": 10, "b": None}, now=0) == []
    assert s.see({"a": 20, "b": None}, now=10) == []  # a moved after 10 s
    assert s.see({"a": 20, "b": None}, now=99) == []
    warned = s.see({"a": 20, "b": None}, now=160)  # a: 150 s idle (>= 100 and >= 5 x 10); b: 160 s
    assert len(warned) == 2 and "trial a has made no progress for 150 s (step 20)" in warned[0]
    assert "trial b has made no progress for 160 s (before its first logged step)" in warned[1]
    assert s.see({"a": 20, "b": None}, now=400) == []  # once per stall
    assert s.see({"a": 30}, now=410) == []  # a moved again: re-armed (its longest wait is now 400 s)
    assert s.see({"a": 30}, now=2000) == []  # 1590 s < 5 x 400: a trial that logs rarely is not flagged for it
    assert len(s.see({"a": 30}, now=2500)) == 1
    assert Stalls(after_s=0).see({"a": 1}, now=0) == [] and Stalls(after_s=0).see({"a": 1}, now=1e9) == []


# ---------------------------------------------------------------- the report names failed cells


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_cells_whose_every_trial_failed_are_named_in_the_report(tmp_path):
    from aot_ray.aggregate import render, report
    from aot_ray.spec import expand

    uri = f"sqlite:///{tmp_path}/m.db"
    raw = tiny_sweep("fc", grid={"context_length": [16, 32]})
    ctx = tracking.SweepRuns(uri, "fc").start(json.dumps(raw))
    for t in expand(parse_sweep(raw)):
        tr = tracking.TrialTracker(ctx, t)
        tr.begin(None)
        if t.context_length == 32:
            tr.finish("FAILED", error="Traceback ...\nOutOfMemory: cpu out of memory at step 3")
        else:
            tr.log_metrics({"val_loss": 2.0 if t.direction == "forward" else 2.1, "eval_step": 40, "tokens": 1},
                           step=40)
            tr.log_metrics({"final_val_loss": 2.0 if t.direction == "forward" else 2.1}, step=40)
            tr.log_dict({"loss": [2.0, 2.2]}, "eval/per_window.json")
            tr.finish()
    tracking.end_sweep(ctx, "FAILED")
    result = report(uri, "fc", tmp_path / "out", with_plots=False)
    (cell,) = result["failed_cells"]
    assert cell["lost"] and len(cell["trials"]) == 2 and cell["error"] == "OutOfMemory: cpu out of memory at step 3"
    assert "c32" in cell["cell_key"]
    text = render(result)
    assert f"failed: cell {cell['cell_key']}: every trial failed (2), so it is in no table" in text
    assert "OutOfMemory: cpu out of memory at step 3" in (tmp_path / "out" / "report.md").read_text()


# ---------------------------------------------------------------- a checkpoint fall-back in the driver's output


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_a_checkpoint_skipped_on_resume_is_a_note_in_the_first_report(tmp_path):
    from aot_ray.data.prepare import prepare
    from aot_ray.train import RecordingTracker, train
    from aot_ray.train.tracker_api import NOTE
    from specs import tiny_trials

    (trial,) = [t for t in tiny_trials("fb") if t.direction == "forward"]
    data = prepare(trial.data, tmp_path / "store")[0]
    train(trial, RecordingTracker(), data=data, workdir=tmp_path / "w")
    saved = sorted((tmp_path / "w").glob("step-*"))  # at evaluations (every 20), the newest 2: steps 20 and 40
    (saved[-1] / "state.pt").write_bytes(b"garbled")
    reports = []
    train(trial, RecordingTracker(), [saved[-1], saved[-2]], data=data, on_report=lambda m, p: reports.append(m))
    assert "skipped unreadable checkpoint step-00000040" in reports[0][NOTE]
    assert reports[0][NOTE].endswith("resumed from the checkpoint at step 20")
    assert all(NOTE not in r for r in reports[1:])


def test_the_driver_prints_a_trials_note_in_one_line():
    from aot_ray.execution.notices import trial_notes

    said = []
    cb = trial_notes(said.append)

    class T:
        config = {"trial_id": "t1"}

    cb.on_trial_result(0, [], T(), {"aot_note": "skipped unreadable checkpoint x: resumed from step 30"})
    cb.on_trial_result(0, [], T(), {"val_loss": 1.0})
    assert said == ["trial t1: skipped unreadable checkpoint x: resumed from step 30"]


# ---------------------------------------------------------------- documents in bounded pieces


def test_pieces_cut_where_bpe_would_split_anyway():
    from aot_ray.data.pieces import Fragment, cut_point, pieces

    text = "alpha beta  gamma delta epsilon"
    i = cut_point(text, 14)
    assert text[i] == " " and not text[i - 1].isspace() and i <= 14
    j = cut_point(text, 14, reverse=True)
    assert text[j - 1] == " " and not text[j].isspace() and j <= 14
    assert cut_point("x" * 40, 10) == 10  # no space in reach: a hard cut
    docs = [Fragment("alpha beta gamma ", False), Fragment("delta epsilon zeta", True), Fragment("eta theta", True)]
    got = list(pieces(docs, limit=12))
    assert all(len(p.text) <= 12 for p in got)
    assert "".join(p.text for p in got if p.doc == 0) == "alpha beta gamma delta epsilon zeta"
    assert [p.last for p in got if p.doc == 0][-1] and sum(p.last for p in got) == 2
    rev = list(pieces(docs, reverse=True, limit=12))
    assert "".join(p.text for p in rev if p.doc == 0) == "alpha beta gamma delta epsilon zeta"[::-1]


def test_a_document_held_whole_spills_to_disk(monkeypatch):
    from aot_ray.data import pieces as P

    monkeypatch.setattr(P, "PIECE", 8)
    held = P.Spill()
    for part in ("abc ", "defgh ", "ijklmn ", "é"):
        held.add(part)
    assert held._file is not None  # beyond PIECE characters: on disk
    assert list(held.forward()) == ["abc ", "defgh ", "ijklmn ", "é"]
    assert list(held.backward()) == ["é", "ijklmn ", "defgh ", "abc "]
    held.close()


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_a_one_line_corpus_prepares_to_the_same_ids_in_pieces(tmp_path, monkeypatch):
    from aot_ray.data import pieces as P
    from aot_ray.data import sources
    from aot_ray.data.prepare import prepare
    from aot_ray.spec import TextData, TokenizerSpec

    words = ["the", "arrow", "of", "time", "naïve", "über", "x1", "—"]
    lines = [" ".join(words[(i * 7 + k) % len(words)] for k in range(3000)) for i in range(40)]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    for rev in (False, True):
        data = TextData(paths=(str(tmp_path / "c.txt"),), doc_sep="line",
                        tokenizer=TokenizerSpec(vocab_size=280, reverse_chars=rev))
        whole = prepare(data, tmp_path / f"whole-{rev}")[0]
        monkeypatch.setattr(P, "PIECE", 500)  # each document of ~17k characters in ~40 pieces
        monkeypatch.setattr(sources, "PIECE", 500)
        cut = prepare(data, tmp_path / f"cut-{rev}")[0]
        monkeypatch.undo()
        assert (whole.path / "tokenizer.json").read_bytes() == (cut.path / "tokenizer.json").read_bytes()
        for split in ("train", "val"):
            assert (whole.path / f"{split}.bin").read_bytes() == (cut.path / f"{split}.bin").read_bytes()
        assert whole.manifest["documents"] == cut.manifest["documents"]


# ---------------------------------------------------------------- MLflow credentials' files


def test_server_credentials_are_private_and_a_record_finds_them(tmp_path, monkeypatch):
    from aot_ray.tracking import credentials as C

    monkeypatch.setenv("AOT_MLFLOW_CREDENTIALS", str(tmp_path / "home" / "creds.json"))
    monkeypatch.delenv(C.USERNAME, raising=False)
    monkeypatch.delenv(C.PASSWORD, raising=False)
    env = C.server_env(tmp_path / "srv")
    first = json.loads((tmp_path / "srv" / "credentials.json").read_text())
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == first["password"] and len(first["password"]) >= 24
    assert C.server_env(tmp_path / "srv")["MLFLOW_AUTH_ADMIN_PASSWORD"] == first["password"]  # generated once
    assert "default_permission = NO_PERMISSIONS" in (tmp_path / "srv" / "basic_auth.ini").read_text()
    for p, mode in ((tmp_path / "srv", 0o700), (tmp_path / "srv" / "credentials.json", 0o600),
                    (tmp_path / "srv" / "basic_auth.ini", 0o600)):
        assert stat.S_IMODE(p.stat().st_mode) == mode, p
    C.register("http://10.0.0.1:5000", tmp_path / "srv")
    C.register("http://10.0.0.2:5000/", tmp_path / "srv")  # the same server, moved: the old address goes
    assert list(json.loads((tmp_path / "home" / "creds.json").read_text())) == ["http://10.0.0.2:5000"]
    assert C.use_for("http://10.0.0.1:5000") is None and C.use_for("sqlite:///x") is None
    assert C.use_for("http://10.0.0.2:5000") == "aot" and os.environ[C.PASSWORD] == first["password"]


@pytest.mark.slow  # two preparations in processes of their own (seconds)
def test_preparing_one_huge_document_takes_the_memory_of_small_ones(tmp_path):
    from aot_ray.bench.prepare import _prepare_peak, make_corpus

    make_corpus(tmp_path / "words.txt", 8)
    line = " ".join((tmp_path / "words.txt").read_text(encoding="utf-8").split())
    (tmp_path / "one.txt").write_text(line)  # one 8 MB document: the old reader held it, its encodings, whole
    (tmp_path / "docs.txt").write_text("\n".join(line[i:i + 2000].strip() for i in range(0, len(line), 2000)))
    one = _prepare_peak(tmp_path / "one.txt", "line", tmp_path / "s1")
    docs = _prepare_peak(tmp_path / "docs.txt", "line", tmp_path / "s2")
    assert one < docs + 100, (one, docs)  # MB: bytes in flight, not the document (it was about 1.5 GB here)


@pytest.mark.slow  # seconds (a store, threads, training): the full suite runs it
def test_a_graceful_stop_waits_for_checkpoints_and_exits_at_the_deadline_if_tune_hangs(tmp_path, monkeypatch):
    from aot_ray.execution import notices as N

    said, exited = [], []
    monkeypatch.setattr(N, "stop_tune", lambda: True)  # Tune runs, and is asked to stop
    monkeypatch.setattr(N, "TUNE_STOP_S", 0.5)
    monkeypatch.setattr(N.os, "_exit", exited.append)
    stop = N.GracefulStop(said.append)
    notice = N.StopNotice(str(tmp_path / "exp"))
    notice.started("t1")
    notice.started("t2")
    with stop.tune(notice):
        threading.Timer(0.2, notice.ack, ("t1", 1205)).start()
        t0 = time.monotonic()
        stop.stop("the lease could not be renewed for 61 s (connection refused)", time.monotonic() + N.TUNE_STOP_S + 1)
        took = time.monotonic() - t0
    assert Path(notice.path).exists()  # the trials were told
    assert said[0] == ("aot-ray: the lease could not be renewed for 61 s (connection refused): stopping the sweep "
                       "before its lease expires; 1 of 2 running trial(s) checkpointed (t1 at step 1205); the others "
                       "resume from their last checkpoint: t2")
    assert "Tune did not stop within the lease" in said[1] and exited == [N.LOST_EXIT]  # it never ended
    assert 1.4 < took < 3  # acks until 0.5 s before the deadline, then Tune until the deadline

    said.clear()
    exited.clear()
    with stop.tune(None):  # Tune ends in time: no exit
        threading.Timer(0.3, stop._tune_ended.set).start()
        stop.stop("store lost", time.monotonic() + 5)
    assert exited == [] and said == ["aot-ray: store lost: stopping the sweep before its lease expires"]


def test_a_notice_check_answers_the_largest_code_posted(tmp_path):
    """A trial's look at the sweep's stop notice and its node's drain notice: a drain asks it to move, the
    sweep's stop wins where both are posted, a data-parallel worker looks at its own node and its driver's."""
    from aot_ray.execution.drains import drain_path, trial_notice
    from aot_ray.execution.notices import notice_check, stop_path
    from aot_ray.train.tracker_api import NOTICE_MOVE, NOTICE_STOP

    root = str(tmp_path)
    look = notice_check({stop_path(root): NOTICE_STOP, drain_path(root, "ab12"): NOTICE_MOVE}, every_s=0.0)
    assert look() == 0
    Path(drain_path(root, "ab12")).parent.mkdir()
    Path(drain_path(root, "cd34")).write_text("{}")  # another node's
    assert look() == 0
    Path(drain_path(root, "ab12")).write_text("{}")
    assert look() == NOTICE_MOVE
    Path(stop_path(root)).write_text("{}")
    assert look() == NOTICE_STOP
    worker = trial_notice(root, "ef56", "cd34")  # a data-parallel worker: its driver's node drains
    assert worker() == NOTICE_STOP
    Path(stop_path(root)).unlink()
    assert trial_notice(root, "ef56", "cd34")() == NOTICE_MOVE and trial_notice(root, "ef56", None)() == 0
    with pytest.raises(Exception, match="Ray node id"):
        drain_path(root, "../x")


def test_the_drain_watch_posts_each_draining_node_once_and_clears_an_earlier_drivers_notices(tmp_path):
    from aot_ray.execution.drains import DRAIN_DIR, DrainWatch, drain_path

    root = str(tmp_path)
    (tmp_path / DRAIN_DIR).mkdir()
    (tmp_path / DRAIN_DIR / "old").write_text("{}")  # a node of an earlier driver's sweep: gone by now
    states = [{}, {"n1": "10.0.0.7"}, {"n1": "10.0.0.7"}, {"n1": "10.0.0.7", "n2": "10.0.0.8"}]
    said = []
    watch = DrainWatch(root, "gcs:1", said.append, poll_s=3600, nodes=lambda gcs: states.pop(0))
    with watch:  # its first look happens at once, on its thread
        deadline = time.time() + 10
        while states and len(states) == 4 and time.time() < deadline:
            time.sleep(0.05)
        assert not (tmp_path / DRAIN_DIR / "old").exists()
        assert watch.look() == ["n1"] and watch.look() == [] and watch.look() == ["n2"]
    assert json.loads(Path(drain_path(root, "n1")).read_text())["address"] == "10.0.0.7"
    assert len(said) == 2 and "node n1 (10.0.0.7) is draining" in said[0]


def test_the_sweep_scheduler_pauses_a_trial_on_either_notice_and_starts_paused_trials_first_unless_stopping():
    pytest.importorskip("ray")
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from aot_ray.execution.drains import pause_on_notice
    from aot_ray.train.tracker_api import NOTICE_MOVE, NOTICE_STOP, STOP_WHY, STOPPED_AT

    class Controller:  # what a scheduler is given: the trials, in order
        def __init__(self, statuses):
            self.trials = [type("T", (), {"status": s, "name": i})() for i, s in enumerate(statuses)]

        def get_trials(self):
            return self.trials

    sched = pause_on_notice()
    assert sched.on_trial_result(None, None, {STOPPED_AT: 40, STOP_WHY: NOTICE_MOVE}) == TrialScheduler.PAUSE
    assert sched.on_trial_result(None, None, {"step": 5}) == TrialScheduler.CONTINUE
    assert sched.choose_trial_to_run(Controller([Trial.PENDING, Trial.PAUSED])).name == 1
    assert sched.choose_trial_to_run(Controller([Trial.RUNNING, Trial.PENDING])).name == 1
    assert sched.choose_trial_to_run(Controller([Trial.RUNNING, Trial.TERMINATED])) is None
    # the sweep's stop: the trial's actor goes at once, and nothing starts again, paused or pending
    assert sched.on_trial_result(None, None, {STOPPED_AT: 40, STOP_WHY: NOTICE_STOP}) == TrialScheduler.PAUSE
    assert sched.choose_trial_to_run(Controller([Trial.PENDING, Trial.PAUSED])) is None
    assert pause_on_notice().choose_trial_to_run(Controller([Trial.PENDING])).name == 0  # one per sweep
