"""replay_only: SA without the surrogate term: gamma * replay + lam * EWC. An ablation: nothing asks to forget."""
from . import Context, Outcome
from .sa import run_sa

USES = ("lam", "gamma")
MARKER = "D"
NEEDS_FISHER = True


def unlearn(ctx: Context) -> Outcome:
    return run_sa(ctx, ctx.fisher, surrogate_weight=0.0)
