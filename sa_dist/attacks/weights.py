"""Weight-space diagnostics of an unlearned model θ against the original θ*: how far it moved (L2 and
Fisher-weighted) and whether the two are linearly connected on forgotten-class data (the loss barrier).

Definitions (over every parameter i; batch-norm running statistics are not parameters):

* ``l2`` = sqrt(Σ_i (θ_i − θ*_i)²)
* ``fisher`` = sqrt(Σ_i F_i (θ_i − θ*_i)²), F the diagonal Fisher of θ* (the metric of SA's own EWC term: λ·fisher²
  is the EWC penalty)
* ``barrier`` = max over t in [0, 1] of L(θ_t) − ((1 − t) L(θ*) + t L(θ)), θ_t = (1 − t) θ* + t θ, L the mean
  negative ELBO (nats) on the given images (forgotten-class test images). 0 when the loss is convex along the
  segment; large when θ sits in a basin separated from θ*. Buffers are interpolated too.

Models that stay close to θ* and linearly connected to it are reported to relearn fast; retraining does not."""
from __future__ import annotations

import copy

import torch

from ..models import CVAE, negative_elbo


def _params(model) -> dict:
    return {n: p.detach().float().cpu() for n, p in model.named_parameters()}


def l2_distance(model: CVAE, ref: CVAE) -> float:
    a, b = _params(model), _params(ref)
    return float(sum((a[n] - b[n]).square().sum() for n in a).sqrt())


def fisher_distance(model: CVAE, ref: CVAE, fisher: dict) -> float:
    """sqrt(Σ F (θ − θ*)²) with ``fisher`` a ``{name: tensor}`` diagonal Fisher of ``ref``."""
    a, b = _params(model), _params(ref)
    return float(sum((fisher[n].float().cpu() * (a[n] - b[n]).square()).sum() for n in a).sqrt())


@torch.no_grad()
def interpolate(a: CVAE, b: CVAE, t: float) -> CVAE:
    """(1 − t) a + t b, parameters and floating buffers alike (a copy of ``a``, eval mode)."""
    out = copy.deepcopy(a).cpu().eval()
    sb = {k: v.cpu() for k, v in b.state_dict().items()}
    out.load_state_dict({k: torch.lerp(v.cpu(), sb[k], t) if v.is_floating_point() else v
                         for k, v in a.state_dict().items()})
    return out


@torch.no_grad()
def path_losses(a: CVAE, b: CVAE, loss_fn, points: int = 11) -> tuple[list, list]:
    """``loss_fn(model)`` along the straight line from ``a`` (t = 0) to ``b`` (t = 1) at ``points`` values of t."""
    ts = [i / (points - 1) for i in range(points)]
    return ts, [float(loss_fn(interpolate(a, b, t))) for t in ts]


def barrier(ts: list, losses: list) -> float:
    """max_t L(t) − ((1 − t) L(0) + t L(1)): the path's largest rise over the endpoints' interpolation."""
    return max(v - ((1 - t) * losses[0] + t * losses[-1]) for t, v in zip(ts, losses))


def nelbo_loss(x: torch.Tensor, c: torch.Tensor, seed: int = 0):
    """A loss function for ``path_losses``: mean negative ELBO on (x, c) with fixed seeded noise."""
    eps = None

    def loss(model: CVAE) -> float:
        nonlocal eps
        if eps is None:
            eps = torch.randn(len(x), model.z_dim, generator=torch.Generator().manual_seed(seed))
        return negative_elbo(model, x, c, eps).mean().item()
    return loss


def weight_report(model: CVAE, ref: CVAE, fisher: dict | None, x: torch.Tensor, c: torch.Tensor, *,
                  points: int = 11, seed: int = 0) -> dict:
    """``l2``, ``fisher`` (None without a Fisher), ``barrier`` and the path's losses from ``ref`` to ``model``."""
    ts, losses = path_losses(ref.cpu(), model.cpu(), nelbo_loss(x, c, seed), points)
    return {"l2": l2_distance(model, ref), "fisher": fisher_distance(model, ref, fisher) if fisher else None,
            "barrier": barrier(ts, losses), "path": {"t": ts, "nelbo": [round(v, 3) for v in losses]}}
