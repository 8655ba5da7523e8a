"""The Selective Amnesia objective (Heng & Soh, NeurIPS 2023, arXiv:2305.10120, eq. 4), one pure function:

    L(theta) = - E[c~c_f, x~q(x|c)] ELBO(x|theta,c)                 surrogate term
               - gamma * E[c~c_r, x~p(x|theta*,c)] ELBO(x|theta,c)  generative replay
               + lam * sum_i F_i (theta_i - theta*_i)^2              EWC

Each expectation is estimated by the mean negative ELBO of a batch (so lam's scale does not depend on the batch
size; the reference implementation sums over a batch instead, see docs/method.md). No real data enters: the
surrogate batch comes from q(x|c_f) and the replay batch from the frozen original model theta*.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import torch

from .models import negative_elbo


class SATerms(NamedTuple):
    """The objective's three terms (scalar tensors, before their weights) and the weighted total to minimise."""

    surrogate: torch.Tensor  # -E_q ELBO: mean negative ELBO of surrogate images under the forgotten labels
    replay: torch.Tensor  # -E_p(x|theta*) ELBO: mean negative ELBO of replayed images of the retained labels
    ewc: torch.Tensor  # sum_i F_i (theta_i - theta*_i)^2
    total: torch.Tensor  # surrogate_weight * surrogate + gamma * replay + lam * ewc


def ewc_penalty(params: Iterable[torch.Tensor], fisher: Sequence[torch.Tensor],
                theta_star: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 in float32; ``fisher`` and ``theta_star`` hold one tensor per parameter, in
    the order of ``params``."""
    total = 0.0
    for p, f, anchor in zip(params, fisher, theta_star, strict=True):
        total = total + (f * (p.float() - anchor).pow(2)).sum()
    return total


def sa_objective(model: torch.nn.Module, surrogate: tuple[torch.Tensor, torch.Tensor],
                 replay: tuple[torch.Tensor, torch.Tensor], fisher: Sequence[torch.Tensor],
                 theta_star: Sequence[torch.Tensor], lam: float, gamma: float,
                 surrogate_weight: float = 1.0) -> SATerms:
    """The SA loss of ``model`` on one surrogate batch ``(x_s, c_s)`` (labels in c_f) and one replay batch
    ``(x_r, c_r)`` (labels in c_r), anchored at ``theta_star`` with the diagonal Fisher ``fisher`` (both aligned
    with ``model.parameters()``). ``surrogate_weight`` is 1 in the paper (0: the replay_only ablation)."""
    s = negative_elbo(model, *surrogate).mean()  # (,)
    r = negative_elbo(model, *replay).mean()  # (,)
    ewc = ewc_penalty(model.parameters(), fisher, theta_star)  # (,)
    return SATerms(s, r, ewc, surrogate_weight * s + gamma * r + lam * ewc)
