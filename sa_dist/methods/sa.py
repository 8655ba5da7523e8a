"""sa: Selective Amnesia, the full objective: surrogate + gamma * replay + lam * EWC (``sa_dist.amnesia``)."""
from ..amnesia import selective_amnesia
from . import Context, Outcome

USES = ("lam", "gamma", "sam_rho")
NEEDS_FISHER = True
MARKER = "o"


def run_sa(ctx: Context, fisher: dict, surrogate_weight: float = 1.0) -> Outcome:
    """The SA loop with ``ctx.cfg``'s settings; the ablations change ``cfg``, the Fisher or the surrogate weight."""
    model, history = selective_amnesia(ctx.original, fisher, ctx.accelerator, ctx.cfg, log_dir=ctx.log_dir,
                                       checkpointer=ctx.ckpt, surrogate_weight=surrogate_weight)
    return Outcome(model, history, sa_terms=True)


def unlearn(ctx: Context) -> Outcome:
    return run_sa(ctx, ctx.fisher)
