"""How well can the forgotten class still be modelled by choosing the label's condition alone?

For each model, the ``adversary`` method's ``ConditionAdversary`` (the forgotten labels' input slices, started at
the retained labels' mean, as ``--relearn-start label-mean`` starts) is fitted to θ*'s own samples of the forgotten
class for ``--steps`` Adam steps with the model's weights frozen; the negative ELBO it reaches says how much of the
class the shared weights still hold. θ* itself, retraining and the unlearned models are compared on the same
samples and noise; ``own_at_label`` is θ*'s negative ELBO of them at their own label (the adversary method's cap is
(1 + margin) times it). Prints JSON; a diagnostic, not a test.

    python benchmarks/condition_fit.py THETA_STAR.safetensors RUN/unlearned.safetensors ... --forget 2
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from sa_dist.checkpoint import load_checkpoint
from sa_dist.config import SAConfig
from sa_dist.methods.adversary import ConditionAdversary
from sa_dist.runtime import make_accelerator
from sa_dist.utils import UserError


def condition_fit(theta_star, model, forget: list[int], steps: int, lr: float, seed: int, accelerator) -> dict:
    """The adversary's negative ELBO of θ*'s samples over ``steps`` (eight window means) and where it ended."""
    adv = ConditionAdversary(forget, steps=1, lr=lr, weight=0.0, margin=0.0, batch=128, seed=seed)
    adv.start(theta_star, accelerator)
    fits = []
    for s in range(steps):
        gen = adv.generator(s)
        fits.append(adv.fit(model, *adv.targets(gen), gen))
    w = max(1, steps // 8)
    windows = [sum(fits[i:i + w]) / len(fits[i:i + w]) for i in range(0, steps, w)]
    return {"fit_windows": [round(v, 2) for v in windows], "fit_end": round(windows[-1], 2),
            "moved_rms": round(adv.moved(), 4)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("theta_star", help="θ*'s checkpoint (the baseline every model was unlearned from)")
    p.add_argument("models", nargs="+", help="checkpoints to probe (θ* may be named again)")
    p.add_argument("--forget", type=int, nargs="+", default=[2], help="the forgotten classes (default 2)")
    p.add_argument("--steps", type=int, default=400, help="adversary steps per model (default 400)")
    lr = SAConfig().adversary_lr  # the method's own default: one source
    p.add_argument("--lr", type=float, default=lr, help=f"the adversary's Adam lr (default the method's {lr:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and noise (default 0)")
    a = p.parse_args(argv)
    if a.steps < 1 or not a.lr > 0:
        raise SystemExit("condition_fit.py: error: --steps must be >= 1 and --lr > 0")
    torch.manual_seed(a.seed)
    with contextlib.redirect_stdout(sys.stderr):  # its thread-count line: stdout holds the JSON alone
        acc = make_accelerator(cpu=True)
    try:
        theta = load_checkpoint(a.theta_star)[0].requires_grad_(False)
        probe = ConditionAdversary(a.forget, steps=1, lr=a.lr, weight=0.0, margin=0.0, batch=1000, seed=a.seed)
        probe.start(theta, acc)
        gen = probe.generator(-1)
        own = probe.own_nelbo(*probe.targets(gen), gen)
        out = {"own_at_label": round(own, 2), "steps": a.steps, "lr": a.lr, "forget": a.forget, "models": {}}
        for path in a.models:
            model = load_checkpoint(path)[0].requires_grad_(False)
            out["models"][path] = condition_fit(theta, model, a.forget, a.steps, a.lr, a.seed, acc)
    except UserError as e:
        raise SystemExit(f"condition_fit.py: error: {e}") from None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
