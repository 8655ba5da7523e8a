"""The robustness pieces on toys and tiny budgets: the relearning lr grid, retain-only relearning, inversion label
modes, weight-space distances and the loss barrier, the class Fisher, and the dampen and noise methods."""
import pytest
import torch
import torch.nn as nn

from conftest import LIMIT, sa_config
from sa_dist.attacks import relearn as relearn_mod
from sa_dist.attacks.invert import invert
from sa_dist.attacks.relearn import best_of, relearn_grid, schedule
from sa_dist.attacks.retain import retain_relearn
from sa_dist.attacks.suite import summary
from sa_dist.attacks.weights import barrier, fisher_distance, l2_distance, path_losses
from sa_dist.cli.flags import Parser, add_config_args, config_from_args
from sa_dist.data import load_mnist
from sa_dist.evaluation.evaluator import get_evaluator
from sa_dist.fisher import class_fisher, diag_fisher, fisher_batch
from sa_dist.methods import Context, get_method, method_names
from sa_dist.methods import noise as noise_method
from sa_dist.methods.dampen import dampen
from sa_dist.methods.noise import perturb
from sa_dist.models import ModelConfig, build_model
from sa_dist.utils import UsageError


@pytest.fixture(scope="module")
def evaluator():
    return get_evaluator(None, limit=LIMIT)[0]


def _result(steps, p):
    return {"steps_to_threshold": steps, "final_p": p, "curve": {"step": [0], "p": [p]}}


def test_best_lr_is_the_fewest_steps_then_the_highest_p():
    assert best_of({"0.0003": _result(40, 0.6), "0.003": _result(3, 0.55), "0.03": _result(None, 0.1)}) == "0.003"
    assert best_of({"0.0003": _result(None, 0.2), "0.003": _result(None, 0.4)}) == "0.003"
    assert best_of({"0.0003": _result(5, 0.6), "0.003": _result(5, 0.9)}) == "0.0003"  # a tie: the earlier lr


def test_relearn_grid_reports_every_lr_and_the_best_on_a_toy(tiny_baseline, evaluator):
    x, y = load_mnist(True, limit=LIMIT)
    model = tiny_baseline[0]
    z = torch.randn(50, model.z_dim, generator=torch.Generator().manual_seed(0))
    p0 = relearn_mod.p_target(model.eval(), evaluator, z, 2)
    r = relearn_grid(model, evaluator, x[y == 2][:10], 2, [1e-7, 3e-3], steps=10, n_samples=50,
                     threshold=min(p0 + 0.05, 0.99), seed=0)
    assert set(r["by_lr"]) == {"1e-07", "0.003"} and r["best_lr"] == 0.003  # a tiny lr cannot move P
    threshold, steps, curve = min(p0 + 0.05, 0.99), r["steps_to_threshold"], r["curve"]  # the best lr's run
    assert steps in schedule(10) and curve["step"][-1] == steps  # it stopped at a scored step ...
    assert curve["p"][-1] >= threshold - 1e-5  # ... where P reached the threshold (the curve rounds to 1e-5) ...
    assert all(p < threshold for p in curve["p"][:-1])  # ... and not before: the first such step
    assert r["by_lr"]["1e-07"]["steps_to_threshold"] is None


def test_summary_gives_ratios_to_retrain():
    attacks = {"relearn": {"models": {name: {"k10": {"steps_to_threshold": s, "best_lr": 0.003}}
                                      for name, s in (("original", 0), ("unlearned", 6), ("retrain", 12))}},
               "weights": {"models": {name: {"l2": l2, "fisher": 1.0, "barrier": 0.0}
                                      for name, l2 in (("unlearned", 10.0), ("retrain", 25.0))}}}
    rows = summary(attacks)
    assert rows["unlearned"]["vs_retrain"]["relearn_steps_k10"] == 0.5
    assert rows["unlearned"]["vs_retrain"]["l2"] == 0.4 and rows["retrain"]["vs_retrain"]["barrier"] is None


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
    r = retain_relearn(model, evaluator, x, y, 2, steps=4, batch=16, n_samples=50, seed=0)
    assert r["curve"]["step"] == schedule(4) and r["p_start"] == r["curve"]["p"][0]
    assert r["max_p"] == max(r["curve"]["p"]) and all(0 <= p <= 1 for p in r["curve"]["p"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    poisoned = y.clone()
    poisoned[y != 2] = 2  # every image labelled 2: nothing is left to fine-tune on
    with pytest.raises((RuntimeError, ValueError, IndexError)):
        retain_relearn(model, evaluator, x[:10], poisoned[:10], 2, steps=1, batch=4, n_samples=10)


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


def test_dampen_shrinks_exactly_the_selected_weights():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="linear", width=16)).eval()
    gen = torch.Generator().manual_seed(1)
    f_r = {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters()}
    f_f = {n: torch.rand(p.shape, generator=gen) * 10 for n, p in model.named_parameters()}
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


def test_dampen_never_amplifies_a_weight_when_alpha_is_below_one():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="linear", width=16)).eval()
    gen = torch.Generator().manual_seed(1)
    f_r = {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters()}
    f_f = {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters()}  # same scale: F_r/F_f > 1 too
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
    seen = {}

    def record(model, fisher, acc, cfg, **kw):
        seen.update(kw, cfg=cfg)
        return model, []

    monkeypatch.setattr(noise_method, "selective_amnesia", record)
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
