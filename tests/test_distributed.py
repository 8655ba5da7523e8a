"""Two gloo ranks on the CPU (torchrun --nproc_per_node 2, Accelerator(cpu=True))."""
import json

import pytest
import torch

from conftest import ROOT, torchrun
from sa_dist.checkpoint import load_checkpoint
from test_scripts import TINY

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_two_ranks_end_with_identical_weights_equal_to_the_saved_checkpoint(tmp_path, arch):
    r = torchrun(ROOT / "tests" / "workers" / "ddp_train.py", tmp_path, arch)
    assert r.returncode == 0, r.stderr[-2000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    saved, meta = load_checkpoint(tmp_path / "main.safetensors")
    assert meta["processes"] == "2"
    for k, v in saved.state_dict().items():
        assert torch.equal(r0[k], r1[k]), k  # weights and batch-norm statistics (SyncBatchNorm)
        assert torch.equal(r0[k], v), k


def test_unlearn_runs_end_to_end_on_two_ranks(tmp_path):
    r = torchrun(ROOT / "scripts" / "unlearn.py", *TINY, "--run-dir", tmp_path / "r")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["processes"] == 2 and sorted(res["after"]["per_class"], key=int) == [str(c) for c in range(10)]
    assert res["surrogate"]["nelbo"]["after"] < res["surrogate"]["nelbo"]["before"]
