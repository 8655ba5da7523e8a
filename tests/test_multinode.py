"""Two "machines" on this one: two `accelerate launch` invocations (--num_machines 2, machine ranks 0 and 1, main
address 127.0.0.1), each built by slurm/_launch.sh's per-node branch (`--on-node`, as srun runs it on every node)
with one CPU process, train a tiny baseline and unlearn; the baseline, the Fisher and every result equal those of
`torchrun --nproc_per_node 2` on one machine."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, free_port, torchrun
from test_scripts import TINY

pytestmark = pytest.mark.slow
SAME_THREADS = {"SA_DIST_THREADS": "1"}  # both jobs: one thread per process, so the same kernels sum alike


def two_machines(args: list, cache: str, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``bash slurm/_launch.sh --on-node ARGS`` twice, as SLURM node 0 and node 1 of a 2-node job, 1 process each."""
    port = str(free_port())
    env = {**os.environ, **SAME_THREADS, "SA_DIST_CACHE": cache, "SA_NODES": "2", "SA_PROCS_PER_NODE": "1",
           "SA_MAIN_IP": "127.0.0.1", "MAIN_PORT": port, "SLURM_CPUS_ON_NODE": "1"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"  # this Python's accelerate
    procs = [subprocess.Popen(["bash", "slurm/_launch.sh", "--on-node", *map(str, args)], cwd=ROOT,
                              env={**env, "SLURM_NODEID": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def cached_tensors(cache) -> dict:
    """Every safetensors file of the cache but the evaluator's: {relative path: tensors}."""
    return {str(p.relative_to(cache)): load_file(p) for p in sorted(cache.rglob("*.safetensors"))
            if "evaluator" not in p.parts}


def untimed(obj):
    """``obj`` without its wall times (``timing_s``, and each epoch's ``seconds``), which no two runs share."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if k not in ("timing_s", "seconds")}
    return [untimed(v) for v in obj] if isinstance(obj, list) else obj


def comparable(run_dir) -> dict:
    return untimed(json.loads((run_dir / "results.json").read_text()))


def test_two_machines_equal_two_processes_on_one(tmp_path):
    one, two = tmp_path / "cache_one", tmp_path / "cache_two"
    r = torchrun("scripts/unlearn.py", *TINY, "--run-dir", tmp_path / "one", env={**SAME_THREADS,
                                                                                 "SA_DIST_CACHE": str(one)})
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.copytree(one / "mnist", two / "mnist")  # the baseline and the Fisher are each job's own
    runs = two_machines(["scripts/unlearn.py", *TINY, "--run-dir", tmp_path / "two"], str(two))
    for i, run in enumerate(runs):
        assert run.returncode == 0, f"machine {i}:\n{run.stderr[-3000:]}"
    line = "sa_dist: 1 CPU thread(s) per process ($SA_DIST_THREADS)"  # the main process (rank 0) logs it
    assert line in runs[0].stdout and line not in runs[1].stdout
    res_one, res_two = comparable(tmp_path / "one"), comparable(tmp_path / "two")
    assert res_one["processes"] == res_two["processes"] == 2
    base_one, base_two = cached_tensors(one), cached_tensors(two)
    assert base_one.keys() == base_two.keys() and any("baselines" in k for k in base_one)
    for name, tensors in base_one.items():  # baseline weights and the Fisher, bit for bit
        assert all(torch.equal(t, base_two[name][k]) for k, t in tensors.items()), name
    assert res_one == res_two and res_one["baseline"]["history"]  # every figure, bit for bit
