"""distance: Selective Amnesia with its EWC term replaced by a push away from θ* (after the weight-distance
regularisation, "Weight Dist Reg", of "From Dormant to Deleted", arXiv:2505.22310).

    L(θ) = -E_q ELBO(x|θ,c_f) - γ · E_p(x|θ*,c_r) ELBO(x|θ,c_r) - α · min(RMS(θ - θ*), cap)

RMS over all parameters together (``objective.distance_term``); cap = ``distance_target`` · RMS(θ*). Where EWC holds
the retained classes by keeping θ near θ*, here only replay keeps them while the third term drives θ away: a model
far from θ* should relearn c_f as slowly as one that never saw it. -α·RMS alone is unbounded below; the cap keeps
the objective bounded and stops the push once θ is ``distance_target`` of θ*'s own RMS away, after which replay and
the surrogate act alone. ``distance_noise`` > 0 starts from θ* noised as the ``noise`` method does (the distance is
still measured from θ*). The term is logged as ``weight_dist_reg``; no Fisher is needed."""
from __future__ import annotations

import torch

from ..amnesia import selective_amnesia
from ..models import plain_copy
from ..objective import rms
from . import Context, Outcome
from .noise import perturb

USES = ("gamma", "distance_alpha", "distance_target", "distance_noise", "sam_rho")
OVERRIDES = {"lam": 0.0}  # no EWC term: config.yaml and results.json say so
MARKER = "h"


def unlearn(ctx: Context) -> Outcome:
    cfg, s = ctx.cfg, ctx.cfg.sa
    start = perturb(ctx.original, s.distance_noise, cfg.sa_seed) if s.distance_noise > 0 else None
    out, history = selective_amnesia(ctx.original, None, ctx.accelerator, cfg, log_dir=ctx.log_dir,
                                     checkpointer=ctx.ckpt, start=start, regulariser="distance")
    star = list(plain_copy(ctx.original).parameters())
    with torch.no_grad():
        moved, scale = float(rms([a - b for a, b in zip(out.parameters(), star)])), float(rms(star))
    info = {"alpha": s.distance_alpha, "target": s.distance_target, "noise": s.distance_noise,
            "cap": s.distance_target * scale, "rms_theta_star": scale, "rms_moved": moved}
    return Outcome(out, history, info=info, sa_terms=True)
