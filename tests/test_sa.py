import numpy as np
import pytest
import torch

from conftest import sa_config
from sa_dist.amnesia import replay_dataset, selective_amnesia, surrogate_dataset
from sa_dist.fisher import diag_fisher
from sa_dist.methods.noise import perturb
from sa_dist.models import negative_elbo, plain_copy
from sa_dist.objective import ewc_penalty, sa_objective
from sa_dist.surrogate import Uniform
from sa_dist.utils import UsageError


def test_surrogate_kinds(tiny_baseline, tmp_path):
    model, _ = tiny_baseline
    x, c = surrogate_dataset("uniform", 500, [2, 7], seed=1)[:]
    assert x.shape == (500, 1, 28, 28) and set(c.tolist()) == {2, 7}
    assert 0.45 < x.mean() < 0.55 and x.min() >= 0 and x.max() <= 1
    assert surrogate_dataset("blank", 10, [2])[:][0].abs().sum() == 0
    x7, _ = surrogate_dataset("class:7", 20, [2], model=model, seed=1)[:]
    assert torch.allclose(x7, model.sample(20, 7, generator=_gen_after_labels(20, [2], 1)))
    imgs = np.random.default_rng(0).random((5, 28, 28)).astype(np.float32)
    np.save(tmp_path / "mine.npy", imgs)
    xu, _ = surrogate_dataset(str(tmp_path / "mine.npy"), 50, [2], seed=0)[:]
    assert all(any(np.allclose(u[0].numpy(), im) for im in imgs) for u in xu)


