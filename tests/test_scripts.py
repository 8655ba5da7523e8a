"""The real scripts, run as a user would, on tiny budgets (real MNIST subsets)."""
import json

import numpy as np
import pytest

from conftest import LIMIT, run_script

pytestmark = pytest.mark.slow

TINY = ["--arch", "linear", "--width", "64", "--epochs", "1", "--limit", str(LIMIT), "--n-fisher", "500",
        "--sa_epochs", "1", "--n-replay", "1024", "--eval-samples", "50", "--no-figures"]  # figures: where tested


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "r1"
    r = run_script("scripts/unlearn.py", *TINY, "--figures", "--forget", "2", "7", "--run-dir", run_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, r


def test_unlearn_writes_a_complete_run(finished_run):
    run_dir, r = finished_run
    assert {"config.yaml", "results.json", "unlearned.safetensors", "samples_before_after.png", "latent_space.png",
            "latent_manifold.png", "curves_baseline.png", "curves_sa.png", "report.html", "report.md",
            "tensorboard"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "tensorboard" / "figures").is_dir()
    res = json.loads((run_dir / "results.json").read_text())
    assert res["forget_classes"] == [2, 7]
    for when in ("before", "after"):
        assert sorted(res[when]["per_class"], key=int) == [str(c) for c in range(10)]
        assert set(res[when]["per_class"]["3"]) == {"sample_acc", "p_class", "p_reject", "entropy", "test_nelbo"}
    sur = res["surrogate"]
    assert sur["kind"] == "uniform" and set(sur["ideal"]["p_class"]) == {"2", "7"}
    assert sur["nelbo"]["z_blind"] == pytest.approx(784 * np.log(2))
    assert sur["nelbo"]["after"] < sur["nelbo"]["before"]
    assert set(res["timing_s"]) >= {"baseline", "fisher", "unlearn", "evaluate", "figures"}
    lat = res["latent"]
    for when in ("before", "after", "drift"):
        assert set(lat[when]["per_class"]) == {str(c) for c in range(10)} and set(lat[when]["forgotten"]) == {"2", "7"}
        assert -1 <= lat[when]["retained_mean"] <= 1 or when == "drift"
    assert "results.json" in r.stdout and f"report: {run_dir}/report.html" in r.stdout
    assert "class 7 (forgotten)" in (run_dir / "report.html").read_text()


def test_a_finished_run_is_never_overwritten(finished_run, cli):
    run_dir, _ = finished_run
    before = (run_dir / "results.json").read_bytes()
    code, _, err = cli("scripts/unlearn.py", *TINY, "--run-dir", run_dir)
    assert code == 1 and len(err) == 1 and "already holds a finished run" in err[0]
    assert (run_dir / "results.json").read_bytes() == before


def test_second_run_reuses_the_cached_baseline_and_fisher(finished_run, tmp_path):
    r = run_script("scripts/unlearn.py", *TINY, "--forget", "2", "7", "--run-dir", tmp_path / "r2")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert res["baseline"]["cached"] is True and res["timing_s"]["fisher_cached"] is True
    first = json.loads((finished_run[0] / "results.json").read_text())
    for key in ("before", "after", "surrogate", "summary", "sa_history"):
        assert res[key] == first[key], key  # same command and seed, same numbers


def test_unlearn_an_explicit_checkpoint_and_sample_it(tiny_baseline, tmp_path):
    _, ckpt = tiny_baseline
    r = run_script("scripts/unlearn.py", *TINY, "--width", "128", "--checkpoint", ckpt, "--run-dir", tmp_path / "r")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_script("scripts/sample.py", "--checkpoint", tmp_path / "r" / "unlearned.safetensors", "--label", "3",
                   "-n", "64", "--seed", "1", "--out", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    arr = np.load(tmp_path / "s.npy")
    assert arr.shape == (64, 28, 28) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1


def test_train_baseline_script(tmp_path):
    r = run_script("scripts/train_baseline.py", "--arch", "conv", "--width", "4", "--epochs", "1", "--limit",
                   str(LIMIT), "--run-dir", tmp_path / "b")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert len(m["history"]) == 1 and m["history"][0]["test_nelbo"] < 543.5
    assert (tmp_path / "b" / "baseline.safetensors").is_file() and (tmp_path / "b" / "config.yaml").is_file()
