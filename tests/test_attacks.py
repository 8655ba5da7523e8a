"""Relearning, condition inversion and the latent probe (sa_dist.attacks) and scripts/attack.py, on tiny budgets."""
import copy
import json
import math
from dataclasses import replace

import pytest
import torch

from conftest import LIMIT, run_script, sa_config
from sa_dist.amnesia import reset_label_inputs, selective_amnesia
from sa_dist.attacks.invert import invert
from sa_dist.attacks.probe import probe
from sa_dist.attacks.relearn import (Judges, label_samples, mean_label_inputs, p_target, relearn, schedule,
                                    start_copy, trainable)
from sa_dist.attacks.suite import AttackConfig, check_draw, relearn_at, run_relearn, target_images
from sa_dist.cli.flags import Parser, add_config_args, add_flags, config_from_args, dataclass_from_args, flagged_fields
from sa_dist.data import load_mnist
from sa_dist.evaluation.evaluator import get_evaluator
from sa_dist.fisher import diag_fisher
from sa_dist.models import ModelConfig, build_model, negative_elbo
from sa_dist.utils import UsageError

TINY = ["--arch", "linear", "--width", "64", "--epochs", "1", "--limit", str(LIMIT), "--n-fisher", "500",
        "--sa_epochs", "1", "--n-replay", "1024", "--eval-samples", "50", "--no-figures"]
TINY_ATTACK = ["--relearn-k", "0", "5", "10", "--relearn-steps", "4", "--relearn-samples", "50", "--restarts", "4",
               "--invert-steps", "3", "--probe-n", "500", "--relearn-lr", "3e-4", "3e-3", "--retain-steps", "3",
               "--retain-batch", "16", "--weights-points", "3"]


@pytest.fixture(scope="module")
def evaluator():
    return get_evaluator(None, limit=LIMIT)[0]


def _twos(n):
    x, y = load_mnist(True, limit=LIMIT)
    return x[y == 2][:n]


def test_schedule_is_dense_early_and_ends_at_the_budget():
    s = schedule(500)
    assert s[:11] == list(range(11)) and s[-1] == 500 and len(s) == len(set(s)) == sorted(s).__len__()
    assert max(b - a for a, b in zip(s, s[1:])) == 25 and schedule(12) == list(range(11)) + [12]


def test_relearn_stops_at_step_0_when_the_class_is_there_and_raises_p(tiny_baseline, evaluator):
    model = copy.deepcopy(tiny_baseline[0]).eval()  # relearn fine-tunes with batch norm in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    z = torch.randn(200, model.z_dim, generator=torch.Generator().manual_seed(0))
    p0 = p_target(model, evaluator, z, 2)
    kw = {"n_samples": 200, "auc_steps": 100, "seed": 0}
    r = relearn(model, Judges(evaluator), _twos(20), 2, steps=30, lr=5e-4, threshold=p0, **kw)
    assert r["steps_to_threshold"] == 0 and r["curve"]["step"] == [0] and r["final_p"] == pytest.approx(p0, abs=1e-4)
    assert r["auc"] == pytest.approx(p0, abs=1e-4) and r["auc_steps"] == 30  # held at P(0) over the whole window
    r = relearn(model, Judges(evaluator), _twos(20), 2, steps=12, lr=2e-3, threshold=1.01, **kw)
    assert r["steps_to_threshold"] is None and r["curve"]["step"] == schedule(12) and r["steps_run"] == 12
    assert r["final_p"] > r["curve"]["p"][0] + 0.05  # fine-tuning on real 2s brings 2s back
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched


def test_inversion_ascends_and_the_penalty_keeps_images_plausible(tiny_baseline, evaluator):
    model, _ = tiny_baseline
    start, _ = invert(model, evaluator, 2, restarts=16, steps=0, seed=0)
    free, imgs = invert(model, evaluator, 2, restarts=16, steps=40, seed=0, keep=8)
    again, _ = invert(model, evaluator, 2, restarts=16, steps=40, seed=0)
    plausible, _ = invert(model, evaluator, 2, restarts=16, steps=40, penalty=0.1, seed=0)
    assert free == again  # same seed, same numbers
    assert free["mean_p"] > 1.5 * start["mean_p"] and free["best_p"] > start["best_p"]  # the ascent works
    assert plausible["mean_nelbo"] < free["mean_nelbo"]
    assert imgs.shape == (8, 1, 28, 28) and len(free["best_label"]) == 10
    assert set(free) == {"best_p", "mean_p", "share_over_half", "best_label", "best_z_norm", "best_nelbo",
                         "mean_nelbo"}


