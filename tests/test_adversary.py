"""The adversary method: SA plus the surrogate at the condition an attacker would choose, against hand-written steps."""
import json

import pytest
import torch

from conftest import ROOT, load_benchmark, sa_config, torchrun
from sa_dist.methods.adversary import ConditionAdversary
from sa_dist.models import ModelConfig, build_model, negative_elbo, plain_copy
from sa_dist.utils import UsageError
from test_scripts import TINY


def _adversary(model, accelerator, forget=(2,), **kw):
    adv = ConditionAdversary(list(forget), **{**dict(steps=2, lr=1e-2, weight=1.5, margin=0.25, batch=8, seed=0), **kw})
    adv.start(plain_copy(model).requires_grad_(False), accelerator)
    return adv


def _with_columns(model, forget, slices):
    """A copy of ``model`` whose forgotten labels' input slices are ``slices`` (by hand, in place)."""
    out = plain_copy(model)
    with torch.no_grad():
        for (w, dim, start), s in zip(out.label_inputs(), slices):
            for i, c in enumerate(forget):
                w.narrow(dim, start + c, 1).copy_(s.narrow(dim, i, 1))
    return out


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_the_adversary_starts_at_the_retained_mean_and_swaps_only_the_forgotten_labels(arch, accelerator):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=8)).eval()
    adv = _adversary(model, accelerator, forget=(2, 5))
    for (w, dim, start), s in zip(model.label_inputs(), adv.slices):
        keep = [c for c in range(10) if c not in (2, 5)]
        mean = torch.stack([w.narrow(dim, start + c, 1) for c in keep]).mean(0)
        assert torch.allclose(s.narrow(dim, 0, 1), mean) and torch.allclose(s.narrow(dim, 1, 1), mean)
    x, z = torch.rand(4, 1, 28, 28), torch.randn(4, 8)
    for c in (torch.full((4,), 2), torch.full((4,), 5), torch.tensor([0, 1, 3, 9])):
        swapped = adv._at(model, adv.slices)(x, c, z)[0]
        by_hand = _with_columns(model, [2, 5], adv.slices)(x, c, z)[0]
        assert torch.allclose(swapped, by_hand, atol=1e-6)
        assert torch.equal(swapped, model(x, c, z)[0]) == (c[0].item() not in (2, 5))


