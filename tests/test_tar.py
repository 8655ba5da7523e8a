"""The tar method: SA plus a capped ascent after a simulated relearning attack, against hand-written steps."""
import json
import math

import pytest
import torch

from conftest import load_benchmark, sa_config
from sa_dist.methods.tar import RelearnAdversary, capped_share
from sa_dist.models import label_log_odds, negative_elbo, plain_copy
from sa_dist.utils import UsageError

KW = dict(steps=3, lr=1e-2, k=6, every=1, weight=1.5, margin=5.0, start="label-mean", batch=8, seed=0)  # a cap far
# above θ*'s own nELBO: the push is on whatever the tiny baseline learnt


def _tar(model, accelerator, forget=(2,), **kw):
    adv = RelearnAdversary(list(forget), **{**KW, **kw})
    adv.start(plain_copy(model).requires_grad_(False), accelerator)
    return adv


def _at_mean(model, forget):
    """A copy of ``model`` whose forgotten labels' input slices hold the other labels' mean (by hand)."""
    out = plain_copy(model).requires_grad_(True)
    keep = [c for c in range(model.n_classes) if c not in forget]
    with torch.no_grad():
        for w, dim, start in out.label_inputs():
            mean = torch.stack([w.narrow(dim, start + c, 1) for c in keep]).mean(0)
            for c in forget:
                w.narrow(dim, start + c, 1).copy_(mean)
    return out


@pytest.mark.parametrize("start", ["label-mean", "model"])
def test_the_attack_starts_as_asked_fits_the_class_and_leaves_the_model_alone(tiny_baseline, accelerator, start):
    model, _ = tiny_baseline
    adv = _tar(model, accelerator, forget=(2, 5), steps=0)
    adv.attack(model, *adv.targets(torch.Generator().manual_seed(1), 6), torch.Generator(), start)
    want = _at_mean(model, [2, 5]) if start == "label-mean" else model
    assert all(torch.equal(a, b) for a, b in zip(adv.scratch.parameters(), want.parameters()))
    adv = _tar(model, accelerator, steps=30, lr=1e-3)  # small steps: a fit that lowers its own loss on any baseline
    saved = [p.detach().clone() for p in model.parameters()]
    x, c = adv.targets(torch.Generator().manual_seed(4), 6)
    z = torch.zeros(len(x), model.z_dim)
    adv.attack(model, x, c, torch.Generator().manual_seed(5), start)
    before = negative_elbo(_at_mean(model, [2]) if start == "label-mean" else model, x, c, z).mean().item()
    assert negative_elbo(adv.scratch, x, c, z).mean().item() < before  # the simulated attacker relearns
    assert all(torch.equal(a, b) for a, b in zip(saved, model.parameters())) and all(
        p.grad is None for p in model.parameters())


def test_the_term_is_the_capped_ascent_at_the_attacked_weights(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    net = plain_copy(model).requires_grad_(True)
    adv = _tar(model, accelerator)
    row, grads = adv.term(net, 7)
    gen = adv.generator(7)  # replay the stream: attack images, held-out samples, the attack's noise, θ*'s, the term's
    x, c = adv.targets(gen, 6)
    held, hc = adv.targets(gen)
    ref = _at_mean(model, [2])
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        negative_elbo(ref, x, c, torch.randn(len(x), model.z_dim, generator=gen)).mean().backward()
        opt.step()
    own = negative_elbo(model, held, hc, torch.randn(len(held), model.z_dim, generator=gen)).mean().item()
    assert adv.cap == pytest.approx(6.0 * own, rel=1e-5)  # (1 + margin) × θ*'s own nELBO at the label
    nelbo = negative_elbo(ref, held, hc, torch.randn(len(held), model.z_dim, generator=gen)).mean()
    assert nelbo.item() < adv.cap  # the attacked model still models the class: the push is on
    want = torch.autograd.grad(-1.5 * nelbo, list(ref.parameters()))
    for (name, p), g, w in zip(net.named_parameters(), grads, want):
        for lw, dim, start in net.label_inputs():
            if lw is p:  # the reset slice is the attacker's start, not θ's weight: no gradient
                w = w.clone()
                w.narrow(dim, start + 2, 1).zero_()
                assert not g.narrow(dim, start + 2, 1).any()
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-6), name
    assert any(g.abs().sum() > 0 for g in grads)
    assert row["tar_after"] == pytest.approx(nelbo.item(), rel=1e-5)
    assert row["weighted"] == pytest.approx(-1.5 * nelbo.item(), rel=1e-5)
    adv.cap = 1.0  # a class that hard to model even after the attack: no push
    _, grads = adv.term(net, 8)
    assert all(not g.any() for g in grads)