def test_probe_finds_the_class_and_is_at_chance_on_shuffled_labels(tiny_baseline):
    model, _ = tiny_baseline
    x, y = load_mnist(False, limit=LIMIT)
    r = probe(model, x, y, 2, folds=3)
    assert r["n"] == LIMIT and r["own_label"]["features"] == model.z_dim and r["all_labels"]["features"] == 80
    assert r["own_label"]["auc"] > 0.7 and r["all_labels"]["auc"] > 0.7
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    r = probe(model, x, shuffled, 2, folds=3)
    assert abs(r["own_label"]["auc"] - 0.5) < 0.1 and abs(r["all_labels"]["auc"] - 0.5) < 0.1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("attack") / "run"
    r = run_script("scripts/unlearn.py", *TINY, "--run-dir", run_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    return run_dir


@pytest.mark.slow
def test_attack_script_writes_all_three_side_by_side_and_merges(tiny_run):
    before = json.loads((tiny_run / "results.json").read_text())
    r = run_script("scripts/attack.py", tiny_run, "--kind", "all", *TINY_ATTACK)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tiny_run / "results.json").read_text())
    assert {k: v for k, v in res.items() if k != "attacks"} == before  # the run's own results are kept
    a = res["attacks"]
    kinds = ["relearn", "retain", "invert", "probe", "weights"]
    assert a["target"] == 2 and set(a["timing_s"]) == set(kinds)
    models = ["original", "unlearned", "retrain"]
    for kind in kinds:
        assert list(a[kind]["models"]) == models
    assert set(a["relearn"]["models"]["retrain"]) == {"k0", "k5", "k10"}
    k0 = a["relearn"]["models"]["unlearned"]["k0"]["by_lr"]["0.003"]  # retained classes only, scored the same way
    assert k0["k"] == 0 and k0["batch"] == 16 and k0["curve"]["step"][-1] <= 3 and "auc" in k0
    k10 = a["relearn"]["models"]["unlearned"]["k10"]
    assert set(k10["by_lr"]) == {"0.0003", "0.003"} and k10["best_lr"] in (3e-4, 3e-3)
    for r in k10["by_lr"].values():  # both judges at every scored step
        assert r["curve"]["step"][0] == 0 and len(r["curve"]["p_paper"]) == len(r["curve"]["p"])
        assert 0 <= r["auc"] <= 1 and 0 <= r["auc_paper"] <= 1
    assert set(a["invert"]["models"]["original"]) == {"free", "plausible", "simplex", "onehot"}
    w = a["weights"]["models"]
    assert w["original"]["l2"] == 0 and w["unlearned"]["l2"] > 0 and w["unlearned"]["fisher"] > 0
    assert a["retain"]["models"]["retrain"]["curve"]["step"][-1] == 3
    assert list(a["summary"]) == models and "probe_auc_all_labels" in a["summary"]["retrain"]
    s = a["summary"]
    assert s["unlearned"]["vs_retrain"]["l2"] == pytest.approx(w["unlearned"]["l2"] / w["retrain"]["l2"])
    for lr in ("0.0003", "0.003"):  # relearning's ratios are retrain's AUC over the model's, per lr
        got = s["unlearned"]["relearn_vs_retrain"]["by_k"]["k10"]["by_lr"][lr]["auc"]
        mine, ref = k10["by_lr"][lr]["auc"], a["relearn"]["models"]["retrain"]["k10"]["by_lr"][lr]["auc"]
        assert mine > 0 and got == pytest.approx(ref / mine)
    for rel in (a["invert"]["grid"], a["relearn"]["curve_plot"]):
        assert not rel.startswith("/") and (tiny_run / rel).stat().st_size > 1000
    old_probe = a["probe"]
    r = run_script("scripts/attack.py", tiny_run, "--kind", "invert", "--models", "unlearned", *TINY_ATTACK)
    assert r.returncode == 0, r.stderr[-2000:]
    a2 = json.loads((tiny_run / "results.json").read_text())["attacks"]
    assert a2["probe"] == old_probe and list(a2["invert"]["models"]) == ["unlearned"]  # others kept, rerun replaced


