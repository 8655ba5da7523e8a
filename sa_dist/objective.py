"""The Selective Amnesia objective (Heng & Soh, NeurIPS 2023, arXiv:2305.10120, eq. 4), one pure function:

    L(theta) = - E[c~c_f, x~q(x|c)] ELBO(x|theta,c)                 surrogate term
               - gamma * E[c~c_r, x~p(x|theta*,c)] ELBO(x|theta,c)  generative replay
               + lam * sum_i F_i (theta_i - theta*_i)^2              EWC

Each expectation is estimated by the mean negative ELBO of a batch (so lam's scale does not depend on the batch
size; the reference implementation sums over a batch instead, see docs/method.md). No real data enters: the
surrogate batch comes from q(x|c_f) and the replay batch from the frozen original model theta*.

The third term is a ``Regulariser``, a function of the parameters alone: EWC in the paper (``ewc``); the
``distance`` method swaps in the weight-distance push of arXiv:2505.22310 (``weight_distance``), the surrogate and
replay terms unchanged (``regularised_objective`` is the one weighted sum both use).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple, Sequence

import torch

from .models import negative_elbo


class SATerms(NamedTuple):
    """The objective's three terms (scalar tensors, before their weights) and the weighted total to minimise."""

    surrogate: torch.Tensor  # -E_q ELBO: mean negative ELBO of surrogate images under the forgotten labels
    replay: torch.Tensor  # -E_p(x|theta*) ELBO: mean negative ELBO of replayed images of the retained labels
    regulariser: torch.Tensor  # the paper's EWC sum_i F_i (theta_i - theta*_i)^2, or the Regulariser in its place
    total: torch.Tensor  # surrogate_weight * surrogate + gamma * replay + weight * regulariser (lam * EWC)


class Regulariser(NamedTuple):
    """The objective's third term: its name in the history and TensorBoard, its weight, and its value as a
    function of the parameters (a float32 scalar, before the weight)."""

    name: str  # "ewc" (the paper) or "weight_dist_reg" (arXiv:2505.22310's "Weight Dist Reg")
    weight: float  # lam for EWC, alpha for the weight distance
    term: Callable[[Iterable[torch.Tensor]], torch.Tensor]


def ewc_penalty(params: Iterable[torch.Tensor], fisher: Sequence[torch.Tensor],
                theta_star: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 in float32; ``fisher`` and ``theta_star`` hold one tensor per parameter, in
    the order of ``params``."""
    total = 0.0
    for p, f, anchor in zip(params, fisher, theta_star, strict=True):
        total = total + (f * (p.float() - anchor).pow(2)).sum()
    return total


def ewc(fisher: Sequence[torch.Tensor], theta_star: Sequence[torch.Tensor], lam: float) -> Regulariser:
    """The paper's EWC term, lam * sum_i F_i (theta_i - theta*_i)^2 (arXiv:2305.10120, eq. 4)."""
    return Regulariser("ewc", lam, lambda params: ewc_penalty(params, fisher, theta_star))


def rms(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The root mean square of all elements of ``tensors`` together, float32: ||t||_2 / sqrt(N). Through the norm,
    so its gradient at 0 is 0 (sqrt of a mean square would give NaN there)."""
    flat = torch.cat([t.float().flatten() for t in tensors])  # (N,)
    return torch.linalg.vector_norm(flat) / math.sqrt(flat.numel())


def distance_term(params: Iterable[torch.Tensor], theta_star: Sequence[torch.Tensor], cap: float) -> torch.Tensor:
    """-min(RMS(theta - theta*), cap): the weight-distance regulariser of arXiv:2505.22310 ("Weight Dist Reg"),
    whose minimisation pushes theta away from theta*. Uncapped, -RMS is unbounded below; the cap keeps the
    objective bounded (>= -cap), and beyond it the term's gradient is 0, so only replay and surrogate act."""
    return -rms([p.float() - a for p, a in zip(params, theta_star, strict=True)]).clamp(max=cap)


def weight_distance(theta_star: Sequence[torch.Tensor], alpha: float, cap: float) -> Regulariser:
    """alpha * distance_term: the ``distance`` method's third term in place of EWC (no Fisher)."""
    return Regulariser("weight_dist_reg", alpha, lambda params: distance_term(params, theta_star, cap))


def sam_epsilon(grads: Sequence[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """SAM's ascent step (Foret et al., ICLR 2021, eq. 2): epsilon = rho * g / ||g||_2, the norm over all the
    tensors together, so ||epsilon||_2 = rho; zeros where g = 0 (nothing to climb)."""
    norm = torch.linalg.vector_norm(torch.cat([g.float().flatten() for g in grads]))
    scale = rho / norm if norm > 0 else torch.zeros(())
    return [g * scale.to(g.dtype) for g in grads]


def injected(params: Iterable[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i <g_i, p_i> with the g_i constants: a scalar whose gradient with respect to ``params`` is exactly
    ``grads``. Added to a loss, a gradient computed elsewhere (SAM's, at perturbed weights) goes through the same
    backward as the other terms, so loss scaling and DDP's averaging treat it like them."""
    return sum((g.detach().to(p.dtype) * p).sum() for p, g in zip(params, grads, strict=True))


def regularised_objective(model: torch.nn.Module, surrogate: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
                          replay: tuple[torch.Tensor, torch.Tensor], regulariser: Regulariser, gamma: float,
                          surrogate_weight: float = 1.0) -> SATerms:
    """surrogate_weight * (-E_q ELBO) + gamma * (-E_p ELBO) + weight * regulariser (eq. 4 with its third term
    given): the loss of ``model`` on one surrogate batch ``(x_s, c_s)`` and one replay batch ``(x_r, c_r)``.
    ``surrogate`` may instead be the surrogate term's value computed elsewhere (SAM's ascent pass): it then counts
    in the total's value but not in its gradient."""
    s = surrogate.detach() if torch.is_tensor(surrogate) else negative_elbo(model, *surrogate).mean()  # (,)
    r = negative_elbo(model, *replay).mean()  # (,)
    reg = regulariser.term(model.parameters())  # (,)
    return SATerms(s, r, reg, surrogate_weight * s + gamma * r + regulariser.weight * reg)


def sa_objective(model: torch.nn.Module, surrogate: tuple[torch.Tensor, torch.Tensor],
                 replay: tuple[torch.Tensor, torch.Tensor], fisher: Sequence[torch.Tensor],
                 theta_star: Sequence[torch.Tensor], lam: float, gamma: float,
                 surrogate_weight: float = 1.0) -> SATerms:
    """The SA loss of ``model`` on one surrogate batch ``(x_s, c_s)`` (labels in c_f) and one replay batch
    ``(x_r, c_r)`` (labels in c_r), anchored at ``theta_star`` with the diagonal Fisher ``fisher`` (both aligned
    with ``model.parameters()``). ``surrogate_weight`` is 1 in the paper (0: the replay_only ablation)."""
    return regularised_objective(model, surrogate, replay, ewc(fisher, theta_star, lam), gamma, surrogate_weight)
