"""benchmarks/robustness.py on cells: a cell's key holds every setting that shapes it (no stale reuse), a rerun
skips the done cells, the table is rendered from the cells alone for any --k and --lrs and names the best point,
the cost mark, method specs checked in one line; and a tiny end to end run (slow)."""
from dataclasses import asdict
import json
import sys

import pytest
import torch

from conftest import LIMIT, ROOT, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))
import cells  # noqa: E402
import decoder_probe  # noqa: E402
import robustness  # noqa: E402
import robustness_plan  # noqa: E402
import robustness_table  # noqa: E402
from sa_dist.models import ModelConfig, build_model  # noqa: E402
from sa_dist.resume import Interrupted  # noqa: E402
from sa_dist.utils import UsageError  # noqa: E402

FPS = {"evaluator": {"version": 2, "sha256": "e0"}, "paper": {"version": 1, "sha256": "p0"}}
BASE = ["--methods", "sa", "--arch", "linear", "--forget", "2", "--seeds", "1", "--k", "0", "10", "--lrs", "1e-3", "1e-2"]


def hashes(*argv, fps=FPS) -> dict:
    b = robustness.parse_args([*BASE, *argv])
    return {c.name: cells.config_hash(c.config) for c in robustness_plan.plan(b, fps)}


def test_cell_keys_change_with_every_setting_that_shapes_them():
    base = hashes()
    assert list(base)[:2] == ["linear-f2-s1-retrain-unlearn", "linear-f2-s1-retrain-relearn-k0"]  # retrain first
    for argv in (["--epochs", "5"], ["--lr", "1e-3"], ["--set", "sa.n_fisher=500"], ["--limit", "500"]):
        changed = hashes(*argv)
        assert changed.keys() == base.keys() and all(changed[n] != base[n] for n in base), argv  # all anew
    forget = hashes("--forget", "3")
    assert not set(forget.values()) & set(base.values()) and "linear-f3-s1-sa-unlearn" in forget
    lrs = hashes("--lrs", "1e-3", "3e-2")
    assert all((lrs[n] != base[n]) == ("relearn" in n) for n in base)  # only the relearning cells
    k = hashes("--k", "0", "10", "50")
    assert set(k) - set(base) == {f"linear-f2-s1-{m}-relearn-k50" for m in ("retrain", "sa")}
    assert all(k[n] == base[n] for n in base)  # k=10's cells are the same measurement: reused, not stale
    label = hashes("--relearn-params", "label")  # the label-only diagnostic: new relearning cells, the rest reused
    assert all((label[n] != base[n]) == ("relearn" in n) for n in base)
    assert hashes("--relearn-params", "all") == base  # the default keeps the keys committed before the flag
    start = hashes("--relearn-start", "label-mean")  # the surrogate-aware start: new relearning cells only
    assert all((start[n] != base[n]) == ("relearn" in n) for n in base)
    assert hashes("--relearn-start", "model") == base  # the default keeps the keys committed before the flag
    draw = hashes("--relearn-draw", "7", "--k", "10", "100")  # the plasticity control: new relearning cells only
    plain = hashes("--k", "10", "100")
    assert draw.keys() == plain.keys() and all((draw[n] != plain[n]) == ("relearn" in n) for n in plain)
    with pytest.raises(UsageError, match="k = 0"):
        hashes("--relearn-draw", "7")  # the default k has 0, where there is nothing to teach
    retain = hashes("--retain-steps", "50")
    assert all((retain[n] != base[n]) == n.endswith("-k0") for n in base)  # k=0's budget shapes k=0 alone
    spec = hashes("--methods", "sa:sa.lam=2")
    assert all(h != base["linear-f2-s1-sa-unlearn"] for n, h in spec.items() if "sa@sa.lam=2" in n)
    assert spec["linear-f2-s1-retrain-unlearn"] == base["linear-f2-s1-retrain-unlearn"]
    other = hashes(fps={**FPS, "evaluator": {"version": 3, "sha256": "e1"}})
    assert not set(other.values()) & set(base.values())  # a new evaluator measures everything anew


