"""Two gloo ranks on the CPU (torchrun --nproc_per_node 2, Accelerator(cpu=True))."""

import pytest
import torch

from conftest import ROOT, torchrun
from sa_dist.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", ["conv"])  # linear: test_scale's sync run asserts the same
def test_two_ranks_end_with_identical_weights_equal_to_the_saved_checkpoint(tmp_path, arch):
    r = torchrun(ROOT / "tests" / "workers" / "ddp_train.py", tmp_path, arch)
    assert r.returncode == 0, r.stderr[-2000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    saved, meta = load_checkpoint(tmp_path / "main.safetensors")
    assert meta["processes"] == "2"
    for k, v in saved.state_dict().items():
        assert torch.equal(r0[k], r1[k]), k  # weights and batch-norm statistics (SyncBatchNorm)
        assert torch.equal(r0[k], v), k

# The unlearning script end to end on two ranks: tests/test_resume.py's uninterrupted 2-rank run.
