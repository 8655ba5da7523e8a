"""noise: perturb every weight with Gaussian noise scaled to its own magnitude, then repair with Selective Amnesia.

theta_i <- theta_i * (1 + ``noise`` * eps_i), eps_i ~ N(0, 1) drawn from the unlearning seed (batch-norm running
statistics are kept). The perturbation moves the model away from θ* in every direction; SA then starts at the
noisy weights: replay of θ*'s retained classes repairs them, the surrogate term keeps c_f forgotten. The idea: a
model that is far from θ* and not linearly connected to it should relearn c_f as slowly as one retrained without it.

Where EWC pulls is ``noise_anchor``: ``noisy`` (the default, as before) anchors it at the noised weights, which
also holds them against replay's repair; ``theta_star`` anchors it at θ* (the repair is pulled back towards θ*);
``none`` drops it (λ = 0, replay alone repairs). The benchmark measures which is better."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..amnesia import selective_amnesia
from ..models import CVAE, plain_copy
from . import Context, Outcome

USES = ("lam", "gamma", "noise", "noise_anchor", "sam_rho")
NEEDS_FISHER = True
MARKER = "*"


@torch.no_grad()
def perturb(model: CVAE, noise: float, seed: int) -> CVAE:
    """A copy of ``model`` with every parameter multiplied by (1 + noise * eps), eps ~ N(0, 1) from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out = plain_copy(model)
    for p in out.parameters():
        p.mul_(1 + noise * torch.randn(p.shape, generator=gen).to(p))
    return out


def unlearn(ctx: Context) -> Outcome:
    cfg, s = ctx.cfg, ctx.cfg.sa
    noisy = perturb(ctx.original, s.noise, cfg.sa_seed)
    with torch.no_grad():
        moved = sum((a - b).square().sum() for a, b in zip(noisy.parameters(), plain_copy(ctx.original).parameters()))
    anchor = None if s.noise_anchor == "theta_star" else noisy  # None: selective_amnesia anchors at θ*
    run = replace(cfg, sa=replace(s, lam=0.0)) if s.noise_anchor == "none" else cfg
    out, history = selective_amnesia(ctx.original, ctx.fisher, ctx.accelerator, run, log_dir=ctx.log_dir,
                                     checkpointer=ctx.ckpt, start=noisy, anchor=anchor)
    info = {"noise": s.noise, "l2_moved": float(moved.sqrt()), "anchor": s.noise_anchor, "lam": run.sa.lam}
    return Outcome(out, history, info=info, sa_terms=True)