def _gen_after_labels(n, forget, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.randint(len(forget), (n,), generator=gen)
    return gen


def test_bad_surrogates_are_usage_errors(tiny_baseline, tmp_path):
    model, _ = tiny_baseline
    np.save(tmp_path / "shape.npy", np.zeros((3, 20, 20), np.float32))
    np.save(tmp_path / "range.npy", np.full((3, 28, 28), 255.0, np.float32))
    with pytest.raises(UsageError, match="shape"):
        surrogate_dataset(str(tmp_path / "shape.npy"), 5, [2])
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        surrogate_dataset(str(tmp_path / "range.npy"), 5, [2])
    with pytest.raises(UsageError, match="retained class"):
        surrogate_dataset("class:2", 5, [2], model=model)


def test_replay_holds_only_retained_classes_from_the_frozen_model(tiny_baseline):
    model, _ = tiny_baseline
    x, c = replay_dataset(model, [2, 7], 300, seed=0)[:]
    assert x.shape == (300, 1, 28, 28) and set(c.tolist()) == set(range(10)) - {2, 7}


def test_ewc_penalty_is_zero_at_theta_star_and_fisher_weighted(tiny_baseline):
    model, _ = tiny_baseline
    star = [p.detach().clone() for p in model.parameters()]
    ones = [torch.ones_like(p) for p in star]
    assert ewc_penalty(model.parameters(), ones, star).item() == 0.0
    moved = [p + 0.1 for p in star]
    n = sum(p.numel() for p in star)
    assert ewc_penalty(model.parameters(), ones, moved).item() == pytest.approx(0.01 * n, rel=1e-4)
    halves = [torch.full_like(p, 0.5) if i == 0 else torch.zeros_like(p) for i, p in enumerate(star)]
    assert ewc_penalty(model.parameters(), halves, moved).item() == pytest.approx(0.5 * 0.01 * star[0].numel(),
                                                                                  rel=1e-4)


def test_sa_objective_is_the_papers_weighted_sum_of_three_terms(tiny_baseline):
    """L = -E_q ELBO + gamma * (-E_p ELBO) + lam * EWC, each expectation a batch mean of the negative ELBO."""
    model, _ = tiny_baseline
    gen = torch.Generator().manual_seed(0)
    xs, cs = torch.rand(6, 1, 28, 28, generator=gen), torch.full((6,), 2)
    cr = torch.tensor([0, 1, 3, 4, 5, 6, 7, 8])
    xr = model.sample(8, cr, generator=gen)
    star = [p.detach().clone() + 0.01 for p in model.parameters()]
    fisher = [torch.rand(p.shape, generator=gen) for p in star]
    torch.manual_seed(3)
    t = sa_objective(model, (xs, cs), (xr, cr), fisher, star, lam=0.7, gamma=1.3)
    torch.manual_seed(3)  # the same reparameterisation noise, in the same order: surrogate, then replay
    s, r = negative_elbo(model, xs, cs).mean(), negative_elbo(model, xr, cr).mean()
    ewc = sum((f * (p - a) ** 2).sum() for f, p, a in zip(fisher, model.parameters(), star))
    assert torch.allclose(torch.stack(t[:3]), torch.stack([s, r, ewc]), rtol=1e-5)
    assert t.total.item() == pytest.approx(s.item() + 1.3 * r.item() + 0.7 * ewc.item(), rel=1e-5)
    torch.manual_seed(3)
    off = sa_objective(model, (xs, cs), (xr, cr), fisher, star, lam=0.7, gamma=1.3, surrogate_weight=0.0)
    assert off.total.item() == pytest.approx(t.total.item() - t.surrogate.item(), rel=1e-5)


def test_sa_forgets_the_class_and_logs_three_float_terms(tiny_baseline, accelerator, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, _ = tiny_baseline
    fisher = diag_fisher(model, 1000, seed=0, batch=500, accelerator=accelerator)
    after, hist = selective_amnesia(model, fisher, accelerator, sa_config(**{"sa.lam": 100.0}), log_dir=tmp_path)
    assert len(hist) == 40 and all(isinstance(v, float) for row in hist for v in row.values() if v != row["step"])
    first, last = hist[0], hist[-1]
    assert last["surrogate_nelbo"] < first["surrogate_nelbo"]
    assert first["surrogate_nelbo"] - last["surrogate_nelbo"] > 100
    assert last["surrogate_nelbo"] < Uniform.z_blind * 1.05  # towards grey (a 2-epoch, 2000-image model)
    assert first["ewc"] == 0.0 and last["ewc"] > 0
    tags = EventAccumulator(str(tmp_path / "sa")).Reload().Tags()["scalars"]
    assert {"sa/surrogate_nelbo", "sa/replay_nelbo", "sa/ewc", "sa/loss"} <= set(tags)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    before_gap = (model.sample(200, 2, generator=gen()) - 0.5).abs().mean().item()
    after_gap = (after.sample(200, 2, generator=gen()) - 0.5).abs().mean().item()
    assert after_gap < before_gap - 0.05  # label 2 decodes closer to flat grey
    kept = lambda m: m.sample(200, 4, generator=gen())  # noqa: E731
    assert (kept(after) - kept(model)).abs().mean().item() < 0.1  # a retained class barely moves


def _shifted(model, by: float):
    out = plain_copy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(by)
    return out


def test_selective_amnesia_starts_from_start_not_theta_star(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    far = perturb(model, 0.5, seed=0)  # every weight times (1 + 0.5 eps): far, and still finite
    cfg = sa_config(**{"sa.sa_epochs": 1, "sa.n_replay": 256, "sa.lr": 1e-12})  # 2 steps that cannot move it
    out, _ = selective_amnesia(model, ones, accelerator, cfg, start=far)
    for a, s, star in zip(out.parameters(), far.parameters(), model.parameters()):
        assert torch.allclose(a, s, atol=1e-8) and not torch.allclose(a, star.detach(), atol=1e-3)


def test_selective_amnesia_anchors_ewc_at_anchor(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    anchor = _shifted(model, 0.01)
    n = sum(p.numel() for p in model.parameters())
    cfg = sa_config(**{"sa.sa_epochs": 1, "sa.n_replay": 256, "sa.gamma": 0.0, "sa.lam": 1.0, "sa.lr": 1e-3})
    out, hist = selective_amnesia(model, ones, accelerator, cfg, anchor=anchor, surrogate_weight=0.0)
    assert hist[0]["ewc"] == pytest.approx(1e-4 * n, rel=1e-3)  # sum_i 1 * (theta*_i - anchor_i)^2, from theta*
    assert hist[0]["loss"] == pytest.approx(hist[0]["ewc"], rel=1e-6)  # only EWC weighs
    with torch.no_grad():
        moved = [(a - s).mean().item() for a, s in zip(out.parameters(), model.parameters())]
    assert all(m > 5e-4 for m in moved)  # every tensor stepped towards the anchor (+0.01), about lr per step
    assert hist[1]["ewc"] < hist[0]["ewc"]
