"""Condition inversion: optimise a label vector c and a free z jointly so that the evaluator calls decode(z, c) the
target (many random starts in one batch), optionally with a penalty that keeps the image plausible to the model.
The label is free (any real vector), on the simplex (a softmax: a mixture of labels) or the target's one-hot (only
z is searched: can the forgotten label still draw the class from latents that sampling rarely visits?)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..models import CVAE, negative_elbo


LABELS = ("free", "simplex", "onehot")


def _label(raw: torch.Tensor, mode: str, target: int) -> torch.Tensor:
    """The label vector the decoder sees: ``raw`` itself, its softmax, or the target's one-hot."""
    if mode == "free":
        return raw
    if mode == "simplex":
        return F.softmax(raw, 1)
    return F.one_hot(torch.full((len(raw),), target, device=raw.device), raw.shape[1]).to(raw.dtype)


def invert(model: CVAE, evaluator, target: int, *, restarts: int = 64, steps: int = 200, lr: float = 0.05,
           penalty: float = 0.0, seed: int = 0, device="cpu", keep: int = 16,
           label: str = "free") -> tuple[dict, torch.Tensor]:
    """Maximise log P(y=target | decode(z, c)) jointly over z and the label c, from ``restarts`` random starts
    (z ~ N(0, I), raw label ~ N(0, I)); ``label`` (``LABELS``): c is the raw vector, its softmax, or fixed to the
    target's one-hot. ``penalty`` > 0 adds penalty * the model's own negative ELBO of the image under c (posterior
    mean, no noise), which keeps it plausible to the model. The evaluator's output for ``target`` is read by
    index, whatever its number of outputs. Returns the numbers and the ``keep`` best images ``(keep, 1, 28, 28)``,
    best first."""
    if label not in LABELS:
        raise ValueError(f"invert: label must be one of {LABELS}, got {label!r}")
    gen = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    ev = copy.deepcopy(evaluator).to(device).eval().requires_grad_(False)
    z = torch.randn(restarts, net.z_dim, generator=gen).to(device).requires_grad_()
    raw = torch.randn(restarts, net.n_classes, generator=gen).to(device).requires_grad_(label != "onehot")
    zeros = torch.zeros(restarts, net.z_dim, device=device)
    opt = torch.optim.Adam([z, raw] if label != "onehot" else [z], lr=lr)
    for _ in range(steps):
        c = _label(raw, label, target)
        x = torch.sigmoid(net.decode(z, c))
        loss = -F.log_softmax(ev(x), 1)[:, target]
        if penalty:
            loss = loss + penalty * negative_elbo(net, x, c, zeros)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        c = _label(raw, label, target)
        x = torch.sigmoid(net.decode(z, c))
        p = F.softmax(ev(x), 1)[:, target]
        nelbo = negative_elbo(net, x, c, zeros)
    order = p.argsort(descending=True)
    b = order[0]
    out = {"best_p": p[b].item(), "mean_p": p.mean().item(), "share_over_half": (p >= 0.5).float().mean().item(),
           "best_label": [round(v, 3) for v in c[b].tolist()], "best_z_norm": z[b].norm().item(),
           "best_nelbo": nelbo[b].item(), "mean_nelbo": nelbo.mean().item()}
    return out, x[order[:keep]].cpu()
