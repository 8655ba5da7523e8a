"""Faults while running: NaN/Inf, SIGINT/SIGTERM and --resume, atomic state, a failing rank.

Faults are injected with ``SA_DIST_FAULT=KIND@STAGE:STEP[:RANK]`` (sa_dist/resume.py): the signals are real
signals the process sends itself, so the handlers, the save and the exit code are the ones a user gets."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from conftest import ROOT, free_port, run_script, torchrun
from sa_dist.checkpoint import load_tensors
from sa_dist.cli.flags import run_main
from sa_dist.config import RunConfig
from sa_dist.data import loaders
from sa_dist.models import ModelConfig, build_model
from sa_dist.resume import Checkpointer, Interrupted
from sa_dist.runs import fresh_dir
from sa_dist.runtime import NonFiniteLoss, make_accelerator
from sa_dist.train import train_vae
from sa_dist.utils import UserError, atomic_write_bytes
from test_scripts import TINY

RUN = [*TINY, "--sa_epochs", "2", "--seed", "3"]  # baseline: 8 steps (1 epoch); SA: 2 epochs of 4 steps
METRICS = ("before", "after", "surrogate", "summary", "sa_history", "forget_classes")


def unlearn(*argv, cache, fault=None):
    env = {"SA_DIST_CACHE": str(cache), "SA_DIST_FAULT": fault or ""}
    return run_script("scripts/unlearn.py", *argv, env=env)


def last_line(r):
    return r.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def interrupted_and_resumed(tmp_path_factory):
    """One run stopped by SIGTERM in baseline training, by SIGINT in SA, by a NaN in SA, then finished with
    --resume each time; and the same command uninterrupted with its own cache."""
    tmp = tmp_path_factory.mktemp("resume")
    a, b = tmp / "a", tmp / "b"
    steps = [unlearn(*RUN, "--run-dir", a, cache=tmp / "cache_a", fault="sigterm@baseline:5")]
    steps.append(unlearn("--resume", a, cache=tmp / "cache_a", fault="sigint@sa:3"))
    meta_after_sigint = json.loads((a / "state" / "sa" / "meta.json").read_text())
    steps.append(unlearn("--resume", a, cache=tmp / "cache_a", fault="nan@sa:6"))
    meta_after_nan = json.loads((a / "state" / "sa" / "meta.json").read_text())
    steps.append(unlearn("--resume", a, cache=tmp / "cache_a"))
    straight = unlearn(*RUN, "--run-dir", b, cache=tmp / "cache_b")
    assert straight.returncode == 0, straight.stderr[-2000:]
    return a, b, steps, (meta_after_sigint, meta_after_nan)


@pytest.mark.slow
def test_sigterm_in_baseline_training_saves_a_resumable_state(interrupted_and_resumed):
    a, _, steps, _ = interrupted_and_resumed
    assert steps[0].returncode == 143
    assert last_line(steps[0]) == (f"error: interrupted by SIGTERM at baseline step 5; resumable state saved in "
                                   f"{a}/state/baseline; continue with --resume {a}")


@pytest.mark.slow
@pytest.mark.parametrize("i,code,line,saved", [
    (1, 130, "error: interrupted by SIGINT at sa step 3; resumable state saved in {a}/state/sa; continue with "
             "--resume {a}", 3),
    (2, 1, "error: non-finite SA surrogate_nelbo (nan) at step 6; stopped, the last good state (step 4) is kept in "
           "{a}/state/sa", 4),  # the SA epoch boundary before the NaN, not overwritten
], ids=["sigint", "nan"])
def test_a_stop_in_sa_names_the_step_and_keeps_the_last_good_state(interrupted_and_resumed, i, code, line, saved):
    a, _, steps, metas = interrupted_and_resumed
    assert steps[i].returncode == code and last_line(steps[i]) == line.format(a=a)
    meta = metas[i - 1]
    assert meta["step"] == saved and [r["step"] for r in meta["history"]] == list(range(1, saved + 1))


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_metrics_as_an_uninterrupted_one(interrupted_and_resumed):
    a, b, steps, _ = interrupted_and_resumed
    assert steps[3].returncode == 0, steps[3].stderr[-2000:]
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    for key in METRICS:
        assert ra[key] == rb[key], key  # identical floats, not approximately equal
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert drop(ra["baseline"]["history"]) == drop(rb["baseline"]["history"])
    ta, _ = load_tensors(a / "unlearned.safetensors")
    tb, _ = load_tensors(b / "unlearned.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in tb)
    assert not (a / "state").exists()  # finished: the resumable state is gone


def test_an_interrupted_run_dir_is_not_reused_without_resume(tmp_path):
    (tmp_path / "r" / "state" / "sa").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        fresh_dir(RunConfig(), str(tmp_path / "r"))
    assert str(e.value) == (f"--run-dir {tmp_path / 'r'} holds an interrupted run; continue it with --resume "
                            f"{tmp_path / 'r'} or choose another")
    assert fresh_dir(RunConfig(), str(tmp_path / "r"), resume=True) == tmp_path / "r"


@pytest.mark.slow
def test_external_sigterm_then_resume_finishes_the_baseline(tmp_path):
    """A real SIGTERM from another process (as a scheduler sends one), mid-training."""
    run = tmp_path / "run"
    argv = ["scripts/train_baseline.py", "--arch", "linear", "--width", "64", "--epochs", "6", "--limit", "500",
            "--run-dir", run]
    env = {**os.environ, "SA_DIST_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, *map(str, argv)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "state" / "baseline" / "meta.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: interrupted by SIGTERM at baseline step ") and line.endswith(f"--resume {run}")
    r = run_script("scripts/train_baseline.py", "--resume", run, env={"SA_DIST_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 6


# ---- library level: the baseline loop, NaN, atomic state ----------------------------------------------------------

def _train(tmp_path, state=None, fault=None, monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.setenv("SA_DIST_FAULT", fault or "")
    acc = make_accelerator(cpu=True, project_dir=str(tmp_path))
    set_seed(3)
    tr, te = loaders(200, seed=3, limit=1000)  # 5 steps per epoch
    ckpt = Checkpointer(acc, state, "baseline", "--resume X") if state else None
    return train_vae(build_model(ModelConfig(arch="linear", width=64)), tr, te, acc, epochs=3, lr=2e-3,
                     checkpointer=ckpt)


def test_baseline_resumed_mid_epoch_and_at_epoch_ends_is_bit_identical(tmp_path, monkeypatch):
    want, want_hist = _train(tmp_path)
    for fault, code in (("sigterm@baseline:7", 143), ("sigint@baseline:10", 130), ("sigterm@baseline:12", 143)):
        with pytest.raises(Interrupted) as e:
            _train(tmp_path, tmp_path / "st", fault, monkeypatch)
        assert e.value.exit_code == code
    got, hist = _train(tmp_path, tmp_path / "st", None, monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(want.state_dict().values(), got.state_dict().values()))
    assert [h["test_nelbo"] for h in hist] == [h["test_nelbo"] for h in want_hist]
    assert [h["train_nelbo"] for h in hist] == [h["train_nelbo"] for h in want_hist]


def test_nan_in_baseline_training_names_step_and_term_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    with pytest.raises(NonFiniteLoss) as e:
        _train(tmp_path, tmp_path / "st", "nan@baseline:12", monkeypatch)
    assert str(e.value) == (f"non-finite baseline negative ELBO (nan) at step 12; stopped, the last good state "
                            f"(step 10) is kept in {tmp_path / 'st'}")
    meta = json.loads((tmp_path / "st" / "meta.json").read_text())
    assert meta["step"] == 10 and len(meta["history"]) == 2
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "st" / "model.safetensors").values())


def test_a_save_killed_half_way_leaves_the_previous_state(tmp_path, monkeypatch):
    acc = make_accelerator(cpu=True, project_dir=str(tmp_path))
    model, opt = acc.prepare(torch.nn.Linear(2, 2), torch.optim.Adam(torch.nn.Linear(2, 2).parameters()))
    ck = Checkpointer(acc, tmp_path / "st", "sa")
    ck.save(4, {"history": []})

    def dies_half_way(path):
        (tmp_path / "st.partial" / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # as if killed while writing

    monkeypatch.setattr(acc, "save_state", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ck.save(8, {"history": []})
    assert Checkpointer(acc, tmp_path / "st", "sa").load_meta()["step"] == 4
    (tmp_path / "st").rename(tmp_path / "st.old")  # killed between the two renames of the swap
    assert Checkpointer(acc, tmp_path / "st", "sa").load_meta()["step"] == 4
    acc.free_memory()


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "meta.json").write_text(json.dumps({"format": 1, "stage": "sa", "step": 3, "processes": 2}))
    acc = make_accelerator(cpu=True, project_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"was saved by 2 processes; resume with 2, not 1$"):
        Checkpointer(acc, tmp_path / "st", "sa").load_meta()


def test_atomic_write_killed_half_way_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_bytes(path, b'{"old": 1}')

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b'{"new": 2, "truncat')
    assert path.read_bytes() == b'{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ---- two processes ------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fault,says", [("raise", "RuntimeError: injected fault on rank 1 at sa step 6"),
                                        ("kill", "Signal 9 (SIGKILL) received by PID")])
def test_a_failing_rank_stops_the_whole_job_naming_the_rank(tmp_path, fault, says):
    t0 = time.time()
    r = torchrun(ROOT / "scripts" / "unlearn.py", *RUN, "--run-dir", tmp_path / "r",
                 env={"SA_DIST_FAULT": f"{fault}@sa:6:1"}, timeout=240)
    assert r.returncode != 0 and time.time() - t0 < 200
    root_cause = r.stderr.split("Root Cause (first observed failure):")[1]
    assert "rank      : 1 (local_rank: 1)" in root_cause and says in r.stderr
    assert json.loads((tmp_path / "r" / "state" / "sa" / "meta.json").read_text())["step"] == 4  # last good state
    assert not (tmp_path / "r" / "results.json").exists()


def test_user_errors_name_the_rank_under_a_launcher(monkeypatch, capsys):
    def fails():
        raise UserError("boom")

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as e:
            run_main(fails)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert e.value.code == 1 and capsys.readouterr().err == "error: [rank 1] boom\n"


@pytest.mark.slow
def test_sigterm_to_the_launcher_then_resume_on_two_ranks_matches_an_uninterrupted_run(tmp_path):
    """SIGTERM to torchrun (what a scheduler sends): it forwards it, both ranks save and stop; torchrun --resume
    ends with the results of an uninterrupted 2-process run."""
    argv = [*TINY, "--sa_epochs", "12", "--seed", "4"]  # 12 SA epochs of 8 steps: time for the signal to land mid-SA
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    proc = subprocess.Popen([*launch, "--master_port", str(free_port()), "scripts/unlearn.py", *map(str, argv),
                             "--run-dir", str(a)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 200
    while not (a / "state" / "sa" / "meta.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and f"resumable state saved in {a}/state/sa; continue with --resume {a}" in err
    assert "error: [rank 0] interrupted by SIGTERM at sa step " in err and not (a / "results.json").exists()
    r = torchrun("scripts/unlearn.py", "--resume", a, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    r = torchrun("scripts/unlearn.py", *argv, "--run-dir", b, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["processes"] == 2 and all(ra[k] == rb[k] for k in METRICS)
    # the uninterrupted run: unlearning end to end on two ranks
    assert rb["processes"] == 2 and sorted(rb["after"]["per_class"], key=int) == [str(c) for c in range(10)]
    assert rb["surrogate"]["nelbo"]["after"] < rb["surrogate"]["nelbo"]["before"]


def test_sigterm_outside_the_loops_is_one_line_exit_143(capsys):
    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as e:
            run_main(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))
    finally:
        signal.signal(signal.SIGTERM, old)
    assert e.value.code == 143 and capsys.readouterr().err == "error: interrupted by SIGTERM\n"


@pytest.mark.slow
def test_resume_of_a_run_started_with_checkpoint_unlearns_that_checkpoint(tiny_baseline, tmp_path):
    _, ckpt = tiny_baseline
    run = tmp_path / "r"
    r = run_script("scripts/unlearn.py", *TINY, "--width", "128", "--checkpoint", ckpt, "--run-dir", run,
                   env={"SA_DIST_FAULT": "sigint@sa:2"})
    assert r.returncode == 130, r.stderr[-2000:]
    r = run_script("scripts/unlearn.py", "--resume", run, "--checkpoint", tmp_path / "other.safetensors")
    assert r.returncode == 1 and last_line(r) == (f"error: --resume {run}: that run unlearns --checkpoint {ckpt}, "
                                                  f"not {tmp_path / 'other.safetensors'}")
    r = run_script("scripts/unlearn.py", "--resume", run)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((run / "results.json").read_text())
    assert res["baseline"]["key"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]
