"""The test SLURM itself: an array job runs every task (the sweep and training templates rely on it)."""
import subprocess

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one test cluster


def test_one_node_slurm_runs_an_array_job(slurm_cluster, tmp_path):
    script = tmp_path / "array.sh"
    script.write_text("#!/bin/bash\n#SBATCH --array=0-2\n#SBATCH --cpus-per-task=1\n"
                      f"#SBATCH --output={tmp_path}/out-%a.txt\necho task $SLURM_ARRAY_TASK_ID\n")
    r = subprocess.run(["sbatch", "--wait", str(script)], env=slurm_cluster, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted((tmp_path / f"out-{i}.txt").read_text().strip() for i in range(3)) == [
        "task 0", "task 1", "task 2"]
