"""The robustness pieces on toys and tiny budgets: the relearning lr grid, retain-only relearning (k = 0), inversion
label modes, weight-space distances and the loss barrier, the class Fisher, and the dampen and noise methods; the
comparison with retrain (AUC, per-lr ratios, their minimum), merging attack blocks, the cache's precision rule."""
import json
import math

import pytest
import torch
import torch.nn as nn

from accelerate.state import AcceleratorState

from conftest import LIMIT, sa_config
from sa_dist.attacks import relearn as relearn_mod
from sa_dist.attacks.compare import auc_ratio, bar_verdict, curve_auc, grid_ratios, steps_ratio
from sa_dist.attacks.invert import invert
from sa_dist.attacks.relearn import Judges, best_of, relearn, relearn_grid, schedule
from sa_dist.attacks.retain import retain_relearn
from sa_dist.attacks.suite import AttackConfig, attack_accelerator, merge_results, run_relearn, summary
from sa_dist.cache import baseline_key, baseline_path, get_baseline
from sa_dist.attacks.weights import barrier, fisher_distance, l2_distance, path_losses
from sa_dist.cli.flags import Parser, add_config_args, config_from_args
from sa_dist.config import with_values
from sa_dist.data import load_mnist
from sa_dist.evaluation.evaluator import get_evaluator
from sa_dist.evaluation.paper import PaperClassifier
from sa_dist.fisher import class_fisher, diag_fisher, fisher_batch
from sa_dist.methods import Context, get_method, method_names
from sa_dist.methods import dampen as dampen_method
from sa_dist.methods import noise as noise_method
from sa_dist.methods.dampen import dampen, unit_axes
from sa_dist.methods.noise import perturb
from sa_dist.models import ModelConfig, build_model
from sa_dist.objective import rms
from sa_dist.runtime import make_accelerator
from sa_dist.utils import UsageError, UserError


@pytest.fixture(scope="module")
def evaluator():
    return get_evaluator(None, limit=LIMIT)[0]


def _result(steps, auc=0.5, p=0.6, run=100):
    """A hand-made relearning result: ``steps`` to the threshold (None: never, after ``run`` steps), its AUC."""
    return {"steps_to_threshold": steps, "final_p": p, "auc": auc, "steps_run": run if steps is None else steps,
            "curve": {"step": [0], "p": [p]}}


def test_best_lr_is_the_fewest_steps_then_the_highest_p():
    assert best_of({"0.0003": _result(40, p=0.6), "0.003": _result(3, p=0.55), "0.03": _result(None, p=0.1)}) == "0.003"
    assert best_of({"0.0003": _result(None, p=0.2), "0.003": _result(None, p=0.4)}) == "0.003"
    assert best_of({"0.0003": _result(5, p=0.6), "0.003": _result(5, p=0.9)}) == "0.0003"  # a tie: the earlier lr


def test_relearn_grid_reports_every_lr_on_a_toy_with_both_judges(tiny_baseline, evaluator):
    x, y = load_mnist(True, limit=LIMIT)
    model = tiny_baseline[0]
    z = torch.randn(50, model.z_dim, generator=torch.Generator().manual_seed(0))
    p0 = relearn_mod.p_target(model.eval(), evaluator, z, 2)
    torch.manual_seed(0)
    judges = Judges(evaluator, PaperClassifier().eval())  # an untrained paper classifier: the plumbing, not its P
    kw = {"steps": 10, "n_samples": 50, "auc_steps": 100, "threshold": min(p0 + 0.05, 0.99), "seed": 0}
    r = relearn_grid(lambda lr: relearn(model, judges, x[y == 2][:10], 2, lr=lr, **kw), [1e-7, 3e-3])
    assert set(r["by_lr"]) == {"1e-07", "0.003"} and r["best_lr"] == 0.003  # a tiny lr cannot move P
    threshold = min(p0 + 0.05, 0.99)
    steps, curve = r["by_lr"]["0.003"]["steps_to_threshold"], r["by_lr"]["0.003"]["curve"]
    assert steps in schedule(10) and curve["step"][-1] == steps  # it stopped at a scored step ...
    assert curve["p"][-1] >= threshold - 1e-5  # ... where P reached the threshold (the curve rounds to 1e-5) ...
    assert all(p < threshold for p in curve["p"][:-1])  # ... and not before: the first such step
    slow, fast = r["by_lr"]["1e-07"], r["by_lr"]["0.003"]
    assert slow["steps_to_threshold"] is None and fast["steps_to_threshold"] is not None
    assert fast["auc"] > slow["auc"] and slow["auc_steps"] == 10  # the window is cut to the budget
    assert len(fast["curve"]["p_paper"]) == len(fast["curve"]["p"]) and fast["curve"]["p_paper"] != fast["curve"]["p"]
    assert all(0 <= q <= 1 for q in fast["curve"]["p_paper"]) and "auc_paper" in fast
    assert "p_paper" not in relearn(model, Judges(evaluator), x[y == 2][:10], 2, steps=1, lr=1e-3, n_samples=20,
                                    threshold=1.1, auc_steps=100, seed=0)["curve"]  # no paper classifier: no curve


