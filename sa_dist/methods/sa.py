"""sa: Selective Amnesia, the full objective: surrogate + gamma * replay + lam * EWC (``sa_dist.sa``)."""
from . import Context, Outcome

USES = ("lam", "gamma")
NEEDS_FISHER = True


def run_sa(ctx: Context, fisher: dict, alpha: float = 1.0) -> Outcome:
    """The SA loop with ``ctx.cfg``'s settings; the ablations change ``cfg``, the Fisher or ``alpha``."""
    from ..pipeline import unlearn_from_config

    model, history = unlearn_from_config(ctx.cfg, ctx.original, fisher, ctx.accelerator, ctx.log_dir, ctx.ckpt,
                                          alpha=alpha)
    return Outcome(model, history, sa_terms=True)


def unlearn(ctx: Context) -> Outcome:
    return run_sa(ctx, ctx.fisher)