@pytest.mark.parametrize("argv,code,match", [
    (["--target", "5"], 2, "--target 5 is not a forgotten class"),
    (["--kind", "fly"], 2, "invalid choice: 'fly'"),
    (["--restarts", "0"], 2, "--restarts must be >= 1"),
    (["--relearn-draw", "2"], 2, "--relearn-draw must be a class in 0..9 other than the target 2"),
    (["--relearn-draw", "7", "--relearn-k", "0", "10"], 2, "k = 0 (retained classes only) has none"),
])
@pytest.mark.slow
def test_bad_attack_arguments_are_one_line(tiny_run, cli, argv, code, match):
    got, _, err = cli("scripts/attack.py", tiny_run, *argv)
    assert got == code and len(err) == 1 and match in err[0]


@pytest.mark.slow
def test_attack_needs_a_finished_run_and_the_right_original(tmp_path, tiny_run, tiny_baseline, cli):
    code, _, err = cli("scripts/attack.py", tmp_path)
    assert code == 1 and len(err) == 1 and "is not a finished run" in err[0]
    code, _, err = cli("scripts/attack.py", tiny_run, "--original", tiny_baseline[1], "--models", "original")
    assert code == 1 and len(err) == 1 and "is not the baseline" in err[0]


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_reset_label_changes_only_the_forgotten_labels(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=8 if arch == "conv" else 32)).eval()
    reset = reset_label_inputs(model, [2, 7], seed=0).eval()
    z, x = torch.randn(6, model.z_dim), torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        for c in range(10):
            lab = torch.full((6,), c)
            same = torch.equal(model.decode(z, lab), reset.decode(z, lab)) and \
                torch.equal(model.encode(x, lab)[0], reset.encode(x, lab)[0])
            assert same == (c not in (2, 7)), c
    w, w0 = reset.dec[0].weight, model.dec[0].weight  # linear: (out, z + 10); ConvTranspose2d: (z + 10, out, 1, 1)
    fresh = [w[:, model.z_dim + c] if arch == "linear" else w[model.z_dim + c] for c in (2, 7)]
    bound = 1 / math.sqrt(torch.nn.init._calculate_fan_in_and_fan_out(w0)[0])  # PyTorch's default init range
    assert all(f.abs().max() <= bound for f in fresh)
    other = reset_label_inputs(model, [2, 7], seed=1).dec[0].weight
    assert not torch.equal(other, w)  # the seed draws the fresh weights


def test_reset_label_flag_reaches_selective_amnesia(tiny_baseline, accelerator):
    p = Parser()
    add_config_args(p)
    assert config_from_args(p.parse_args(["--reset-label"])).sa.reset_label is True
    assert config_from_args(p.parse_args([])).sa.reset_label is False
    model, _ = tiny_baseline
    fisher = diag_fisher(model, 200, seed=0, batch=200, accelerator=accelerator)
    kw = {"sa.sa_epochs": 1, "sa.n_replay": 256, "sa.lr": 1e-6}
    col = lambda m: m.dec[0].weight[:, model.z_dim + 2]  # noqa: E731  (linear: reads the label 2)
    plain, _ = selective_amnesia(model, fisher, accelerator, sa_config(**kw))
    reset, _ = selective_amnesia(model, fisher, accelerator, sa_config(**kw, **{"sa.reset_label": True}))
    assert (col(plain) - col(model)).abs().max() < 1e-4 < (col(reset) - col(model)).abs().max()
    # a method's own start (dampen, noise) is reset too, with the same draw: before, it kept its trained columns
    start = copy.deepcopy(model)
    with torch.no_grad():
        start.dec[0].weight.add_(0.5)
    moved, _ = selective_amnesia(model, fisher, accelerator, sa_config(**kw, **{"sa.reset_label": True}),
                                 start=start, anchor=start)
    assert (col(moved) - col(reset)).abs().max() < 1e-4  # the fresh columns, not start's (0.5 away)
    other = moved.dec[0].weight[:, model.z_dim + 3]
    assert (other - start.dec[0].weight[:, model.z_dim + 3]).abs().max() < 1e-4  # label 3 starts from start


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_label_only_relearning_moves_only_the_label_inputs(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=8 if arch == "conv" else 32)).eval()
    net = copy.deepcopy(model)
    opt = torch.optim.Adam(trainable(net, "label"), lr=1e-2)
    x, c = torch.rand(4, 1, 28, 28), torch.full((4,), 3)
    for _ in range(3):
        opt.zero_grad()
        negative_elbo(net, x, c).mean().backward()
        opt.step()
    before, after = dict(model.named_parameters()), dict(net.named_parameters())
    label = {id(w): (dim, start) for w, dim, start in net.label_inputs()}
    for name, w in after.items():
        if id(w) not in label:
            assert torch.equal(w, before[name]), name  # frozen: every shared weight
            continue
        dim, start = label[id(w)]
        moved = (w - before[name]).abs().sum([d for d in range(w.dim()) if d != dim]) > 0  # per input slice
        expect = torch.zeros_like(moved)
        expect[start + 3] = True  # the target's own label column, nothing else
        assert torch.equal(moved, expect), name
    assert len(trainable(copy.deepcopy(model), "all")) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="params must be one of"):
        trainable(copy.deepcopy(model), "decoder")


