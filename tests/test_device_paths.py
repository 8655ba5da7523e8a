"""GPU and multi-GPU code paths, checked on the CPU with stand-ins: the fp16 GradScaler's first-step overflow in
``naive``, device consistency, per-rank noise, TF32 around the Fisher, cache decisions taken by the main process,
and out-of-memory handling."""
import pytest
import torch

from conftest import LIMIT
from sa_dist.config import RunConfig, SAConfig, TrainConfig
from sa_dist.methods import Context, naive


def _naive_cfg(**sa):
    return RunConfig(train=TrainConfig(limit=LIMIT), sa=SAConfig(forget=[2], sa_epochs=1, n_replay=1280, batch=64,
                                                                 lr=1e-3, **sa))


def _fp16_like(accelerator, scaler):
    """What Accelerate does under fp16 on a GPU (a GradScaler scales the loss, the optimizer steps through it,
    clip_grad_norm_ unscales first), with a CPU GradScaler: Accelerate builds none on CPU."""
    accelerator.scaler, accelerator.native_amp = scaler, True
    accelerator.unscale_gradients = lambda optimizer=None: [scaler.unscale_(o.optimizer)
                                                            for o in accelerator._optimizers]
    return accelerator


def test_naive_under_a_grad_scaler_skips_the_first_overflowing_step_instead_of_stopping(tiny_baseline, accelerator):
    # a scale so large that the first scaled loss overflows (as fp16's 65536 does on a GPU), backed off at once
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38, backoff_factor=1e-30)
    acc = _fp16_like(accelerator, scaler)
    model, _ = tiny_baseline
    out = naive.unlearn(Context(_naive_cfg(), model, None, acc))
    assert out.info["stopped"] is None, out.info["stopped"]
    assert out.info["scaler_skipped_steps"] == 1
    assert len(out.history) == out.info["budget_steps"] - 1 == 19  # every other step updated the weights
    assert scaler.get_scale() < 1e38
    assert any(not torch.equal(a, b) for a, b in zip(out.model.parameters(), model.parameters()))


def test_naive_without_a_scaler_reports_no_skipped_steps_and_is_seeded_by_sa_seed(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    runs = []
    for junk in (1, 2):  # whatever the global RNG went through before, the same --sa-seed gives the same model
        torch.manual_seed(junk)
        runs.append(naive.unlearn(Context(_naive_cfg(), model, None, accelerator)))
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.equal(a, b)
    assert runs[0].info["scaler_skipped_steps"] == 0
