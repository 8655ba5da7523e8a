"""Relearning from retained data only (k = 0 of the relearning grid): fine-tune a copy of the model on real images
of the other classes (never the forgotten one) and watch whether the evaluator's P(y=target) on samples of the
forgotten label comes back. A forgotten class that resurfaces under fine-tuning on unrelated data was hidden, not
erased. Scored like relearning (``relearn.finetune``): steps to the threshold, the area under the curve, both
judges."""
from __future__ import annotations

import torch

from ..models import CVAE, negative_elbo
from ..utils import UserError
from .relearn import Judges, adam_step, finetune, judge, start_copy, trainable


def retain_relearn(model: CVAE, judges: Judges, x: torch.Tensor, y: torch.Tensor, target: int, *, steps: int,
                   batch: int, lr: float, n_samples: int, threshold: float, auc_steps: int, seed: int,
                   stop: bool, params: str = "all", start: str = "model", donors=None, device="cpu") -> dict:
    """Fine-tune a copy of ``model`` for up to ``steps`` Adam steps at ``lr`` on seeded batches of ``batch``
    images of ``x`` ``(N, 1, 28, 28)`` (labels ``y`` ``(N,)``; those labelled ``target`` are dropped), batch norm
    in eval mode, started as ``start`` says (``relearn.start_copy``), Adam on the weights ``params`` names
    (``relearn.trainable``); ``finetune``'s result (``stop``: end at the threshold) with the start P and the
    settings."""
    keep = y != target
    if not keep.any():
        raise UserError(f"retain-only relearning needs images of classes other than {target}; the data has none")
    x, y = x[keep], y[keep]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n_samples, model.z_dim, generator=gen).to(device)
    net = start_copy(model, start, target, donors, device)
    opt = torch.optim.Adam(trainable(net, params), lr=lr)

    def step():
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
        eps = torch.randn(len(idx), net.z_dim, generator=gen).to(device)
        adam_step(opt, negative_elbo(net, x[idx].to(device), y[idx].to(device), eps).mean())

    out = finetune(step, lambda: judge(net, judges, z, target), steps, threshold, auc_steps, stop=stop)
    return {"k": 0, "steps": steps, "batch": batch, "lr": lr, "p_start": out["curve"]["p"][0], **out}