def test_relearn_params_reach_the_fine_tune(tiny_baseline, evaluator):
    model = copy.deepcopy(tiny_baseline[0]).eval()
    kw = {"steps": 6, "lr": 2e-3, "n_samples": 100, "threshold": 1.01, "auc_steps": 100, "seed": 0}
    full = relearn(model, Judges(evaluator), _twos(10), 2, **kw)
    label = relearn(model, Judges(evaluator), _twos(10), 2, params="label", **kw)
    assert label["curve"]["p"][0] == full["curve"]["p"][0]  # the same start, latents and images
    assert label["curve"]["p"][1:] != full["curve"]["p"][1:]  # a different fine-tune
    p = Parser()
    add_flags(p, flagged_fields(AttackConfig))
    a = dataclass_from_args(AttackConfig, p.parse_args(["--relearn-params", "label", "--relearn-steps", "6",
                                                        "--relearn-samples", "100"]))
    assert a.relearn_params == "label" and AttackConfig().relearn_params == "all"
    via = relearn_at(model, Judges(evaluator), {10: _twos(10)}, 2, replace(a, threshold=1.01), "cpu", 10, 2e-3)
    assert via["curve"]["p"] == label["curve"]["p"]  # the flag is what the fine-tune moves
    with pytest.raises(SystemExit):
        p.parse_args(["--relearn-params", "decoder"])


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_label_mean_start_sets_only_the_target_to_the_donors_mean(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=8 if arch == "conv" else 32)).eval()
    kept = copy.deepcopy(model.state_dict())
    net = start_copy(model, "label-mean", 2, donors=[1, 3, 4])
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())  # the model is untouched
    for (w, dim, start), (w0, _, _) in zip(net.label_inputs(), model.label_inputs()):
        sl = lambda t, c: t.narrow(dim, start + c, 1)  # noqa: E731  (label c's input slice)
        assert torch.allclose(sl(w, 2), (sl(w0, 1) + sl(w0, 3) + sl(w0, 4)) / 3)
        assert not torch.allclose(sl(w0, 2), sl(w, 2))
        rest = torch.ones(w.shape[dim], dtype=torch.bool)
        rest[start + 2] = False
        assert torch.equal(w.index_select(dim, rest.nonzero()[:, 0]), w0.index_select(dim, rest.nonzero()[:, 0]))
    plain = start_copy(model, "model", 2)
    assert all(torch.equal(v, kept[k]) for k, v in plain.state_dict().items())  # "model": an exact copy
    with pytest.raises(ValueError, match="donor labels other than"):
        mean_label_inputs(copy.deepcopy(model), 2, [2, 3])
    with pytest.raises(ValueError, match="start must be one of"):
        start_copy(model, "fresh", 2)