def test_lr_grid_is_log_even_from_1e4_to_1e2_three_a_decade():
    grid = robustness_plan.LR_GRID
    assert len(grid) == 7 and grid[0] == pytest.approx(1e-4) and grid[-1] == pytest.approx(1e-2)
    assert all(b / a == pytest.approx(10 ** (1 / 3)) for a, b in zip(grid, grid[1:]))
    assert robustness.parse_args([]).lrs == grid and robustness.parse_args([]).k == [0, 10, 50, 100]


def test_each_architecture_gets_its_own_width_and_a_spec_its_values():
    b = robustness.parse_args(["--set", "sa.n_fisher=500"])
    linear = robustness_plan.run_config(b, robustness_plan.Unit("linear", (2, 7), 3, "dampen:sa.dampen_alpha=10"))
    assert linear.model.width == 512 and linear.train.seed == 3 and linear.sa.forget == [2, 7]  # not conv's 16
    assert linear.sa.method == "dampen" and linear.sa.dampen_alpha == 10 and linear.sa.n_fisher == 500
    base = robustness_plan.run_config(b, robustness_plan.Unit("conv", (2,), 3, "dampen:sa.dampen_alpha=10"), False)
    assert base.model.width == 16 and base.sa.dampen_alpha == 5.0  # θ*'s Fisher comes from the base config


def test_spec_values_are_read_as_yaml_users_write_numbers():
    assert robustness_plan.parse_spec("tar:sa.tar_lr=3e-4,sa.tar_margin=1.2,sa.tar_start=model") == (
        "tar", {"sa.tar_lr": 3e-4, "sa.tar_margin": 1.2, "sa.tar_start": "model"})


@pytest.mark.parametrize("spec,match", [
    ("distil", "unknown method 'distil'"), ("sa:lam=2", "lam is not a method setting"),
    ("sa:sa.forget=3", "sa.forget is set by --forget"), ("original:sa.lam=1", "the original takes no settings"),
    ("sa:sa.lam", "'sa.lam' is not key=value"),
])
def test_bad_method_specs_are_one_line_usage_errors(spec, match):
    with pytest.raises(UsageError, match=match):
        robustness_plan.parse_spec(spec)


FAKE = {  # spec: (P(c_f), retained acc drop (points), nELBO rise (%), seconds, steps at lr 1e-3 and 1e-2, k > 0)
    "retrain": (0.001, 0.0, -1.0, 100.0, (40, 12)),
    "sa": (0.05, 0.2, 1.0, 10.0, (20, 6)),  # misses the forgetting bar
    "dampen": (0.005, 0.5, 1.5, 20.0, (40, 9)),  # meets every bar: min ratio 9 / 12
    "dampen:sa.dampen_alpha=10": (0.005, 0.5, 1.5, 20.0, (80, 18)),  # meets them: min ratio 18 / 12, the best
    "noise": (0.005, 5.0, 30.0, 20.0, (None, 30)),  # misses the retained bars
}


def fake_measure(calls):
    def measure(ctx, cell):
        calls.append(cell.name)
        p, drop, rise, secs, steps = FAKE[cell.unit.spec]
        steps = steps[cell.unit.seed] if isinstance(steps, dict) else steps  # per seed
        if cell.kind == "unlearn":
            return {"quality": {"p_forgotten": p, "retained_acc": 0.9 - drop / 100, "retained_acc_drop_pts": drop,
                                "retained_nelbo_rise_pct": rise}, "seconds": {"fisher": 0.0, "method": secs}}
        if cell.kind == "relearn":
            steps = steps if cell.k else (None, None)  # retained classes only: nobody relearns
            by_lr = {f"{lr:g}": {"steps_to_threshold": s, "steps_run": s or 500, "auc": 1 / (s or 1000)}
                     for lr, s in zip(ctx.b.lrs, steps)}
            return {"by_lr": by_lr, "best_lr": ctx.b.lrs[-1]}
        if cell.kind == "weights":
            return {"l2": secs, "fisher": 1.0, "barrier": 0.0}
        return {"free": {"best_p": 0.9}, "onehot": {"best_p": 0.2}}
    return measure


def run_fake(tmp_path, monkeypatch, calls, *argv):
    monkeypatch.setattr(robustness, "MEASURE", {k: fake_measure(calls) for k in robustness.MEASURE})
    b = robustness.parse_args(["--methods", *FAKE, "--arch", "linear", "--forget", "2", "--seeds", "1", "2", "--lrs",
                               "1e-3", "1e-2", "--restarts", "0", "--results", str(tmp_path), *argv])
    table, plan = cells.Table("robustness", tmp_path), robustness_plan.plan(b, FPS)
    failures = robustness.measure_all(robustness.Context(b, None, None), table, plan, log=lambda *a: None)
    return table, b, plan, failures


