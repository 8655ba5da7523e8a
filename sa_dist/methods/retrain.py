"""retrain: train from scratch without the forgotten classes (exact unlearning), same architecture and epochs.

The gold standard for retained quality and the cost SA is weighed against. The model is cached like the baseline
(under its own key); its seconds are those its training took, also when it comes from the cache.
With ``--checkpoint`` the retrained model follows the run's config (arch, epochs), not the checkpoint's."""
from ..cache import get_baseline
from . import Context, Outcome

MARKER = "s"


def unlearn(ctx: Context) -> Outcome:
    model, info = get_baseline(ctx.cfg, ctx.accelerator, exclude=tuple(ctx.cfg.sa.forget))
    return Outcome(model, info["history"] or [], seconds=info["seconds"], cached=info["cached"],
                   info={"retrain_key": info["key"], "epochs": ctx.cfg.train.epochs})
