import numpy as np
import pytest
import torch

from sa_dist.evaluate import UNIFORM_FLOOR
from sa_dist.fisher import diag_fisher
from sa_dist.sa import ewc_penalty, replay_dataset, selective_amnesia, surrogate_dataset
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
    star = {k: v.detach().clone() for k, v in model.named_parameters()}
    fisher = {k: torch.ones_like(v) for k, v in star.items()}
    assert ewc_penalty(model, fisher, star).item() == 0.0
    moved = {k: v + 0.1 for k, v in star.items()}
    n = sum(v.numel() for v in star.values())
    assert ewc_penalty(model, fisher, moved).item() == pytest.approx(0.01 * n, rel=1e-4)


def test_sa_forgets_the_class_and_logs_three_float_terms(tiny_baseline, accelerator, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, _ = tiny_baseline
    fisher = diag_fisher(model, 1000, seed=0, accelerator=accelerator)
    after, hist = selective_amnesia(model, fisher, [2], accelerator, lam=100, sa_epochs=2, n_replay=2560,
                                    batch=128, seed=0, log_dir=tmp_path)
    assert len(hist) == 40 and all(isinstance(v, float) for row in hist for v in row.values() if v != row["step"])
    first, last = hist[0], hist[-1]
    assert last["surrogate_nelbo"] < first["surrogate_nelbo"]
    assert first["surrogate_nelbo"] - last["surrogate_nelbo"] > 100
    assert last["surrogate_nelbo"] < UNIFORM_FLOOR * 1.05  # towards grey (a 2-epoch, 2000-image model)
    assert first["ewc"] == 0.0 and last["ewc"] > 0
    tags = EventAccumulator(str(tmp_path / "sa")).Reload().Tags()["scalars"]
    assert {"sa/surrogate_nelbo", "sa/replay_nelbo", "sa/ewc", "sa/loss"} <= set(tags)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    before_gap = (model.sample(200, 2, generator=gen()) - 0.5).abs().mean().item()
    after_gap = (after.sample(200, 2, generator=gen()) - 0.5).abs().mean().item()
    assert after_gap < before_gap - 0.05  # label 2 decodes closer to flat grey
    kept = lambda m: m.sample(200, 4, generator=gen())  # noqa: E731
    assert (kept(after) - kept(model)).abs().mean().item() < 0.1  # a retained class barely moves