def test_summary_gives_ratios_to_retrain_per_lr_and_the_minimum():
    def grid(steps, aucs):  # k10 at lrs 0.001, 0.01
        return {"k10": {"best_lr": 0.01, "by_lr": {lr: _result(s, a) for lr, s, a in zip(("0.001", "0.01"), steps,
                                                                                             aucs)}}}
    attacks = {"relearn": {"models": {"original": grid((0, 0), (0.9, 0.9)), "unlearned": grid((30, 6), (0.2, 0.5)),
                                      "retrain": grid((60, 24), (0.1, 0.25))}},
               "weights": {"models": {name: {"l2": l2, "fisher": 1.0, "barrier": 0.0}
                                      for name, l2 in (("unlearned", 10.0), ("retrain", 25.0))}}}
    rows = summary(attacks)
    assert rows["unlearned"]["relearn_steps_k10_lr0.01"] == 6 and rows["unlearned"]["relearn_auc_k10_lr0.001"] == 0.2
    g = rows["unlearned"]["relearn_vs_retrain"]
    assert g["by_k"]["k10"]["by_lr"]["0.001"] == {"steps": {"ratio": 0.5, "bound": "="}, "auc": 0.5}
    assert g["by_k"]["k10"]["by_lr"]["0.01"] == {"steps": {"ratio": 0.25, "bound": "="}, "auc": 0.5}
    assert g["min_steps"] == {"ratio": 0.25, "bound": "=", "k": "k10", "lr": "0.01"}  # the attacker's best case
    assert rows["original"]["relearn_vs_retrain"]["min_steps"]["ratio"] == 0.0
    assert rows["unlearned"]["vs_retrain"]["l2"] == 0.4 and rows["retrain"]["vs_retrain"]["barrier"] is None
    assert "relearn_steps_k10_lr0.01" not in rows["unlearned"]["vs_retrain"]  # relearning has its own ratios


def _pair():
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 2.0]]))
        a.bias.fill_(0.0)
        b.weight.copy_(torch.tensor([[4.0, 6.0]]))  # moved by (3, 4)
        b.bias.fill_(1.0)  # moved by 1
    return a, b


def test_l2_and_fisher_distances_on_hand_made_tensors():
    a, b = _pair()
    assert l2_distance(b, a) == pytest.approx((9 + 16 + 1) ** 0.5)
    fisher = {"weight": torch.tensor([[1.0, 0.25]]), "bias": torch.tensor([0.0])}
    assert fisher_distance(b, a, fisher) == pytest.approx((1 * 9 + 0.25 * 16 + 0) ** 0.5)  # sqrt(Σ F (θ-θ*)²)
    assert l2_distance(a, a) == 0 and fisher_distance(a, a, fisher) == 0


class _Scalar(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))


