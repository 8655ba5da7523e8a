"""slurm/sweep.sh on a real one-node SLURM: prepare job, job array (accelerate launch per point), aggregate job."""
import json
import subprocess

import pytest

from conftest import LIMIT, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one test cluster

TINY = (f"--arch linear --width 64 --epochs 1 --limit {LIMIT} --n-fisher 500 --sa_epochs 1 --n-replay 1024 "
        "--eval-samples 50 --no-figures")


def test_sbatch_sweep_runs_the_grid_as_an_array_and_aggregates(slurm_cluster, tmp_path):
    out = tmp_path / "sweep"
    env = {**slurm_cluster, "OUT": str(out), "FORGET": "1 2", "METHODS": "sa retrain", "UNLEARN_ARGS": TINY,
           "CPUS_PER_TASK": "1", "TIME_PREPARE": "00:10:00", "TIME_TASK": "00:10:00", "SWEEP_WAIT": "1",
           "SA_DIST_DIR": str(ROOT)}  # submitted from elsewhere: the clone comes from SA_DIST_DIR
    r = subprocess.run(["sbatch", "--wait", f"--output={tmp_path}/submit.out", str(ROOT / "slurm" / "sweep.sh")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    log = (tmp_path / "submit.out").read_text() if (tmp_path / "submit.out").exists() else ""
    assert r.returncode == 0, r.stderr + log + "".join(p.read_text() for p in (out / "slurm-logs").glob("*.out"))
    assert "sweep: 4 points" in log
    table = json.loads((out / "summary.json").read_text())
    points = {(p["method"], p["forget"][0]): p for p in table["points"]}
    assert sorted(points) == [("retrain", 1), ("retrain", 2), ("sa", 1), ("sa", 2)]
    assert points[("retrain", 2)]["seconds_vs_retrain"] == 1.0
    assert points[("sa", 1)]["seconds_vs_retrain"] is not None
    points_md, classes_md = (out / "summary.md").read_text().split("\n\n")
    assert points_md.count("| sa | linear |") == 2 and points_md.count("| retrain | linear |") == 2
    assert points_md.count("| original θ* |") == 2 and classes_md.count("| sa | linear | 1 | 2 |") == 1
    assert (out / "summary.png").is_file()
    logs = out / "slurm-logs"
    tasks = sorted(logs.glob("task-*.out"))
    assert len(tasks) == 4 and all("accelerate launch" in t.read_text() for t in tasks)
    assert len(list(logs.glob("prepare-*.out"))) == 1
    # every point used the one baseline the prepare job trained
    keys = {json.loads((d / "results.json").read_text())["baseline"]["key"] for d in out.iterdir()
            if (d / "results.json").is_file()}
    cached = [json.loads((d / "results.json").read_text())["baseline"]["cached"] for d in out.iterdir()
              if (d / "results.json").is_file()]
    assert len(keys) == 1 and all(cached)
