"""Is it really forgotten? Three attacks on a cVAE that should no longer generate class ``target``.

* ``relearn``: fine-tune on k real images of the class with the plain negative ELBO and count the steps until the
  evaluator's mean P(y=target) on 1000 samples of that label reaches 0.5 (scored on a dense schedule).
* ``invert``: optimise a free continuous label vector c and a free z so that the evaluator calls decode(z, c) the
  target (many random starts in one batch), optionally with a penalty that keeps the image plausible to the model.
* ``probe``: a cross-validated logistic-regression probe (scikit-learn) on encoder means of real test images,
  target class vs the rest.

Each function takes the model, the evaluator, data, a seed and a device, and never changes the model it is given.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .models import CVAE, elbo

KINDS = ("relearn", "invert", "probe")  # scripts/attack.py --kind
MODELS = ("original", "unlearned", "retrain")  # attacked side by side


@dataclass
class AttackConfig:
    target: int | None = None  # the forgotten class to attack (default: the run's first forgotten class)
    relearn_k: list = field(default_factory=lambda: [10, 100])  # real training images of the class per fine-tune
    relearn_steps: int = 500  # most fine-tuning steps (full batch of the k images per step)
    relearn_lr: float | None = None  # Adam lr of the fine-tune; None = the baseline's training lr
    relearn_samples: int = 1000  # samples of the target label scored at each scheduled step
    threshold: float = 0.5  # relearned once mean P(y=target) >= this
    invert_restarts: int = 64  # random starts, optimised together as one batch
    invert_steps: int = 200  # Adam steps per start
    invert_lr: float = 0.05  # Adam lr on z and c
    invert_penalty: float = 0.01  # weight per nat of the model's negative ELBO in the "plausible" variant
    probe_folds: int = 5  # stratified cross-validation folds
    probe_n: int | None = None  # test images for the probe (default: all)
    seed: int = 0  # the same images, latents and starts for every model


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
            loss = elbo(net, x, c, eps).mean()
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
            loss = loss + penalty * elbo(net, x, c, zeros)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        x = torch.sigmoid(net.decode(z, c))
        p = F.softmax(ev(x), 1)[:, target]
        nelbo = elbo(net, x, c, zeros)
    order = p.argsort(descending=True)
    b = order[0]
    out = {"best_p": p[b].item(), "mean_p": p.mean().item(), "share_over_half": (p >= 0.5).float().mean().item(),
           "best_label": [round(v, 3) for v in c[b].tolist()], "best_z_norm": z[b].norm().item(),
           "best_nelbo": nelbo[b].item(), "mean_nelbo": nelbo.mean().item()}
    return out, x[order[:keep]].cpu()


def probe(model: CVAE, x: torch.Tensor, y: torch.Tensor, target: int, *, folds: int = 5, seed: int = 0,
          device="cpu") -> dict:
    """Cross-validated ROC AUC of a logistic regression telling ``target`` images from the rest, on encoder means
    under each image's own label (``own_label``) and, label-blind, concatenated over all ten one-hot labels
    (``all_labels``). Chance is 0.5."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .latent import latent_means

    is_target = (y == target).numpy()
    model = model.to(device)
    feats = {"own_label": latent_means(model, x, y),
             "all_labels": np.concatenate([latent_means(model, x, torch.full_like(y, k))
                                           for k in range(model.n_classes)], 1)}
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    out = {"n": len(y), "n_target": int(is_target.sum())}
    for name, f in feats.items():
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        auc = cross_val_score(clf, f.astype(np.float64), is_target, cv=cv, scoring="roc_auc")
        out[name] = {"auc": float(auc.mean()), "auc_std": float(auc.std()), "features": f.shape[1]}
    return out
