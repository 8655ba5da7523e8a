"""--method: every baseline/ablation behind one interface, the local sweep and the aggregate table (tiny budgets)."""
import json
import math
from pathlib import Path

import pytest
import torch

import sa_dist.methods
from conftest import LIMIT, run_script
from sa_dist.config import RunConfig, SAConfig, TrainConfig
from sa_dist.methods import Context, get_method, method_names, naive
from sa_dist.models import negative_elbo
from sa_dist.sweeps.grid import make_grid, parse_forget

# A linear cVAE that learns something in seconds (3 epochs of 2000 images), then short unlearning runs.
SMALL = ["--arch", "linear", "--width", "64", "--epochs", "3", "--batch", "64", "--limit", str(LIMIT),
         "--n-fisher", "500", "--sa_epochs", "2", "--n-replay", "1024", "--eval-samples", "100", "--no-figures"]
ALL = ["sa", "retrain", "naive", "no_ewc", "no_replay", "replay_only"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    r = run_script("scripts/sweep.py", "--out-dir", out, "--forget", "2", "--method", *ALL, *SMALL, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {d.name.split("-")[1]: json.loads((d / "results.json").read_text())
            for d in out.iterdir() if (d / "results.json").is_file()}
    return out, runs, r


@pytest.mark.slow
def test_every_method_writes_the_same_schema(sweep):
    _, runs, _ = sweep
    assert sorted(runs) == sorted(ALL)
    for name, r in runs.items():
        assert r["method"] == name and r["config"]["sa"]["method"] == name
        assert {"config", "before", "after", "surrogate", "summary", "timing_s"} <= set(r)
        assert sorted(r["after"]["per_class"], key=int) == [str(c) for c in range(10)]
        assert r["timing_s"]["unlearn"] > 0


@pytest.mark.slow
def test_ablations_switch_off_one_term(sweep):
    _, runs, _ = sweep
    assert runs["no_ewc"]["config"]["sa"]["lam"] == 0 and runs["no_replay"]["config"]["sa"]["gamma"] == 0
    assert all(row["ewc"] == 0 for row in runs["no_ewc"]["sa_history"]["rows"])
    assert runs["no_ewc"]["timing_s"]["fisher"] == 0  # no Fisher needed, none counted
    nelbo = {m: runs[m]["surrogate"]["nelbo"]["after"] for m in ("sa", "replay_only")}
    assert nelbo["sa"] < nelbo["replay_only"] - 10  # without the surrogate term nothing learns the surrogate


@pytest.mark.slow
def test_retrain_never_saw_the_forgotten_class(sweep):
    _, runs, _ = sweep
    r = runs["retrain"]
    assert r["method_info"]["retrain_key"] != r["baseline"]["key"]
    assert len(r["method_history"]["rows"]) >= 1 and r["timing_s"]["unlearn"] > 0
    before, after = r["before"]["per_class"], r["after"]["per_class"]
    assert after["2"]["test_nelbo"] > before["2"]["test_nelbo"] + 5  # class 2 is unknown to it
    assert abs(after["3"]["test_nelbo"] / before["3"]["test_nelbo"] - 1) < 0.2  # the others are learnt alike


@pytest.mark.slow
def test_naive_ascends_the_forgotten_images_nelbo(sweep):
    _, runs, _ = sweep
    r = runs["naive"]
    rows = r["method_history"]["rows"]
    assert rows[-1]["forget_nelbo"] > rows[0]["forget_nelbo"]
    assert r["after"]["per_class"]["2"]["test_nelbo"] > r["before"]["per_class"]["2"]["test_nelbo"]
    assert r["method_info"]["budget_steps"] == 2 * 4 and r["method_info"]["stopped"] is None


@pytest.mark.slow
def test_sweep_table_and_plot(sweep):
    out, runs, r = sweep
    md = (out / "summary.md").read_text()
    assert md == r.stdout[-len(md):]  # printed too
    lines = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    ran = [m for m in method_names() if m in ALL]
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["original θ*", *ran]  # registry order
    table = json.loads((out / "summary.json").read_text())
    rows = {p["method"]: p for p in table["points"]}
    assert rows["retrain"]["seconds_vs_retrain"] == 1.0
    sa = rows["sa"]
    assert sa["seconds"] == pytest.approx(runs["sa"]["timing_s"]["fisher"] + runs["sa"]["timing_s"]["unlearn"])
    assert sa["seconds_vs_retrain"] == pytest.approx(sa["seconds"] / rows["retrain"]["seconds"])
    assert sa["forgotten_p"] == pytest.approx(runs["sa"]["summary"]["after"]["forgotten_p_class"]["2"])
    assert (out / "summary.png").stat().st_size > 10_000


@pytest.mark.slow
def test_sweep_resumes_without_rerunning(sweep, tmp_path):
    out, _, _ = sweep
    before = {d.name: (d / "results.json").read_bytes() for d in out.iterdir() if d.is_dir()}
    r = run_script("scripts/sweep.py", "--out-dir", out, "--forget", "2", "--method", *ALL, *SMALL)
    assert r.returncode == 0 and r.stdout.count("finished before, kept") == len(ALL)
    assert before == {d.name: (d / "results.json").read_bytes() for d in out.iterdir() if d.is_dir()}
    r = run_script("scripts/sweep.py", "--out-dir", out, "--forget", "2", "--method", "sa", *SMALL, "--task-args", "0")
    assert r.returncode == 0 and r.stdout.strip() == ""  # slurm/sweep.sh skips a finished point


def test_grid_collapses_what_a_method_does_not_read():
    pts = make_grid(["sa", "no_ewc", "retrain"], parse_forget(["1", "2,7"]), [0.0, 1.0], [1.0])
    names = [p.name("conv") for p in pts]
    assert names == ["conv-sa-forget1-lam0-gamma1", "conv-sa-forget1-lam1-gamma1", "conv-sa-forget2_7-lam0-gamma1",
                     "conv-sa-forget2_7-lam1-gamma1", "conv-no_ewc-forget1-gamma1", "conv-no_ewc-forget2_7-gamma1",
                     "conv-retrain-forget1", "conv-retrain-forget2_7"]
    assert pts[2].args() == ["--method", "sa", "--forget", "2", "7", "--lam", "0", "--gamma", "1"]


def test_task_args_are_the_unlearn_flags_of_one_point(tmp_path, cli):
    code, out, err = cli("scripts/sweep.py", "--out-dir", tmp_path / "o", "--forget", "3", "4", "--lam", "1", "10",
                         "--arch", "linear", "--task-args", "3")
    assert code == 0, err
    assert out.split() == ["--arch", "linear", "--method", "sa", "--forget", "4", "--lam", "10", "--gamma", "1",
                           "--run-dir", str(tmp_path / "o" / "linear-sa-forget4-lam10-gamma1")]
    code, out, _ = cli("scripts/sweep.py", "--out-dir", tmp_path / "o", "--forget", "3", "--count")
    assert code == 0 and out.strip() == "1"


@pytest.mark.parametrize("argv,match", [(["--forget", "2", "--task-args", "5"], "--task-args 5: the grid has points 0-0"),
                                        (["--run-dir", "x"], "--run-dir and --resume are chosen per point by sweep.py")])
def test_sweep_bad_input_is_one_line(tmp_path, cli, argv, match):
    code, _, err = cli("scripts/sweep.py", "--out-dir", tmp_path / "o", *argv)
    assert code == 2 and len(err) == 1 and match in err[0], err


def test_unlearn_refuses_an_unknown_method(tmp_path, cli):
    code, _, err = cli("scripts/unlearn.py", "--method", "magic", "--run-dir", tmp_path / "r")
    assert code == 2 and len(err) == 1 and "invalid choice: 'magic'" in err[0]


def test_aggregate_refuses_a_folder_without_runs(tmp_path, cli):
    code, _, err = cli("scripts/aggregate.py", tmp_path)
    assert code == 1 and len(err) == 1 and "no results.json there" in err[0]


def test_methods_are_the_package_modules():
    files = {p.stem for p in Path(sa_dist.methods.__file__).parent.glob("[!_]*.py")}
    assert set(method_names()) == files and method_names()[0] == "sa"
    assert get_method("no_ewc").overrides == {"lam": 0.0} and get_method("retrain").uses == ()


def test_naive_stops_on_a_non_finite_loss_and_keeps_the_last_finite_weights(tiny_baseline, accelerator, monkeypatch):
    calls = {"n": 0}

    def flaky_elbo(model, x, c, eps=None):
        calls["n"] += 1
        out = negative_elbo(model, x, c, eps)
        return out * math.inf if calls["n"] == 3 else out

    monkeypatch.setattr(naive, "negative_elbo", flaky_elbo)
    model, _ = tiny_baseline
    cfg = RunConfig(train=TrainConfig(limit=LIMIT), sa=SAConfig(forget=[2], sa_epochs=1, n_replay=1280, batch=64, lr=1e-3))
    out = naive.unlearn(Context(cfg, model, None, accelerator))
    assert out.info["stopped"]["step"] == 3 and "non-finite" in out.info["stopped"]["reason"]
    assert len(out.history) == 2 and out.info["budget_steps"] == 20
    assert all(torch.isfinite(p).all() for p in out.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(out.model.parameters(), model.parameters()))  # 2 steps taken