def test_an_interrupt_stops_the_benchmark_instead_of_moving_on(tmp_path, monkeypatch):
    calls = []

    def interrupted(ctx, cell):
        calls.append(cell.name)
        raise Interrupted("interrupted by SIGTERM at sa step 3; resumable state saved", 15)

    monkeypatch.setattr(robustness, "MEASURE", {k: interrupted for k in robustness.MEASURE})
    b = robustness.parse_args(["--methods", *FAKE, "--arch", "linear", "--forget", "2", "--seeds", "1",
                               "--restarts", "0", "--results", str(tmp_path)])
    table, plan = cells.Table("robustness", tmp_path), robustness_plan.plan(b, FPS)
    with pytest.raises(Interrupted):
        robustness.measure_all(robustness.Context(b, None, None), table, plan, log=lambda *a: None)
    assert len(plan) > 1 and len(calls) == 1  # no cell after it ran
    assert not list(tmp_path.rglob("*.json"))  # and none was written


def test_a_rerun_skips_done_cells_and_the_table_comes_from_the_cells(tmp_path, monkeypatch):
    calls = []
    table, b, plan, failures = run_fake(tmp_path, monkeypatch, calls, "--k", "0", "10")
    assert not failures and len(calls) == len(plan) == 5 * 2 * 4  # (unlearn, k0, k10, weights) x 5 specs x 2 seeds
    run_fake(tmp_path, monkeypatch, calls, "--k", "0", "10")
    assert len(calls) == len(plan)  # nothing measured again
    table, b, plan, _ = run_fake(tmp_path, monkeypatch, calls, "--k", "0", "7", "10")
    assert len(calls) == 40 + 10 and all(n.endswith("-relearn-k7") for n in calls[40:])  # only the new k
    md = robustness.write_table(table, b, plan, FPS)
    assert "**dampen:sa.dampen_alpha=10**" in md.split("\n## ")[1].splitlines()[2]  # the best point, by name
    for k in ("retained classes only", "k = 7 real images", "k = 10 real images"):
        assert f"steps to P ≥ 0.5, {k} (ratio to retrain):" in md
    data = json.loads((tmp_path / "robustness" / "robustness.json").read_text())
    dampen = data["groups"]["linear, forget 2"]["methods"]["dampen"]["stats"]
    assert dampen["min_steps_ratio"]["mean"] == pytest.approx(0.75) and dampen["cost"]["mean"] == pytest.approx(0.2)
    assert dampen["steps_ratio k10 0.001"]["mean"] == pytest.approx(1.0)
    assert dampen["auc_ratio k10 0.01"]["mean"] == pytest.approx(9 / 12)  # retrain's AUC (1/12) over dampen's (1/9)
    noise = data["groups"]["linear, forget 2"]["methods"]["noise"]
    assert noise["bounds"]["steps_ratio k10 0.001"] == [">="]  # never within 500 steps: a bound
    assert "| sa | 0.05 [0.05, 0.05] |" in md and "never (≥12.50× [12.50, 12.50])" in md and "both never" in md
    assert (tmp_path / "robustness" / "robustness.png").stat().st_size > 1000
    log = []
    assert robustness.dry_run(table, plan, FPS, log.append) == [True] * len(plan)
    assert log[-1].startswith(f"{len(plan)} of {len(plan)} cells done")