def test_barrier_is_zero_on_a_convex_quadratic_and_the_hump_of_a_double_well():
    a, b = _Scalar(-1.0), _Scalar(1.0)
    ts, quad = path_losses(a, b, lambda m: m.w.item() ** 2, points=11)
    assert ts[0] == 0 and ts[-1] == 1 and quad[5] == pytest.approx(0.0)
    assert barrier(ts, quad) == pytest.approx(0.0)  # convex: never above the endpoints' chord
    ts, well = path_losses(a, b, lambda m: (m.w.item() ** 2 - 1) ** 2, points=11)
    assert barrier(ts, well) == pytest.approx(1.0)  # the hump at w = 0 over a chord at 0
    ts, tilted = path_losses(_Scalar(0.0), _Scalar(2.0), lambda m: m.w.item() ** 2, points=3)
    assert barrier(ts, tilted) == pytest.approx(0.0) and tilted == pytest.approx([0.0, 1.0, 4.0])


def test_retain_attack_runs_tiny_and_never_sees_the_target(tiny_baseline, evaluator):
    x, y = load_mnist(True, limit=LIMIT)
    model = tiny_baseline[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = {"batch": 16, "lr": 5e-4, "n_samples": 50, "threshold": 1.1, "auc_steps": 100, "seed": 0}
    r = retain_relearn(model, Judges(evaluator), x, y, 2, steps=4, stop=False, **kw)
    assert r["curve"]["step"] == schedule(4) and r["p_start"] == r["curve"]["p"][0] and r["k"] == 0
    assert r["max_p"] == max(r["curve"]["p"]) and all(0 <= p <= 1 for p in r["curve"]["p"])
    assert r["steps_to_threshold"] is None and r["steps_run"] == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    stopped = retain_relearn(model, Judges(evaluator), x, y, 2, steps=4, stop=True, **{**kw, "threshold": 0.0})
    assert stopped["steps_to_threshold"] == 0 and stopped["curve"]["step"] == [0]
    poisoned = y.clone()
    poisoned[y != 2] = 2  # every image labelled 2: nothing is left to fine-tune on
    with pytest.raises(UserError, match="needs images of classes other than 2; the data has none"):
        retain_relearn(model, Judges(evaluator), x[:10], poisoned[:10], 2, steps=1, stop=True, **kw)


def test_k0_in_the_grid_is_retain_only_fine_tuning_at_every_lr(tiny_baseline, evaluator):
    cfg = sa_config(**{"train.limit": LIMIT})
    a = AttackConfig(relearn_k=[0, 5], relearn_lr=[1e-3, 3e-3], relearn_steps=3, retain_steps=4, retain_batch=8,
                     relearn_samples=20, threshold=1.1)
    block = run_relearn({"m": (tiny_baseline[0], "toy")}, Judges(evaluator), cfg, a, 2, "cpu")
    k0, k5 = block["models"]["m"]["k0"], block["models"]["m"]["k5"]
    assert set(k0["by_lr"]) == set(k5["by_lr"]) == {"0.001", "0.003"}
    assert all(r["k"] == 0 and r["batch"] == 8 and r["steps_run"] == 4 for r in k0["by_lr"].values())
    assert all(r["k"] == 5 and r["steps_run"] == 3 for r in k5["by_lr"].values())
    assert k0["by_lr"]["0.001"]["curve"]["p"] != k0["by_lr"]["0.003"]["curve"]["p"]  # the lr reaches the fine-tune


def test_inversion_label_modes(tiny_baseline, evaluator):
    model = tiny_baseline[0]
    onehot, _ = invert(model, evaluator, 2, restarts=4, steps=2, seed=0, label="onehot")
    simplex, _ = invert(model, evaluator, 2, restarts=4, steps=2, seed=0, label="simplex")
    assert onehot["best_label"] == [1.0 if k == 2 else 0.0 for k in range(10)]
    assert sum(simplex["best_label"]) == pytest.approx(1.0, abs=0.01) and min(simplex["best_label"]) >= 0
    with pytest.raises(ValueError, match="label must be one of"):
        invert(model, evaluator, 2, restarts=2, steps=1, label="hard")


def test_class_fisher_draws_only_the_asked_classes(tiny_baseline):
    model = tiny_baseline[0]
    _, c, _ = fisher_batch(model, 0, 0, 250, classes=(2,))
    assert set(c.tolist()) == {2}
    _, c, _ = fisher_batch(model, 0, 0, 250)
    assert len(set(c.tolist())) == 10  # the default still draws every class
    f2 = class_fisher(model, [2], 200, seed=0, batch=200)
    assert f2.keys() == diag_fisher(model, 200, 0, 200, progress=False).keys()
    assert not torch.equal(f2["dec.0.weight"], class_fisher(model, [3], 200, seed=0, batch=200)["dec.0.weight"])


def _model_and_fishers(arch: str, width: int, scale: float):
    """A small seeded model and random retained / forgotten Fishers, the forgotten ``scale`` times larger."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=width)).eval()
    gen = torch.Generator().manual_seed(1)
    f_r = {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters()}
    f_f = {n: torch.rand(p.shape, generator=gen) * scale for n, p in model.named_parameters()}
    return model, f_r, f_f


def test_dampen_shrinks_exactly_the_selected_weights():
    model, f_r, f_f = _model_and_fishers("linear", 16, 10.0)
    name = "dec.0.bias"
    f_r[name][:3] = 0.0  # selected with beta 0: zeroed
    out, info = dampen(model, f_f, f_r, alpha=5.0)
    total = 0
    for (n, p), (_, q) in zip(model.named_parameters(), out.named_parameters()):
        mask = f_f[n] > 5.0 * f_r[n]
        total += int(mask.sum())
        assert torch.equal(q[~mask], p[~mask])  # the rest exactly kept
        assert torch.allclose(q[mask], p[mask] * f_r[n][mask] / f_f[n][mask])
    assert info["selected"] == total > 0 and (out.dec[0].bias[:3] == 0).all()


def test_dampen_reinit_draws_the_selected_weights_afresh_and_keeps_the_rest():
    model, f_r, f_f = _model_and_fishers("conv", 8, 10.0)
    out, info = dampen(model, f_f, f_r, alpha=5.0, mode="reinit", seed=3)
    shrunk, _ = dampen(model, f_f, f_r, alpha=5.0)
    moved = 0
    for (n, p), (_, q), (_, r) in zip(model.named_parameters(), out.named_parameters(), shrunk.named_parameters()):
        mask = f_f[n] > 5.0 * f_r[n]
        assert torch.equal(q[~mask], p[~mask]), n  # the rest exactly kept
        if p.dim() < 2:
            assert torch.equal(q, r), n  # biases and batch-norm scales: shrunk as in SSD
            continue
        bound = 1 / math.sqrt(torch.nn.init._calculate_fan_in_and_fan_out(p)[0])  # PyTorch's default init range
        assert (q[mask].abs() <= bound).all() and not torch.equal(q[mask], r[mask]), n
        moved += int(mask.sum())
    assert moved > 0 and info["selected"] > moved
    again, _ = dampen(model, f_f, f_r, alpha=5.0, mode="reinit", seed=3)
    other, _ = dampen(model, f_f, f_r, alpha=5.0, mode="reinit", seed=4)
    assert torch.equal(again.enc[0].weight, out.enc[0].weight)  # seeded
    assert not torch.equal(other.enc[0].weight, out.enc[0].weight)
    with pytest.raises(ValueError, match="mode must be one of"):
        dampen(model, f_f, f_r, alpha=5.0, mode="zero")


def test_dampen_unit_selects_whole_output_units_by_their_summed_fisher():
    model, f_r, f_f = _model_and_fishers("conv", 8, 1.0)  # same scale: no unit's summed ratio comes near alpha
    lin, tr = "enc_out.weight", "dec.0.weight"  # Linear (out, in); ConvTranspose2d (in, out, 1, 1)
    f_f[lin][3, 0] = 1e4  # one entry far above: its row's sum passes, its neighbours alone mostly do not
    f_f[tr][:, 5] *= 100.0  # output channel 5 of the transposed convolution: its dim 1
    axes = unit_axes(model)
    assert axes[lin] == 0 and axes[tr] == 1 and axes["enc.0.weight"] == 0
    out, info = dampen(model, f_f, f_r, alpha=5.0, mode="reinit", seed=3, unit="unit")
    by_weight, _ = dampen(model, f_f, f_r, alpha=5.0, mode="reinit", seed=3)
    q, p = out.enc_out.weight, model.enc_out.weight
    assert (q[3] != p[3]).all() and torch.equal(q[:3], p[:3]) and torch.equal(q[4:], p[4:])  # the row, whole
    assert (by_weight.enc_out.weight[3] == p[3]).sum() > p.shape[1] // 2  # by weight, most of the row stays
    q, p = out.dec[0].weight, model.dec[0].weight
    assert (q[:, 5] != p[:, 5]).all() and torch.equal(q[:, :5], p[:, :5]) and torch.equal(q[:, 6:], p[:, 6:])
    assert info["per_tensor"][lin] == model.enc_out.weight.shape[1] and info["per_tensor"][tr] == p.shape[0]
    assert not any(w.dim() >= 2 and n not in (lin, tr) for n, w in model.named_parameters() if n in info["per_tensor"])
    for n, w in model.named_parameters():  # one-dimensional parameters: entry by entry, as by weight
        if w.dim() == 1:
            assert torch.equal(dict(out.named_parameters())[n], dict(by_weight.named_parameters())[n]), n
    with pytest.raises(ValueError, match="unit must be one of"):
        dampen(model, f_f, f_r, alpha=5.0, unit="layer")
    with pytest.raises(UsageError, match="--dampen-unit must be one of weight, unit"):
        sa_config(**{"sa.dampen_unit": "layer"})


def test_dampen_mode_flag_reaches_the_dampening(tiny_baseline, accelerator, monkeypatch):
    seen = {}
    real = dampen_method.dampen

    def record(model, f_f, f_r, alpha, mode="shrink", seed=0, unit="weight"):
        seen.update(mode=mode, seed=seed, unit=unit)
        return real(model, f_f, f_r, alpha, mode, seed, unit)

    monkeypatch.setattr(dampen_method, "dampen", record)
    monkeypatch.setattr(dampen_method, "selective_amnesia", lambda original, fisher, acc, cfg, **kw: (kw["start"], []))
    p = Parser()
    add_config_args(p)
    assert config_from_args(p.parse_args([])).sa.dampen_mode == "shrink"
    assert config_from_args(p.parse_args(["--dampen-mode", "reinit"])).sa.dampen_mode == "reinit"
    assert config_from_args(p.parse_args([])).sa.dampen_unit == "weight"
    assert config_from_args(p.parse_args(["--dampen-unit", "unit"])).sa.dampen_unit == "unit"
    cfg = sa_config(**{"sa.method": "dampen", "sa.dampen_mode": "reinit", "sa.dampen_unit": "unit",
                       "sa.n_forget_fisher": 100, "sa.seed": 5})
    out = dampen_method.unlearn(Context(cfg, tiny_baseline[0], {}, accelerator))
    assert seen == {"mode": "reinit", "seed": 5, "unit": "unit"} and out.info["unit"] == "unit"
    with pytest.raises(UsageError, match="--dampen-mode must be one of shrink, reinit"):
        sa_config(**{"sa.dampen_mode": "zero"})


def _recorded_sa(monkeypatch, module) -> dict:
    """Replace ``module.selective_amnesia`` by a recorder of what it is called with (it hands theta* back)."""
    seen = {}

    def record(model, fisher, acc, cfg, **kw):
        seen.update(kw, fisher=fisher, cfg=cfg)
        return model, []

    monkeypatch.setattr(module, "selective_amnesia", record)
    return seen


@pytest.mark.parametrize("regulariser", ["ewc", "distance"])
def test_dampen_regulariser_says_what_holds_the_repair(regulariser, tiny_baseline, accelerator, monkeypatch):
    seen = _recorded_sa(monkeypatch, dampen_method)
    cfg = sa_config(**{"sa.method": "dampen", "sa.dampen_mode": "reinit", "sa.dampen_regulariser": regulariser,
                       "sa.n_forget_fisher": 100})
    fisher = {"marker": torch.zeros(1)}
    out = dampen_method.unlearn(Context(cfg, tiny_baseline[0], fisher, accelerator))
    assert seen["regulariser"] == regulariser and out.info["regulariser"] == regulariser
    assert any(not torch.equal(a, b) for a, b in zip(seen["start"].parameters(), tiny_baseline[0].parameters()))
    if regulariser == "ewc":
        assert seen["anchor"] is seen["start"] and seen["fisher"] is fisher  # EWC holds the damped weights
    else:
        assert seen["anchor"] is None and seen["fisher"] is None  # None: the push is measured from θ*
    with pytest.raises(UsageError, match="--dampen-regulariser must be one of ewc, distance"):
        sa_config(**{"sa.dampen_regulariser": "l2"})


def test_dampen_with_the_distance_push_measures_it_from_theta_star(tiny_baseline, accelerator):
    model = tiny_baseline[0]
    small = {"sa.sa_epochs": 1, "sa.n_replay": 256, "sa.n_forget_fisher": 200, "sa.fisher_batch": 200,
             "sa.method": "dampen", "sa.dampen_mode": "reinit", "sa.dampen_alpha": 1.0,
             "sa.dampen_regulariser": "distance", "sa.distance_target": 10.0}  # a cap far above: the term is the RMS
    cfg = sa_config(**small)
    out = dampen_method.unlearn(Context(cfg, model, None, accelerator))
    first = out.history[0]
    assert "weight_dist_reg" in first and "ewc" not in first
    f_f = dampen_method.class_fisher(model, [2], 200, seed=cfg.sa_seed, batch=200)
    f_r = dampen_method.retained_fisher(model, [2], 200, seed=cfg.sa_seed, batch=200)
    damped, _ = dampen(model, f_f, f_r, 1.0, "reinit", seed=cfg.sa_seed)
    start = float(rms([a - b for a, b in zip(damped.parameters(), model.parameters())]))
    assert start > 0 and first["weight_dist_reg"] == pytest.approx(-start, rel=0.05)  # from θ*: not 0 at the start


def test_dampen_never_amplifies_a_weight_when_alpha_is_below_one():
    model, f_r, f_f = _model_and_fishers("linear", 16, 1.0)  # same scale: F_r/F_f > 1 too
    out, info = dampen(model, f_f, f_r, alpha=0.25)
    above_one = 0
    for (n, p), (_, q) in zip(model.named_parameters(), out.named_parameters()):
        assert (q.abs() <= p.abs()).all(), n  # no weight grows in magnitude
        kept = (f_f[n] > 0.25 * f_r[n]) & (f_r[n] > f_f[n])  # selected, with a ratio above 1: beta capped at 1
        above_one += int(kept.sum())
        assert torch.equal(q[kept], p[kept])
    assert above_one > 0 and info["selected"] > above_one  # the cap mattered, and other weights were shrunk


@pytest.mark.parametrize("anchor", ["noisy", "theta_star", "none"])
def test_noise_anchor_says_where_ewc_pulls(anchor, tiny_baseline, accelerator, monkeypatch):
    seen = _recorded_sa(monkeypatch, noise_method)
    model = tiny_baseline[0]
    cfg = sa_config(**{"sa.method": "noise", "sa.lam": 3.0, "sa.noise_anchor": anchor})
    out = noise_method.unlearn(Context(cfg, model, {}, accelerator))
    noisy = perturb(model, cfg.sa.noise, cfg.sa_seed)
    assert all(torch.equal(a, b) for a, b in zip(seen["start"].parameters(), noisy.parameters()))  # starts noisy
    if anchor == "noisy":
        assert seen["anchor"] is seen["start"] and seen["cfg"].sa.lam == 3.0  # EWC at the very noised tensors
    elif anchor == "theta_star":
        assert seen["anchor"] is None and seen["cfg"].sa.lam == 3.0  # None: selective_amnesia anchors at θ*
    else:
        assert seen["cfg"].sa.lam == 0.0 and cfg.sa.lam == 3.0  # no EWC, the caller's config untouched
    assert out.info["anchor"] == anchor and out.info["lam"] == seen["cfg"].sa.lam
    with pytest.raises(UsageError, match="--noise-anchor must be one of noisy, theta_star, none"):
        sa_config(**{"sa.noise_anchor": "theta"})


def test_noise_is_relative_and_reproducible():
    model = build_model(ModelConfig(arch="linear", width=16)).eval()
    with torch.no_grad():
        model.dec[0].bias.zero_()
    a, b, c = perturb(model, 0.5, seed=3), perturb(model, 0.5, seed=3), perturb(model, 0.5, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert (a.dec[0].bias == 0).all()  # scaled per weight: a zero weight stays zero
    assert all(torch.equal(p, q) for p, q in zip(perturb(model, 0.0, 1).parameters(), model.parameters()))


def test_new_methods_are_reachable_and_run_tiny(tiny_baseline, accelerator):
    p = Parser()
    add_config_args(p)
    cfg = config_from_args(p.parse_args(["--method", "dampen", "--dampen-alpha", "2", "--n-forget-fisher", "200"]))
    assert cfg.sa.method == "dampen" and cfg.sa.dampen_alpha == 2.0 and cfg.sa.n_forget_fisher == 200
    assert {"dampen", "noise"} <= set(method_names())
    model = tiny_baseline[0]
    fisher = diag_fisher(model, 200, seed=0, batch=200, accelerator=accelerator, progress=False)
    small = {"sa.sa_epochs": 1, "sa.n_replay": 256, "sa.n_forget_fisher": 200, "sa.fisher_batch": 200}
    for name in ("dampen", "noise"):
        out = get_method(name).unlearn(Context(sa_config(**small, **{"sa.method": name}), model, fisher, accelerator))
        assert len(out.history) == 2 and out.sa_terms
        assert any(not torch.equal(a, b) for a, b in zip(out.model.parameters(), model.parameters()))
    assert 0 < out.info["l2_moved"]
    with pytest.raises(Exception, match="--noise"):
        config_from_args(p.parse_args(["--noise", "-1"]))


def test_auc_on_hand_made_curves():
    assert curve_auc([0, 10], [0.0, 1.0], 10) == pytest.approx(0.5)  # a straight ramp: half the box
    assert curve_auc([0, 2, 4], [0.2, 0.6, 0.6], 4) == pytest.approx((2 * 0.4 + 2 * 0.6) / 4)
    assert curve_auc([0, 2], [0.2, 0.6], 4) == pytest.approx((2 * 0.4 + 2 * 0.6) / 4)  # stopped at 2: 0.6 held
    assert curve_auc([0, 100, 200], [0.0, 0.5, 1.0], 150) == pytest.approx((100 * 0.25 + 50 * 0.625) / 150)  # cut
    assert curve_auc([0, 5], [0.3, 0.9], 0) == 0.3
    with pytest.raises(ValueError, match="starts at step 0"):
        curve_auc([1, 2], [0.1, 0.2], 10)


def test_step_ratios_bound_a_run_that_never_got_there():
    assert steps_ratio(_result(6), _result(24)) == {"ratio": 0.25, "bound": "="}
    assert steps_ratio(_result(None, run=500), _result(50)) == {"ratio": 10.0, "bound": ">="}  # never: >= budget
    assert steps_ratio(_result(5), _result(None, run=500)) == {"ratio": 0.01, "bound": "<="}
    assert steps_ratio(_result(None), _result(None)) is None and steps_ratio(_result(3), _result(0)) is None
    assert auc_ratio(_result(1, auc=0.8), _result(9, auc=0.2)) == pytest.approx(0.25)  # more area: relearns faster
    assert auc_ratio(_result(None, auc=0.0), _result(9, auc=0.2)) is None


def test_the_grid_minimum_is_over_every_k_and_lr_and_keeps_its_bound():
    model = {"k0": {"by_lr": {"0.001": _result(None, auc=0.01), "0.01": _result(None, auc=0.02)}},
             "k10": {"by_lr": {"0.001": _result(None, auc=0.1, run=500), "0.01": _result(12, auc=0.4)}}}
    ref = {"k0": {"by_lr": {"0.001": _result(None, auc=0.01), "0.01": _result(None, auc=0.01)}},
           "k10": {"by_lr": {"0.001": _result(250, auc=0.2), "0.01": _result(8, auc=0.6)}}}
    g = grid_ratios(model, ref)
    assert g["by_k"]["k0"]["min_steps"] is None and g["by_k"]["k0"]["min_auc"] == {"ratio": 0.5, "k": "k0", "lr": "0.01"}
    assert g["by_k"]["k10"]["by_lr"]["0.001"]["steps"] == {"ratio": 2.0, "bound": ">="}
    assert g["min_steps"] == {"ratio": 1.5, "bound": "=", "k": "k10", "lr": "0.01"}
    assert g["min_auc"]["ratio"] == pytest.approx(0.5) and g["min_auc"]["k"] == "k0"
    assert grid_ratios({"k50": model["k10"]}, ref) == {"by_k": {}, "min_steps": None, "min_auc": None}


def test_merge_results_drops_the_blocks_of_another_target(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"summary": {}, "attacks": {
        "target": 2, "relearn": {"models": {}}, "probe": {"models": {}}, "timing_s": {"relearn": 1.0, "probe": 2.0}}}))
    a = merge_results(tmp_path, {"target": 2, "invert": {"models": {}}, "timing_s": {"invert": 3.0}})
    assert {"relearn", "probe", "invert"} <= set(a) and a["timing_s"] == {"relearn": 1.0, "probe": 2.0, "invert": 3.0}
    a = merge_results(tmp_path, {"target": 7, "weights": {"models": {}}, "timing_s": {"weights": 4.0}})
    assert a["target"] == 7 and not {"relearn", "probe", "invert"} & set(a) and a["timing_s"] == {"weights": 4.0}
    assert json.loads((tmp_path / "results.json").read_text())["attacks"] == a


def test_a_model_is_never_trained_under_another_precisions_cache_key(tmp_path):
    cfg = sa_config(**{"mixed_precision": "bf16", "train.epochs": 1, "train.limit": 500, "model.width": 16})
    try:
        AcceleratorState._reset_state(reset_partial_state=True)
        fp32 = make_accelerator(cpu=True, mixed_precision="no", project_dir=str(tmp_path))
        with pytest.raises(UserError, match="must be trained in mixed precision 'bf16', but this process runs 'no'"):
            get_baseline(cfg, fp32, exclude=(2,))  # what the attacks did: an fp32 retrain under the bf16 key
        assert not baseline_path(baseline_key(cfg, (2,))).exists()
        AcceleratorState._reset_state(reset_partial_state=True)
        acc = attack_accelerator(cfg, tmp_path)  # the attacks now run in the run's precision
        assert acc.mixed_precision == "bf16"
        _, info = get_baseline(cfg, acc, exclude=(2,))
        assert info["key"] == baseline_key(cfg, (2,)) and baseline_path(info["key"]).is_file()
        AcceleratorState._reset_state(reset_partial_state=True)
        fp16 = with_values(cfg, {"mixed_precision": "fp16"})  # cannot run on a CPU: float32, and training refused
        assert attack_accelerator(fp16, tmp_path).mixed_precision == ("fp16" if torch.cuda.is_available() else "no")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_a_relearning_bar_is_decided_only_where_a_bound_allows_it():
    ks = ("k10", "k100")
    met = {("k10", "1e-3"): (1.2, "="), ("k100", "1e-3"): (None, None), ("k100", "1e-2"): (0.95, ">=")}
    assert bar_verdict(met, 0.9, ks) == {"verdict": "met", "worst": {"k": "k100", "lr": "1e-2", "ratio": 0.95,
                                                                     "bound": ">="}}
    # retrain never relearned: 1.3 is an upper bound, so the bar is open; the method never did: 0.5 is a lower one
    assert bar_verdict(met | {("k10", "1e-4"): (1.3, "<=")}, 0.9, ks)["verdict"] == "open"
    assert bar_verdict(met | {("k10", "1e-4"): (0.5, ">=")}, 0.9, ks)["worst"]["ratio"] == 0.5
    failing = met | {("k10", "1e-4"): (0.7, "<="), ("k100", "1e-4"): (0.46, "="), ("k10", "1e-2"): (1.3, "<=")}
    assert bar_verdict(failing, 0.9, ks) == {"verdict": "fails", "worst": {"k": "k100", "lr": "1e-4", "ratio": 0.46,
                                                                           "bound": "="}}
    assert bar_verdict({("k10", "1e-3"): (0.2, "=")} | {("k50", "1e-3"): (2.0, "=")}, 0.9, ks)["verdict"] == "unmeasured"
    assert bar_verdict(failing | {("k50", "1e-3"): (0.1, "=")}, 0.9, ks)["worst"]["ratio"] == 0.46  # k 50: not the bar
