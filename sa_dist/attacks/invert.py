"""Condition inversion: optimise a free continuous label vector c and a free z so that the evaluator calls
decode(z, c) the target (many random starts in one batch), optionally with a penalty that keeps the image
plausible to the model."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..models import CVAE, negative_elbo


def invert(model: CVAE, evaluator, target: int, *, restarts: int = 64, steps: int = 200, lr: float = 0.05,
           penalty: float = 0.0, seed: int = 0, device="cpu", keep: int = 16) -> tuple[dict, torch.Tensor]:
    """Maximise log P(y=target | decode(z, c)) over free z and a free continuous label vector c, from ``restarts``
    random starts (z ~ N(0, I), c ~ N(0, I)); ``penalty`` > 0 adds penalty * the model's own negative ELBO of the
    image under c (posterior mean, no noise), which keeps it plausible to the model. Returns the numbers and the
    ``keep`` best images ``(keep, 1, 28, 28)``, best first."""
    gen = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    ev = copy.deepcopy(evaluator).to(device).eval().requires_grad_(False)
    z = torch.randn(restarts, net.z_dim, generator=gen).to(device).requires_grad_()
    c = torch.randn(restarts, net.n_classes, generator=gen).to(device).requires_grad_()
    zeros = torch.zeros(restarts, net.z_dim, device=device)
    opt = torch.optim.Adam([z, c], lr=lr)
    for _ in range(steps):
        x = torch.sigmoid(net.decode(z, c))
        loss = -F.log_softmax(ev(x), 1)[:, target]
        if penalty:
            loss = loss + penalty * negative_elbo(net, x, c, zeros)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        x = torch.sigmoid(net.decode(z, c))
        p = F.softmax(ev(x), 1)[:, target]
        nelbo = negative_elbo(net, x, c, zeros)
    order = p.argsort(descending=True)
    b = order[0]
    out = {"best_p": p[b].item(), "mean_p": p.mean().item(), "share_over_half": (p >= 0.5).float().mean().item(),
           "best_label": [round(v, 3) for v in c[b].tolist()], "best_z_norm": z[b].norm().item(),
           "best_nelbo": nelbo[b].item(), "mean_nelbo": nelbo.mean().item()}
    return out, x[order[:keep]].cpu()
