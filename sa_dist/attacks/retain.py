"""Relearning from retained data only: fine-tune a copy of the model on real images of the other classes (never
the forgotten one) and watch whether the evaluator's P(y=target) on samples of the forgotten label comes back.
A forgotten class that resurfaces under fine-tuning on unrelated data was hidden, not erased."""
from __future__ import annotations

import copy

import torch

from ..models import CVAE, negative_elbo
from .relearn import p_target, schedule


def retain_relearn(model: CVAE, evaluator, x: torch.Tensor, y: torch.Tensor, target: int, *, steps: int = 100,
                   batch: int = 100, lr: float = 5e-4, n_samples: int = 1000, seed: int = 0, device="cpu") -> dict:
    """Fine-tune a copy of ``model`` for ``steps`` Adam steps on seeded batches of ``batch`` images of ``x``
    (labels ``y``; those labelled ``target`` are dropped), batch norm in eval mode; score mean P(y=target) of the
    target label's samples on the relearning schedule. Returns the start, the largest and the final P."""
    keep = y != target
    x, y = x[keep], y[keep]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n_samples, model.z_dim, generator=gen).to(device)
    net = copy.deepcopy(model).to(device).eval()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    curve_s, curve_p, done = [], [], 0
    for s in schedule(steps):
        for _ in range(s - done):
            idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
            eps = torch.randn(len(idx), net.z_dim, generator=gen).to(device)
            loss = negative_elbo(net, x[idx].to(device), y[idx].to(device), eps).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        done = s
        curve_s.append(s)
        curve_p.append(round(p_target(net, evaluator, z, target), 5))
    return {"steps": steps, "batch": batch, "lr": lr, "p_start": curve_p[0], "max_p": max(curve_p),
            "final_p": curve_p[-1], "curve": {"step": curve_s, "p": curve_p}}
