"""The distance method: SA's surrogate and replay with the EWC term replaced by the capped weight-distance push
-α·min(RMS(θ - θ*), cap) (objective.distance_term), on hand-made tensors and tiny runs."""
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import sa_config
from sa_dist.amnesia import selective_amnesia
from sa_dist.analysis import plots
from sa_dist.fisher import diag_fisher
from sa_dist.methods import Context, get_method
from sa_dist.models import plain_copy
from sa_dist.objective import distance_term, regularised_objective, rms, weight_distance
from sa_dist.utils import UsageError

SMALL = {"sa.sa_epochs": 1, "sa.n_replay": 1280, "sa.batch": 32, "sa.surrogate_batch": 16}  # 40 small steps


def _moved(model, original) -> float:
    with torch.no_grad():
        return float(rms([a - b for a, b in zip(model.parameters(), plain_copy(original).parameters())]))


def test_distance_term_is_minus_the_capped_rms_and_its_gradient_points_away():
    star = [torch.zeros(2), torch.zeros(1)]
    p = [torch.tensor([3.0, 4.0], requires_grad=True), torch.tensor([0.0], requires_grad=True)]
    value = distance_term(p, star, cap=10.0)
    assert value.item() == pytest.approx(-5 / math.sqrt(3))  # RMS over all 3 numbers: sqrt(25 / 3)
    value.backward()
    descent = -p[0].grad  # a gradient step on the term moves each weight along -grad
    assert torch.allclose(descent, torch.tensor([3.0, 4.0]) / (3 * 5 / math.sqrt(3)))  # d / (N * RMS): away from θ*
    assert distance_term(p, star, cap=1.0).item() == -1.0  # capped: bounded below by -cap
    capped = [t.detach().clone().requires_grad_(True) for t in p]
    distance_term(capped, star, cap=1.0).backward()
    assert all((t.grad == 0).all() for t in capped)  # beyond the cap the push stops
    at_star = [torch.zeros(2, requires_grad=True)]
    distance_term(at_star, [torch.zeros(2)], cap=1.0).backward()
    assert at_star[0].grad.tolist() == [0.0, 0.0]  # finite at θ = θ* (a sqrt of a mean square gives NaN)


def test_regularised_objective_adds_the_weighted_distance_in_place_of_ewc(tiny_baseline):
    model, _ = tiny_baseline
    gen = torch.Generator().manual_seed(0)
    xs, cs = torch.rand(4, 1, 28, 28, generator=gen), torch.full((4,), 2)
    xr, cr = torch.rand(4, 1, 28, 28, generator=gen), torch.tensor([0, 1, 3, 4])
    star = [p.detach() + 0.01 for p in model.parameters()]  # RMS(θ - θ*) = 0.01 exactly
    reg = weight_distance(star, alpha=50.0, cap=1.0)
    torch.manual_seed(1)
    t = regularised_objective(model, (xs, cs), (xr, cr), reg, gamma=2.0)
    assert reg.name == "weight_dist_reg" and t.regulariser.item() == pytest.approx(-0.01, rel=1e-3)  # float32 rounding
    assert t.total.item() == pytest.approx(t.surrogate.item() + 2 * t.replay.item() - 50 * 0.01, rel=1e-5)


def test_distance_moves_theta_farther_than_sa_with_the_same_seed(tiny_baseline, accelerator, tmp_path):
    model, _ = tiny_baseline
    fisher = diag_fisher(model, 200, seed=0, batch=200, accelerator=accelerator, progress=False)
    sa, _ = selective_amnesia(model, fisher, accelerator, sa_config(**SMALL))
    method = get_method("distance")
    assert not method.needs_fisher and method.overrides == {"lam": 0.0}
    cfg = method.configure(sa_config(**SMALL, **{"sa.method": "distance", "sa.distance_alpha": 1e4}))
    out = method.unlearn(Context(cfg, model, None, accelerator, log_dir=tmp_path))
    assert out.info["rms_moved"] == pytest.approx(_moved(out.model, model))
    assert out.info["rms_moved"] > 1.5 * _moved(sa, model)  # measured 2.7x (full batches)
    row = out.history[-1]
    assert "ewc" not in row and row["weight_dist_reg"] < 0 and out.sa_terms
    tags = EventAccumulator(str(tmp_path / "sa")).Reload().Tags()["scalars"]
    assert "sa/weight_dist_reg" in tags and "sa/ewc" not in tags


def test_the_cap_keeps_a_huge_push_finite_and_bounded(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    runs = {}
    for target in (0.05, 100.0):  # 100 x RMS(θ*): never reached, so uncapped in effect
        cfg = sa_config(**SMALL, **{"sa.method": "distance", "sa.distance_alpha": 1e8, "sa.distance_target": target,
                                    "sa.lr": 2e-3})
        runs[target] = get_method("distance").unlearn(Context(cfg, model, None, accelerator))
    capped, free = runs[0.05], runs[100.0]
    cap, lr = capped.info["cap"], 2e-3
    assert cap == pytest.approx(0.05 * float(rms([p.detach() for p in model.parameters()])))
    assert all(torch.isfinite(p).all() for p in capped.model.parameters())
    assert all(math.isfinite(r["loss"]) and r["weight_dist_reg"] >= -cap - 1e-7 for r in capped.history)
    assert capped.info["rms_moved"] < cap + 10 * lr  # past the cap only Adam's momentum carries it on
    assert free.info["rms_moved"] > 3 * capped.info["rms_moved"]  # measured 0.079 vs 0.013


def test_distance_can_start_from_noised_weights(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    cfg = sa_config(**{"sa.method": "distance", "sa.distance_noise": 0.5, "sa.sa_epochs": 1, "sa.n_replay": 256})
    out = get_method("distance").unlearn(Context(cfg, model, None, accelerator))
    assert out.info["noise"] == 0.5 and out.info["rms_moved"] > 0.3 * out.info["rms_theta_star"]  # noise 0.5: ~0.5


@pytest.mark.parametrize("values,match", [({"sa.distance_target": 0.0}, "--distance-target must be a positive number"),
                                          ({"sa.distance_alpha": -1.0}, "--distance-alpha must be a finite number >= 0"),
                                          ({"sa.distance_noise": float("nan")}, "--distance-noise must be a finite")])
def test_bad_distance_settings_are_one_line_usage_errors(values, match):
    with pytest.raises(UsageError, match=match):
        sa_config(**values)


def test_the_curves_plot_the_distance_term_in_the_third_panel(monkeypatch):
    figs = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path, dpi=150: figs.append(fig))
    rows = [{"step": s, "surrogate_nelbo": 900.0 - s, "replay_nelbo": 100.0, "weight_dist_reg": -0.001 * s,
             "loss": 1.0} for s in (1, 2, 3)]
    plots.plot_sa_curves(rows, "unused.png")
    third = figs[0].axes[2]
    assert third.get_title().startswith("weight distance") and list(third.get_lines()[0].get_ydata()) == [
        -0.001, -0.002, -0.003]