def test_the_must_reach_is_judged_on_every_seed_and_on_the_means(tmp_path, monkeypatch):
    fake = dict(FAKE)
    fake["dampen"] = (0.005, 0.5, 1.5, 20.0, {1: (40, 12), 2: (40, 6)})  # seed 2: 0.5x retrain's steps at lr 1e-2
    monkeypatch.setattr(sys.modules[__name__], "FAKE", fake)
    table, b, plan, _ = run_fake(tmp_path, monkeypatch, [], "--k", "10", "100")
    md = robustness.write_table(table, b, plan, FPS)
    group = json.loads((tmp_path / "robustness" / "robustness.json").read_text())["groups"]["linear, forget 2"]
    assert group["must_reach"] == ["dampen:sa.dampen_alpha=10"]  # noise misses the quality bars, sa the forgetting
    bar = group["methods"]["dampen"]["relearning_bar"]
    assert bar["seeds"]["1"]["verdict"] == "met" and bar["seeds"]["2"]["verdict"] == "fails"
    assert bar["every_seed"]["worst"] == {"k": "k10", "lr": "0.01", "ratio": 0.5, "bound": "=", "seed": 2}
    assert bar["seed_means"]["verdict"] == "fails" and bar["seed_means"]["worst"]["ratio"] == pytest.approx(0.75)
    assert "Must reach (the bars, and steps ratio ≥ 0.9× at every lr for k10 and k100 on every seed): " \
           "**dampen:sa.dampen_alpha=10**." in md
    assert "| dampen | fails: 0.50× (seed 2, k10, lr 0.01) | fails: 0.75× (k10, lr 0.01) |" in md
    assert "| noise |" not in md.split("Must reach")[1].split("steps to P")[0]  # only the specs meeting the bars


def test_the_table_renders_for_any_k_and_lr_lists_even_half_measured(tmp_path, monkeypatch):
    table, b, plan, _ = run_fake(tmp_path, monkeypatch, [], "--k", "3", "--lrs", "1e-3", "1e-2")
    b = robustness.parse_args(["--methods", *FAKE, "--arch", "linear", "--forget", "2", "--seeds", "1", "2", "--lrs",
                               "1e-3", "1e-2", "3e-2", "--k", "3", "100", "--restarts", "0", "--results", str(tmp_path)])
    md = robustness.write_table(table, b, robustness_plan.plan(b, FPS), FPS)  # new cells not measured yet
    assert "| method | lr 0.001 | lr 0.01 | lr 0.03 |" in md and "k = 100 real images" in md
    assert "k = 3 real images" in md and "cells measured" in md


def test_render_only_writes_the_table_from_the_cells_and_measures_nothing(tmp_path, monkeypatch, capsys):
    run_fake(tmp_path, monkeypatch, [], "--k", "10")
    calls = []
    monkeypatch.setattr(robustness, "MEASURE", {k: fake_measure(calls) for k in robustness.MEASURE})
    monkeypatch.setattr(robustness, "fingerprints", lambda limit, missing_ok=False: FPS)
    argv = ["--methods", "sa", "dampen", "--arch", "linear", "--forget", "2", "--seeds", "1", "2", "3", "--lrs", "1e-3",
            "1e-2", "--k", "10", "--restarts", "0", "--results", str(tmp_path), "--out", "frontier", "--render-only"]
    robustness.main(argv)
    md = (tmp_path / "robustness" / "frontier.md").read_text()
    assert not calls and md == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "18 of 27 cells measured" in md and "| dampen | 0.005 [0.005, 0.005] +1 – |" in md  # seed 3: not measured
    assert "0.75× [0.75, 0.75] +1 – |" in md and "+1 both never" not in md  # unmeasured, not "never relearned"


def test_cost_is_not_quotable_when_a_cell_was_loaded():
    def cell(secs, loaded, cpu="x"):
        return {"config": {"spec": "m"}, "loaded": loaded, "machine": {"cpu": cpu},
                "result": {"seconds": {"fisher": 5.0, "method": secs}}}
    assert robustness_table.cost(cell(15.0, False), cell(100.0, False)) == (0.2, True)
    assert robustness_table.cost(cell(15.0, True), cell(100.0, False)) == (0.2, False)
    assert robustness_table.cost(cell(15.0, False), cell(100.0, False, cpu="y"))[1] is False  # another machine
    cached = cell(100.0, False)
    cached["result"]["cached"] = {"method": True}  # retraining's seconds from the cache: timed outside any cell
    assert robustness_table.cost(cell(15.0, False), cached) == (0.2, False)


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path, paper_stand_in):
    argv = ["benchmarks/robustness.py", "--methods", "original", "sa", "--arch", "linear", "--forget", "2", "--seeds", "1",
            "--epochs", "1", "--limit", str(LIMIT), "--set", "model.width=64", "sa.n_fisher=500", "sa.sa_epochs=1",
            "sa.n_replay=1024", "eval_samples=50", "--k", "0", "5", "--lrs", "3e-3", "1e-2", "--relearn-steps", "4",
            "--relearn-samples", "50", "--retain-steps", "3", "--retain-batch", "16", "--restarts", "4",
            "--invert-steps", "3", "--weights-points", "3", "--results", tmp_path / "results", "--work", tmp_path / "w"]
    r = run_script(*argv, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "results" / "robustness" / "robustness.json").read_text())
    sa = data["groups"]["linear, forget 2"]["methods"]["sa"]["stats"]
    assert not data["missing"] and len(data["cells"]) == 3 * 5 and 0 <= sa["p_forgotten"]["mean"] <= 1
    assert sa["auc k5 0.01"]["mean"] is not None and sa["l2"]["mean"] > 0
    r = run_script(*argv, "--dry-run")
    assert r.returncode == 0 and "15 of 15 cells done" in r.stdout, r.stdout[-2000:]


