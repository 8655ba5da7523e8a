"""Sharpness-aware SA (``--sam-rho``): SAM on the surrogate term (arXiv:2502.05374), against a hand-written step."""
import json

import pytest
import torch

from conftest import ROOT, sa_config, torchrun
from sa_dist.amnesia import _loop, sam_surrogate, selective_amnesia
from sa_dist.models import negative_elbo, plain_copy
from sa_dist.objective import ewc, injected, sam_epsilon
from sa_dist.resume import Checkpointer
from sa_dist.utils import UsageError
from test_scripts import TINY


def test_sam_epsilon_has_norm_rho_along_the_gradient_and_is_zero_without_one():
    g = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    eps = sam_epsilon(g, 0.5)
    assert torch.allclose(eps[0], torch.tensor([0.3, 0.0])) and torch.allclose(eps[1], torch.tensor([[0.4]]))
    assert all(torch.equal(e, torch.zeros_like(z)) for e, z in zip(sam_epsilon([torch.zeros(3)], 0.5), [torch.zeros(3)]))


def test_the_injected_term_has_exactly_the_given_gradient():
    p = [torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True)]
    g = [torch.randn(3), torch.randn(2, 2)]
    grads = torch.autograd.grad(injected(p, g), p)
    assert all(torch.equal(a, b) for a, b in zip(grads, g))


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    """Equal up to float32 summation order: within ``rel`` of the larger tensor's largest element."""
    return (a - b).abs().max().item() <= rel * max(a.abs().max().item(), b.abs().max().item(), 1e-12)


def _batches(model):
    gen = torch.Generator().manual_seed(0)
    xs, cs = torch.rand(6, 1, 28, 28, generator=gen), torch.full((6,), 2)
    cr = torch.tensor([0, 1, 3, 4, 5, 6, 7, 8])
    return (xs, cs), (model.sample(8, cr, generator=gen).detach(), cr)


def test_sam_surrogate_restores_the_weights_and_returns_the_gradient_at_the_ascent_point(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    net = plain_copy(model).requires_grad_(True)
    before = [p.detach().clone() for p in net.parameters()]
    surrogate, _ = _batches(model)
    torch.manual_seed(5)
    s, adv = sam_surrogate(net, accelerator, surrogate, rho=0.05, weight=2.0)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))  # restored bit for bit
    ref = plain_copy(model).requires_grad_(True)  # before the seed: building a model draws its init
    torch.manual_seed(5)  # the same reparameterisation noise, in the same order
    s_ref = negative_elbo(ref, *surrogate).mean()
    g = torch.autograd.grad(s_ref, list(ref.parameters()))
    norm = torch.sqrt(sum((t ** 2).sum() for t in g))
    with torch.no_grad():
        for p, t in zip(ref.parameters(), g):
            p.add_(0.05 * t / norm)
    want = torch.autograd.grad(2.0 * negative_elbo(ref, *surrogate).mean(), list(ref.parameters()))
    assert s.item() == pytest.approx(s_ref.item(), rel=1e-6)
    assert all(_close(a, w) for a, w in zip(adv, want))
    assert not all(_close(a, 2.0 * t, 1e-2) for a, t in zip(adv, g))  # it is not the gradient at θ


def test_one_sam_step_descends_replay_and_ewc_at_theta_and_the_surrogate_at_the_ascent_point(tiny_baseline,
                                                                                            accelerator):
    model, _ = tiny_baseline
    surrogate, replay = _batches(model)
    star = [p.detach().clone() + 0.01 for p in model.parameters()]
    fisher = [torch.full_like(p, 0.3) for p in star]
    objective = dict(regulariser=ewc(fisher, star, 0.7), gamma=1.3, surrogate_weight=1.0)
    net = plain_copy(model).requires_grad_(True)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    history = []
    torch.manual_seed(7)
    _loop(net, opt, accelerator, iter([(replay, surrogate)]), history, 0, Checkpointer(accelerator, None, "sa"),
          objective, 1, sam_rho=0.05)
    ref = plain_copy(model).requires_grad_(True)
    torch.manual_seed(7)  # by hand: the ascent pass (two surrogate draws), then replay at θ
    _, adv = sam_surrogate(ref, accelerator, surrogate, 0.05, 1.0)
    params = list(ref.parameters())
    r = negative_elbo(ref, *replay).mean()
    rest = torch.autograd.grad(1.3 * r + 0.7 * sum((f * (p - a) ** 2).sum() for f, p, a in zip(fisher, params, star)),
                               params)
    for new, p, a, b in zip(net.parameters(), params, adv, rest):
        assert _close(p.detach() - new.detach(), a + b)  # SGD at lr 1: the step is the gradient
    assert history[0]["replay_nelbo"] == pytest.approx(r.item(), rel=1e-6)
    assert history[0]["loss"] == pytest.approx(history[0]["surrogate_nelbo"] + 1.3 * r.item()
                                               + 0.7 * history[0]["ewc"], rel=1e-5)


def test_sa_with_sam_runs_changes_the_result_and_rho_must_be_non_negative(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    small = {"sa.sa_epochs": 1, "sa.n_replay": 256}
    plain, _ = selective_amnesia(model, ones, accelerator, sa_config(**small))
    sam, hist = selective_amnesia(model, ones, accelerator, sa_config(**small, **{"sa.sam_rho": 0.5}))
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in hist)
    assert not all(torch.allclose(a, b) for a, b in zip(plain.parameters(), sam.parameters()))
    with pytest.raises(UsageError, match="--sam-rho"):
        sa_config(**{"sa.sam_rho": -0.1})


@pytest.mark.slow
def test_two_ranks_run_sam_and_record_it(tmp_path):
    """torchrun, 2 gloo ranks: the ascent direction is all-reduced inside the DDP step (no hang, no rank mismatch)."""
    r = torchrun(ROOT / "scripts" / "unlearn.py", *TINY, "--sa_epochs", "2", "--seed", "3", "--sam-rho", "0.5",
                 "--run-dir", tmp_path / "r", timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    rows = res["sa_history"]["rows"]  # thinned: the first and the last step here
    assert res["config"]["sa"]["sam_rho"] == 0.5 and rows[-1]["step"] == 8  # 2 SA epochs of 4 steps
    assert all(torch.isfinite(torch.tensor([row["surrogate_nelbo"], row["loss"]])).all() for row in rows)