def test_label_log_odds_are_the_elbos_read_as_a_bayes_classifier(tiny_baseline):
    """By hand, image by image, in float64: log p(c|x) - log(1 - p(c|x)), p(.|x) the softmax over labels of
    ELBO(x|θ,c) with one noise draw shared by the labels (1 - p as the other labels' sum: p may round to 1)."""
    model, _ = tiny_baseline
    net = plain_copy(model).double()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    c, eps = torch.tensor([2, 0, 9, 2, 5]), torch.randn(5, model.z_dim, dtype=torch.float64)
    got = label_log_odds(net, x, c, eps)
    for i in range(5):
        elbo = torch.stack([-negative_elbo(net, x[i:i + 1], torch.tensor([k]), eps[i:i + 1])[0] for k in range(10)])
        log_p = torch.log_softmax(elbo, 0)  # log p(k|x) for every label k
        others = torch.cat([log_p[:c[i]], log_p[c[i] + 1:]])
        assert got[i].item() == pytest.approx((log_p[c[i]] - torch.logsumexp(others, 0)).item(), rel=1e-9, abs=1e-9)


def test_the_label_score_is_the_capped_ascent_of_the_attacked_models_own_log_odds(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    net = plain_copy(model).requires_grad_(True)
    adv = _tar(model, accelerator, start="model", score="label", p=1e-9)  # cap 20.7: the push is on
    row, grads = adv.term(net, 3)
    gen = adv.generator(3)  # replay: attack images, tar_k held-out samples, the attack's noise, the term's noise
    x, c = adv.targets(gen, 6)
    held, hc = adv.targets(gen, 6)
    ref = plain_copy(model).requires_grad_(True)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        negative_elbo(ref, x, c, torch.randn(len(x), model.z_dim, generator=gen)).mean().backward()
        opt.step()
    loss = -label_log_odds(ref, held, hc, torch.randn(len(held), model.z_dim, generator=gen)).mean()
    assert adv.cap == pytest.approx(math.log((1 - 1e-9) / 1e-9)) and loss.item() < adv.cap
    want = torch.autograd.grad(-1.5 * loss, list(ref.parameters()))
    for (name, _), g, w in zip(net.named_parameters(), grads, want):
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-6), name
    assert row["tar_after"] == pytest.approx(loss.item(), rel=1e-5)
    adv.cap = loss.item() - 1e3  # the label already that unlikely after the attack: no push
    _, grads = adv.term(net, 7)
    assert all(not g.any() for g in grads)


