"""slurm/train.sh and slurm/unlearn.sh: run for real on the one-node test SLURM (2 CPU processes through the
multi-node template), and the per-node `accelerate launch` lines of a 2-node GPU job checked with stand-ins."""
import json
import os
import subprocess

import pytest

from conftest import LIMIT, ROOT, free_port

LAUNCH = ROOT / "slurm" / "_launch.sh"


def sbatch(env: dict, script: str, log, *args, extra_env=None):
    """``sbatch --wait`` from the repository root on the test cluster: (CompletedProcess, job log text)."""
    env = {**env, "CPU_PROCS_PER_NODE": "2", "MAIN_PORT": str(free_port()), **(extra_env or {})}
    r = subprocess.run(["sbatch", "--wait", "--nodes=1", "--cpus-per-task=2", f"--output={log}", script,
                        *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return r, log.read_text() if log.exists() else ""


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")  # one test cluster
def test_train_template_runs_two_cpu_processes_on_slurm(slurm_cluster, tmp_path):
    r, log = sbatch(slurm_cluster, "slurm/train.sh", tmp_path / "job.log", "--arch", "linear", "--width", "64",
                    "--epochs", "1", "--limit", LIMIT, "--run-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr + log[-3000:]
    assert "1 node(s) x 2 process(es) (CPU)" in log
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and (tmp_path / "run" / "baseline.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_unlearn_template_with_the_accelerate_config_runs_two_cpu_processes_on_slurm(slurm_cluster, tmp_path):
    from test_scripts import TINY
    r, log = sbatch(slurm_cluster, "slurm/unlearn.sh", tmp_path / "job.log", *TINY, "--run-dir", tmp_path / "run",
                    extra_env={"ACCELERATE_CONFIG": "accelerate_multi_gpu.yaml"})
    assert r.returncode == 0, r.stderr + log[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["processes"] == 2 and res["config"]["sync_bn"] is True
    assert res["surrogate"]["nelbo"]["after"] < res["surrogate"]["nelbo"]["before"]


def test_two_gpu_nodes_get_one_launcher_each_with_its_machine_rank(tmp_path):
    """srun, scontrol, nvidia-smi and accelerate replaced by stand-ins that print what they are given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {"scontrol": 'printf "gpu-a17\\ngpu-a18\\n"',
             "srun": 'echo "srun $*" >&2; shift 5; for id in 0 1; do SLURM_NODEID=$id "$@"; done',
             "accelerate": 'echo "node $SLURM_NODEID: accelerate $*"',
             "nvidia-smi": 'for i in 0 1 2 3; do echo "GPU $i: H100"; done'}
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-a[17-18]",
           "SLURM_NNODES": "2", "SLURM_CPUS_ON_NODE": "32", "SLURM_CPUS_PER_TASK": "32", "MAIN_PORT": "29555"}
    r = subprocess.run(["bash", LAUNCH, "scripts/unlearn.py", "--forget", "2"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("sa_dist: 2 node(s) x 4 process(es) (GPU), main gpu-a17:29555")
    common = ("--multi_gpu --same_network --num_machines 2 --machine_rank {} --main_process_ip gpu-a17 "
              "--main_process_port 29555 --num_processes 8 --num_cpu_threads_per_process 8 --dynamo_backend no "
              "scripts/unlearn.py --forget 2")
    assert lines[1:] == [f"node {i}: accelerate launch {common.format(i)}" for i in (0, 1)]
    assert "--ntasks-per-node=1" in r.stderr and "--cpus-per-task=32" in r.stderr


def test_launch_outside_slurm_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", LAUNCH, "scripts/unlearn.py"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "run inside a SLURM allocation" in r.stderr
