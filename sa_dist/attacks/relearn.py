"""Relearning: fine-tune a copy of an unlearned model on k real images of the forgotten class and count the steps
until the evaluator's mean P(y=target) on samples of that label reaches a threshold. A model that truly lost the
class needs as many steps as one that never saw it (``retrain``)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..models import CVAE, negative_elbo


def schedule(max_steps: int) -> list[int]:
    """Scored steps: every step to 10, every 2 to 30, every 5 to 100, every 10 to 200, then every 25."""
    steps = set(range(0, 11)) | set(range(10, 31, 2)) | set(range(30, 101, 5)) | set(range(100, 201, 10))
    steps |= set(range(200, max_steps + 1, 25)) | {max_steps}
    return sorted(s for s in steps if s <= max_steps)


@torch.no_grad()
def p_target(model: CVAE, evaluator, z: torch.Tensor, target: int) -> float:
    """Mean evaluator P(y=target) of the decoder means of ``z`` under the one-hot label ``target``."""
    c = torch.full((len(z),), target, device=z.device)
    return F.softmax(evaluator(torch.sigmoid(model.decode(z, c))), 1)[:, target].mean().item()


def relearn(model: CVAE, evaluator, images: torch.Tensor, target: int, *, steps: int = 500, lr: float = 5e-4,
            n_samples: int = 1000, threshold: float = 0.5, seed: int = 0, device="cpu") -> dict:
    """Fine-tune a copy of ``model`` on ``images`` (all of them each step, batch norm frozen in eval mode, as in
    SA) with the negative ELBO under label ``target``; score it on the schedule and stop once P >= ``threshold``.
    ``steps_to_threshold`` is the first scored step at or above it (None if never): with the schedule's gaps it is
    an upper bound, the previous scored step a lower one."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n_samples, model.z_dim, generator=gen).to(device)
    net = copy.deepcopy(model).to(device).eval()
    x = images.to(device)
    c = torch.full((len(x),), target, device=device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    curve_s, curve_p, done = [], [], 0
    for s in schedule(steps):
        for _ in range(s - done):
            eps = torch.randn(len(x), net.z_dim, generator=gen).to(device)
            loss = negative_elbo(net, x, c, eps).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        done = s
        curve_s.append(s)
        p = p_target(net, evaluator, z, target)
        curve_p.append(round(p, 5))
        if p >= threshold:
            break
    hit = p >= threshold
    return {"k": len(x), "steps_to_threshold": curve_s[-1] if hit else None,
            "bracket": [curve_s[-2] if hit and len(curve_s) > 1 else None, curve_s[-1]] if hit else None,
            "final_p": curve_p[-1], "steps_run": curve_s[-1], "curve": {"step": curve_s, "p": curve_p}}


def best_of(by_lr: dict) -> str:
    """The key of the attacker's best lr in ``{lr: relearn result}``: fewest steps to the threshold; if none got
    there, the highest final P; ties go to the earlier lr of the grid."""
    def rank(item):
        r = item[1]
        return (0, r["steps_to_threshold"], 0.0) if r["steps_to_threshold"] is not None else (1, 0, -r["final_p"])
    return min(by_lr.items(), key=rank)[0]


def relearn_grid(model: CVAE, evaluator, images: torch.Tensor, target: int, lrs, **kw) -> dict:
    """``relearn`` once per lr of ``lrs`` (the same images, latents and noise): the best lr's result at the top
    level (``steps_to_threshold``, ``curve``, ...), with ``best_lr`` and every lr's result under ``by_lr``."""
    if not lrs:
        raise ValueError("relearn_grid needs at least one lr")
    by_lr = {f"{lr:g}": relearn(model, evaluator, images, target, lr=lr, **kw) for lr in lrs}
    best = best_of(by_lr)
    return {**by_lr[best], "best_lr": float(best), "by_lr": by_lr}