def test_relearn_start_reaches_the_fine_tune_and_retain(tiny_baseline, evaluator):
    model = copy.deepcopy(tiny_baseline[0]).eval()
    kw = {"steps": 4, "lr": 2e-3, "n_samples": 100, "threshold": 1.01, "auc_steps": 100, "seed": 0}
    plain = relearn(model, Judges(evaluator), _twos(10), 2, **kw)
    reset = relearn(model, Judges(evaluator), _twos(10), 2, start="label-mean", **kw)
    z = torch.randn(100, model.z_dim, generator=torch.Generator().manual_seed(0))
    assert reset["curve"]["p"][0] == pytest.approx(p_target(start_copy(model, "label-mean", 2), evaluator, z, 2),
                                                   abs=1e-5)  # it starts from the reset model
    assert plain["curve"]["p"][0] == pytest.approx(p_target(model, evaluator, z, 2), abs=1e-5)
    assert abs(plain["curve"]["p"][0] - reset["curve"]["p"][0]) > 1e-3  # two different starts
    p = Parser()
    add_flags(p, flagged_fields(AttackConfig))
    a = dataclass_from_args(AttackConfig, p.parse_args(["--relearn-start", "label-mean", "--relearn-steps", "4",
                                                        "--relearn-samples", "100", "--retain-steps", "2"]))
    assert a.relearn_start == "label-mean" and AttackConfig().relearn_start == "model"
    a = replace(a, threshold=1.01)
    via = relearn_at(model, Judges(evaluator), {10: _twos(10)}, 2, a, "cpu", 10, 2e-3)
    assert via["curve"]["p"] == reset["curve"]["p"]  # the flag is where the fine-tune starts
    donors = relearn_at(model, Judges(evaluator), {10: _twos(10)}, 2, a, "cpu", 10, 2e-3, donors=[0, 1])
    assert donors["curve"]["p"][0] != reset["curve"]["p"][0]  # the donors are the ones passed
    retained = relearn_at(model, Judges(evaluator), {0: load_mnist(True, limit=LIMIT)}, 2, a, "cpu", 0, 2e-3)
    assert retained["p_start"] == reset["curve"]["p"][0]  # k = 0 starts from the same reset model
    with pytest.raises(SystemExit):
        p.parse_args(["--relearn-start", "fresh"])


def test_relearn_draw_teaches_the_label_another_class_and_judges_that_class(tiny_baseline, evaluator):
    model = copy.deepcopy(tiny_baseline[0]).eval()
    kw = {"steps": 6, "lr": 3e-3, "n_samples": 100, "threshold": 1.01, "auc_steps": 100, "seed": 0}
    x, y = load_mnist(True, limit=LIMIT)
    sevens = x[y == 7][:10]
    control = relearn(model, Judges(evaluator), sevens, 2, draw=7, **kw)
    z = torch.randn(100, model.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p7 = torch.softmax(evaluator(label_samples(model, z, 2)), 1)[:, 7].mean().item()
    assert control["curve"]["p"][0] == pytest.approx(p7, abs=1e-5)  # P(y=7) of label 2's samples, before
    assert control["curve"]["p"][-1] > control["curve"]["p"][0] + 0.01  # label 2 learns to draw sevens
    attack = relearn(model, Judges(evaluator), _twos(10), 2, **kw)
    assert attack["curve"]["p"][0] != control["curve"]["p"][0]  # the attack judges P(y=2)
    cfg = sa_config(**{"train.limit": LIMIT})
    a = AttackConfig(relearn_k=[10], relearn_lr=[3e-3], relearn_steps=6, relearn_samples=100, threshold=1.01,
                     relearn_draw=7)
    block = run_relearn({"m": (model, "test")}, Judges(evaluator), cfg, a, 2, "cpu")
    assert block["settings"]["draw"] == 7
    direct = relearn(model, Judges(evaluator), target_images(cfg, 7, 10, 0), 2, draw=7, **kw)
    assert block["models"]["m"]["k10"]["by_lr"]["0.003"]["curve"]["p"] == direct["curve"]["p"]  # sevens, judged 7
    p = Parser()
    add_flags(p, flagged_fields(AttackConfig))
    assert dataclass_from_args(AttackConfig, p.parse_args(["--relearn-draw", "7"])).relearn_draw == 7
    assert AttackConfig().relearn_draw is None
    for bad, match in ((2, "other than the target 2"), (10, "in 0..9"), (-1, "in 0..9")):
        with pytest.raises(UsageError, match=match):
            check_draw(replace(a, relearn_draw=bad), 2, 10)
    with pytest.raises(UsageError, match="k = 0"):
        check_draw(replace(a, relearn_k=[0, 10]), 2, 10)
    check_draw(replace(a, relearn_draw=None, relearn_k=[0]), 2, 10)  # the attack itself: any k