def test_attacks_come_every_few_steps_and_both_takes_each_start_in_turn(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    net = plain_copy(model).requires_grad_(True)
    adv = _tar(model, accelerator, every=3, start="both")
    assert [adv.start_of(s) for s in (1, 3, 4, 6, 7)] == ["label-mean", "label-mean", "model", "model",
                                                          "label-mean"]
    first, g1 = adv.term(net, 1)
    again, g2 = adv.term(net, 2)
    assert again == first and all(not g.any() for g in g2) and any(g.any() for g in g1)
    fresh, _ = adv.term(net, 4)
    assert fresh["tar_fit"] != first["tar_fit"]


def test_after_tar_epochs_no_attack_is_simulated_a_repair_tail(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    net = plain_copy(model).requires_grad_(True)
    adv = RelearnAdversary([2], **{**KW, "epochs": 2})
    adv.start(plain_copy(model).requires_grad_(False), accelerator, 3)  # 3 SA steps an epoch: attacks in steps 1-6
    assert [adv.attacks(s) for s in (1, 6, 7, 9)] == [True, True, False, False]
    rows = [adv.term(net, s) for s in range(1, 9)]
    assert all(any(g.any() for g in grads) for _, grads in rows[:6])  # every = 1: each step of epochs 1-2
    assert all(row == rows[5][0] and not any(g.any() for g in grads) for row, grads in rows[6:])  # the tail
    assert RelearnAdversary([2], **KW).epochs is None  # default: every epoch attacks


def test_an_attack_clamped_at_the_cap_in_float32_counts_as_capped():
    cap = 220.866  # a float64 cap whose float32 rounding lies below it (margin 0.8's on conv forget 2, seed 0)
    clamped = torch.tensor(300.0).clamp(max=cap).item()  # what the term reports once capped
    assert clamped < cap and capped_share([clamped, clamped, 150.0, cap], cap) == 0.75


def test_a_saved_state_is_plain_json(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    adv = _tar(model, accelerator)
    adv.term(plain_copy(model).requires_grad_(True), 1)
    other = _tar(model, accelerator)
    other.load(json.loads(json.dumps(adv.state())))
    assert other.cap == adv.cap and other.last == adv.last


@pytest.mark.parametrize("values, match", [({"sa.tar_steps": 0}, "--tar-steps"), ({"sa.tar_k": 0}, "--tar-k"),
                                           ({"sa.tar_every": 0}, "--tar-every"), ({"sa.tar_lr": 0.0}, "--tar-lr"),
                                           ({"sa.tar_weight": -1.0}, "--tar-weight"),
                                           ({"sa.tar_margin": float("nan")}, "--tar-margin"),
                                           ({"sa.tar_start": "nowhere"}, "--tar-start"),
                                           ({"sa.tar_score": "nowhere"}, "--tar-score"),
                                           ({"sa.tar_p": 1.0}, "--tar-p"), ({"sa.tar_p": 0.0}, "--tar-p"),
                                           ({"sa.tar_epochs": 0}, "--tar-epochs"),
                                           ({"sa.tar_epochs": 11, "sa.sa_epochs": 10}, "--tar-epochs")])
def test_bad_tar_settings_are_one_line_usage_errors(values, match):
    with pytest.raises(UsageError, match=match):
        sa_config(**values)


def test_attack_fit_scores_each_model_after_the_simulated_attack_and_bad_files_are_one_line(tiny_baseline, tmp_path,
                                                                                          capsys):
    """benchmarks/attack_fit.py: θ* against itself, a tiny budget; more attack steps fit the class better; a missing
    file is one line, no traceback."""
    _, path = tiny_baseline
    runs = {}
    for steps in ("1", "30"):
        load_benchmark("attack_fit").main([str(path), str(path), "--steps", steps, "--lr", "1e-2", "--k", "8",
                                           "--batch", "16", "--repeats", "1"])
        runs[steps] = json.loads(capsys.readouterr().out)["models"][str(path)]
    assert 0 < runs["30"]["ratio"] < runs["1"]["ratio"]
    assert all(0 < r["label_p"] < 1 and 0 <= r["judge_p"] <= 1 for r in runs.values())
    load_benchmark("attack_fit").main([str(path), str(path), "--steps", "30", "--lr", "1e-2", "--k", "8",
                                       "--batch", "16", "--repeats", "1", "--images", "real"])
    real = json.loads(capsys.readouterr().out)["models"][str(path)]
    assert real["ratio"] != runs["30"]["ratio"]  # another attack: real images in place of θ*'s samples
    with pytest.raises(SystemExit, match="attack_fit.py: error: .*does not exist"):
        load_benchmark("attack_fit").main([str(path), str(tmp_path / "nothing.safetensors"), "--steps", "1"])
