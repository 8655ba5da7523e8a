"""no_ewc: SA without the EWC term (lam = 0): surrogate + gamma * replay. An ablation; needs no Fisher."""
import torch

from . import Context, Outcome
from .sa import run_sa

USES = ("gamma", "sam_rho")
MARKER = "v"
OVERRIDES = {"lam": 0.0}


def unlearn(ctx: Context) -> Outcome:
    zeros = {k: torch.zeros_like(v) for k, v in ctx.original.named_parameters()}  # the EWC term logs as 0
    return run_sa(ctx, zeros)