def test_fit_moves_the_slices_towards_the_forgotten_class(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    adv = _adversary(model, accelerator, steps=25, lr=5e-2)
    start = [s.detach().clone() for s in adv.slices]
    gen = torch.Generator().manual_seed(3)
    x, c = adv.targets(torch.Generator().manual_seed(4))
    z = torch.zeros(len(x), model.z_dim)
    before = negative_elbo(adv._at(model, adv.slices), x, c, z).mean().item()
    adv.fit(model, *adv.targets(gen), gen)
    after = negative_elbo(adv._at(model, adv.slices), x, c, z).mean().item()
    assert after < before  # a better condition for θ*'s own 2s than the retained labels' mean
    assert all(not torch.equal(a, b) for a, b in zip(start, adv.slices))
    assert all(p.grad is None for p in model.parameters())  # the model's weights are not the adversary's


def test_the_term_is_the_capped_ascent_on_thetas_samples_at_the_adversarys_condition(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    net = plain_copy(model).requires_grad_(True)
    adv = _adversary(model, accelerator)
    row, grads = adv.term(net, 7)
    ref = _with_columns(model, [2], adv.slices).requires_grad_(True)  # the slices after this step's fit
    gen = adv.generator(7)
    x, c = adv.targets(gen)  # replay the stream: the targets, the fit's noise, θ*'s own fit, the term's noise
    for _ in range(adv.steps):
        torch.randn(len(x), model.z_dim, generator=gen)
    own = negative_elbo(model, x, c, torch.randn(len(x), model.z_dim, generator=gen)).mean().item()
    assert adv.cap == pytest.approx(1.25 * own, rel=1e-5)  # margin 0.25 over θ*'s nELBO at the label
    nelbo = negative_elbo(ref, x, c, torch.randn(len(x), model.z_dim, generator=gen)).mean()
    assert nelbo.item() < adv.cap  # under the cap: the push is on
    want = torch.autograd.grad(-1.5 * nelbo, list(ref.parameters()))
    for (name, p), g, w in zip(net.named_parameters(), grads, want):
        for (lw, dim, start) in [(lw, d, st) for lw, d, st in net.label_inputs() if lw is p]:
            w = w.clone()
            w.narrow(dim, start + 2, 1).zero_()  # the slice is the adversary's: no gradient reaches θ's own
            assert torch.equal(g.narrow(dim, start + 2, 1), torch.zeros_like(g.narrow(dim, start + 2, 1)))
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6), name
    assert row["adversary_ascent"] == pytest.approx(nelbo.item(), rel=1e-5)
    assert row["weighted"] == pytest.approx(-1.5 * nelbo.item(), rel=1e-5)
    adv.cap = 1.0  # a class already that hard to model: no push at all
    _, grads = adv.term(net, 8)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_a_saved_state_resumes_the_adversary_exactly(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    a = _adversary(model, accelerator)
    for step in (1, 2):
        gen = a.generator(step)
        a.fit(model, *a.targets(gen), gen)
    saved = json.loads(json.dumps(a.state()))  # as the checkpoint's meta.json holds it
    gen = a.generator(3)
    a.fit(model, *a.targets(gen), gen)
    b = _adversary(model, accelerator)
    b.load(saved)
    gen = b.generator(3)
    b.fit(model, *b.targets(gen), gen)
    assert all(torch.allclose(x, y, atol=1e-7) for x, y in zip(a.slices, b.slices))


@pytest.mark.parametrize("values, match", [({"sa.adversary_steps": 0}, "--adversary-steps"),
                                           ({"sa.adversary_lr": 0.0}, "--adversary-lr"),
                                           ({"sa.adversary_weight": -1.0}, "--adversary-weight"),
                                           ({"sa.adversary_margin": float("nan")}, "--adversary-margin")])
def test_bad_adversary_settings_are_one_line_usage_errors(values, match):
    with pytest.raises(UsageError, match=match):
        sa_config(**values)


@pytest.mark.slow
@pytest.mark.parametrize("method, steps, column, more", [
    ("adversary", 2, "adversary_fit", ()), ("tar", 16, "tar_fit", ("--tar-epochs", "1", "--tar-every", "1"))])
def test_two_ranks_run_the_attacker_methods_and_record_them(tmp_path, method, steps, column, more):
    """torchrun, 2 gloo ranks: the adversary's condition (``adversary``) or the simulated attack (``tar``, in the
    first of two SA epochs) and the term run on each rank's share, averaged inside the DDP step."""
    r = torchrun(ROOT / "scripts" / "unlearn.py", *TINY, "--sa_epochs", "2", "--seed", "3", "--method", method,
                 *more, "--run-dir", tmp_path / "r", timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["config"]["sa"]["method"] == method and res["method_info"]["steps"] == steps
    rows = res["sa_history"]["rows"]
    assert rows[-1]["step"] == 8 and all(torch.isfinite(torch.tensor(row[column])) for row in rows)
    if method == "tar":  # 4 steps an epoch on each rank: the second is the repair tail
        assert res["method_info"]["epochs"] == 1 and res["method_info"]["attacks"] == 4  # each step of epoch 1 alone


def test_condition_fit_reports_each_models_best_condition_and_bad_files_are_one_line(tiny_baseline, tmp_path,
                                                                                     capsys):
    """benchmarks/condition_fit.py: θ* against itself, a tiny budget; a missing file is one line, no traceback."""
    _, path = tiny_baseline
    load_benchmark("condition_fit").main([str(path), str(path), "--steps", "4"])
    out = json.loads(capsys.readouterr().out)
    fit = out["models"][str(path)]
    assert len(fit["fit_windows"]) == 4 and fit["fit_end"] > 0 and fit["moved_rms"] > 0
    assert out["own_at_label"] > 0
    with pytest.raises(SystemExit, match="condition_fit.py: error: .*does not exist"):
        load_benchmark("condition_fit").main([str(path), str(tmp_path / "nothing.safetensors"), "--steps", "1"])
