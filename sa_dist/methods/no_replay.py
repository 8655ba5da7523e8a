"""no_replay: SA without generative replay (gamma = 0): surrogate + lam * EWC. An ablation.
The replay batches are still drawn (and their negative ELBO logged) but weigh nothing."""
from . import Context, Outcome
from .sa import run_sa

USES = ("lam", "sam_rho")
MARKER = "^"
OVERRIDES = {"gamma": 0.0}
NEEDS_FISHER = True


def unlearn(ctx: Context) -> Outcome:
    return run_sa(ctx, ctx.fisher)