def test_a_committed_cell_keeps_its_key_when_a_neutral_field_is_added_and_a_set_one_is_a_new_cell():
    """The committed unlearn cell of conv, forget 2, seed 0, SA is keyed on exactly what the plan builds today: a
    field added to the run config since (``cells.NEUTRAL``, e.g. ``sa.sam_rho``) leaves its key as it was unless set."""
    found = sorted((cells.RESULTS / "robustness" / "cells").glob("conv-f2-s0-sa-unlearn-*.json"))
    assert found, "no committed cell to compare with"
    committed = json.loads(found[0].read_text())["config"]["run"]
    b = robustness_plan.BenchConfig()
    cfg = robustness_plan.run_config(b, robustness_plan.Unit("conv", (2,), 0, "sa"))
    assert cells.run_key(asdict(cfg)) == committed and "sam_rho" not in committed["sa"]
    sam = robustness_plan.run_config(b, robustness_plan.Unit("conv", (2,), 0, "sa:sa.sam_rho=0.05"))
    assert cells.run_key(asdict(sam))["sa"]["sam_rho"] == 0.05
    assert all(name not in committed["sa"] for (_, name) in cells.NEUTRAL)  # every neutral field keeps the key
    reinit = robustness_plan.run_config(b, robustness_plan.Unit("conv", (2,), 0, "dampen:sa.dampen_mode=reinit"))
    assert cells.run_key(asdict(reinit))["sa"]["dampen_mode"] == "reinit"


def test_decoder_probe_sees_a_shut_last_block_and_the_output_logit():
    model = build_model(ModelConfig(arch="conv", width=4)).eval()
    with torch.no_grad():
        model.dec[-2].bias.fill_(-1e3)  # the last block's batch norm: every activation of its ReLU below zero
        model.dec_out.bias.fill_(-5.0)
    out = decoder_probe.probe(model, 2, samples=16, seed=0)
    assert len(out["relus"]) == 4 and out["relus"][-1] == {"zero_share": 1.0, "dead_channel_share": 1.0}
    assert all(r["zero_share"] < 1.0 for r in out["relus"][:-1])
    assert out["mean_logit"] == -5.0  # a shut last block leaves only the output bias
    assert decoder_probe.probe(model, 2, samples=16, seed=0) == out  # seeded draws


def test_kinds_unlearn_is_a_quality_screen_whose_cells_the_full_run_reuses(tmp_path, monkeypatch):
    calls = []
    table, b, plan, _ = run_fake(tmp_path, monkeypatch, calls, "--k", "10", "--kinds", "unlearn")
    assert calls == [c.name for c in plan] and all(n.endswith("-unlearn") for n in calls) and len(calls) == 5 * 2
    md = robustness.write_table(table, b, plan, FPS)
    row = next(line for line in md.splitlines() if line.startswith("| dampen |"))
    assert "+1.50" in row and row.split(" | ")[5] == "–" and "both never" not in md  # no relearning: unmeasured
    assert "steps to P ≥ 0.5" not in md  # nor its per-lr grids
    table, b, plan, _ = run_fake(tmp_path, monkeypatch, calls, "--k", "10")  # the full run after the screen
    assert len(calls) == 10 + 5 * 2 * 2 and not any(n.endswith("-unlearn") for n in calls[10:])  # screen reused
    with pytest.raises(SystemExit):
        robustness.parse_args(["--kinds", "unlearn", "relearnn"])
