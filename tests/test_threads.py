"""The CPU thread rule: each process runs the cores free to it divided by the processes on its node, whoever
launched it, unless --threads or $SA_DIST_THREADS says otherwise; it overrides the launchers' OMP_NUM_THREADS=1."""
import os

import pytest
import torch

from sa_dist import runtime
from sa_dist.config import validate, with_values, RunConfig
from sa_dist.runtime import configure_threads, processes_on_node, thread_count
from sa_dist.utils import UsageError


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("env,procs", [
    ({}, 1),                                                                    # python: one process
    ({"LOCAL_WORLD_SIZE": "2"}, 2),                                             # torchrun / accelerate launch
    ({"LOCAL_WORLD_SIZE": "4", "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}, 4),  # srun + launcher
    ({"SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "4(x2),2", "SLURM_NODEID": "2"}, 2),  # srun tasks
    ({"SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "3(x2)", "SLURM_NODEID": "1"}, 3),
    ({"SLURM_NTASKS_PER_NODE": "8", "SLURM_TASKS_PER_NODE": "8", "SLURM_LOCALID": "0"}, 1),  # the batch script
    ({"SLURM_STEP_TASKS_PER_NODE": "x(2)"}, 1),
    ({"LOCAL_WORLD_SIZE": "junk"}, 1),
])
def test_processes_on_node(env, procs):
    assert processes_on_node(env) == procs


@pytest.mark.parametrize("cores,env,threads", [
    (8, {}, 8), (8, {"LOCAL_WORLD_SIZE": "2"}, 4), (8, {"LOCAL_WORLD_SIZE": "3"}, 2),
    (2, {"LOCAL_WORLD_SIZE": "4"}, 1),  # never 0
    (8, {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, 4),  # the launcher's 1 does not decide
])
def test_cores_divided_by_processes_on_the_node(cores, env, threads):
    assert thread_count(None, env, cores=cores)[0] == threads


def test_affinity_gives_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    n, why = thread_count(None, {"LOCAL_WORLD_SIZE": "2"})
    assert n == 3 and "6 cores / 2 process(es)" in why


def test_flag_beats_env_beats_rule():
    env = {"SA_DIST_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}
    assert thread_count(5, env, cores=8) == (5, "--threads")
    assert thread_count(None, env, cores=8) == (3, "$SA_DIST_THREADS")
    assert thread_count(None, {**env, "SA_DIST_THREADS": ""}, cores=8)[0] == 4


@pytest.mark.parametrize("requested,env,match", [(0, {}, "--threads must be >= 1"),
                                                 (None, {"SA_DIST_THREADS": "two"}, r"\$SA_DIST_THREADS"),
                                                 (None, {"SA_DIST_THREADS": "0"}, r"\$SA_DIST_THREADS")])
def test_bad_thread_requests_are_user_errors(requested, env, match):
    with pytest.raises(UsageError, match=match):
        thread_count(requested, env, cores=2)


def test_threads_field_is_validated():
    with pytest.raises(UsageError, match="--threads must be >= 1"):
        validate(with_values(RunConfig(), {"threads": 0}))


def test_configure_overrides_omp_num_threads_one(restore_threads, monkeypatch):
    torch.set_num_threads(1)  # what OMP_NUM_THREADS=1 from accelerate launch leaves
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert configure_threads(None, {"OMP_NUM_THREADS": "1"})[0] == 3 and torch.get_num_threads() == 3


def test_make_accelerator_sets_and_logs_once(restore_threads, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "_logged", [])
    monkeypatch.setenv("SA_DIST_THREADS", "3")
    torch.set_num_threads(1)
    runtime.make_accelerator(cpu=True, project_dir="unused")
    runtime.make_accelerator(cpu=True, project_dir="unused")
    assert torch.get_num_threads() == 3
    assert capsys.readouterr().out.count("sa_dist: 3 CPU thread(s) per process ($SA_DIST_THREADS)") == 1
    runtime.make_accelerator(cpu=True, project_dir="unused", threads=2)  # a new count is logged again
    assert torch.get_num_threads() == 2 and "sa_dist: 2 CPU thread(s) per process (--threads)" in capsys.readouterr().out


def test_each_xdist_worker_runs_its_share_of_the_cores(restore_threads):
    """The suite's own processes: each of N xdist workers (and what it starts) gets cores // N threads, not the
    controller's whole-machine count that it inherits (2 workers x 2 threads on 2 cores: the fast lane 3.9x slower)."""
    if os.environ["SA_DIST_TEST_THREADS_GIVEN"]:
        pytest.skip("$SA_DIST_THREADS was given to pytest: that count is used as it is")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = max(1, len(os.sched_getaffinity(0)) // workers)
    assert os.environ["SA_DIST_THREADS"] == os.environ["OMP_NUM_THREADS"] == str(share)
    runtime.make_accelerator(cpu=True, project_dir="unused")
    assert torch.get_num_threads() == share
