"""tar: Selective Amnesia plus a capped ascent on the forgotten class after a simulated relearning attack.

The class SA leaves behind sits in the shared weights: fine-tuning all weights on a few images of it brings it back
faster than in a retrained model (docs/robustness.md), and a min-max over the label's condition alone (``adversary``)
does not reach it. Here each SA step simulates the attacker itself, after TAR (Tamirisa et al., "Tamper-Resistant
Safeguards for Open-Weight LLMs", arXiv:2408.00761), first order. Every ``tar_every``-th SA step a scratch copy θ'
of the current weights takes ``tar_steps`` Adam steps at ``tar_lr`` on every weight, fitting ``tar_k`` of θ*'s own
samples of the forgotten labels (the attacker's few images; no real data). It starts as ``tar_start`` says: from
the model, or (label-mean) with the forgotten labels' input slices reset to the retained labels' mean, as the
attacker who knows the surrogate does (``--relearn-start``), or (both) each in turn. That step then adds

    -β · min( -E[c~c_f, x~p(x|θ*,c)] ELBO(x | θ', c),  cap )                                  (β = ``tar_weight``)

on fresh samples of θ*, with its gradient taken at θ' and applied to θ (first-order meta-learning: the attack's own
Jacobian is dropped), cap = (1 + ``tar_margin``) × θ*'s own nELBO of the samples. SA's terms keep the surrogate
and the retained classes; this one moves the shared weights so that a few steps of relearning do not model the
class again, until it is that much harder to model there than in θ*. Not the naive baseline: the ascent is at the
attacked point, on θ*'s generations, and bounded. With ``tar_start`` label-mean the gradient of the reset slices
belongs to the attacker's start, not to θ, and is dropped. With ``tar_score`` label the ascent raises instead
minus the log-odds of p(c_f | x, θ'), θ''s own posterior of the forgotten label for ``tar_k`` fresh samples of θ*,
its ELBOs over all labels read as a Bayes classifier (log-odds, not log p: that saturates at p = 1, where its
gradient vanishes), capped at minus the log-odds of ``tar_p``. Why: after a real-image attack the nELBO-pushed
model had the retrained model's nELBO of the class while the relearning judge saw the class again, and this
posterior ranks the attacked models as that judge does; at β = 1 it costs the retained classes more than it buys
(docs/robustness.md). The steps between attacks add nothing, and so do the epochs after ``tar_epochs`` (when set):
a repair tail of SA's own terms. Each process simulates its own attacker on its share of the samples; the term's
gradients are averaged over processes with the others. Nothing is kept across steps but the cap and the last row
(saved with SA's state, so a resume is exact).
History rows add ``tar_fit`` (the attack's loss after its steps) and ``tar_after`` (the capped value the term
pushes up after the attack: the nELBO of fresh samples, or minus their log-odds); rows between attacks repeat the
last attack's."""
from __future__ import annotations

import copy
import math

import torch

from ..amnesia import selective_amnesia
from ..config import TAR_SCORES, TAR_STARTS
from ..models import CVAE, label_log_odds, label_mean_slices, negative_elbo
from . import Context, Outcome
from .adversary import ClassTargets

USES = ("lam", "gamma", "tar_steps", "tar_lr", "tar_k", "tar_every", "tar_weight", "tar_margin", "tar_start",
        "tar_score", "tar_p", "tar_epochs")
NEEDS_FISHER = True
MARKER = "T"


class RelearnAdversary(ClassTargets):
    """A simulated relearning attack every ``every`` SA steps (``selective_amnesia``'s ``extra_term``): ``term``
    fine-tunes a scratch copy of the model on θ*'s samples of the forgotten labels, then returns the capped ascent
    there and its gradients (first order)."""

    def __init__(self, forget: list[int], *, steps: int, lr: float, k: int, every: int, weight: float,
                 margin: float, start: str, batch: int, seed: int, score: str = "nelbo", p: float = 0.6,
                 epochs: int | None = None):
        if start not in TAR_STARTS or score not in TAR_SCORES:
            raise ValueError(f"tar start must be one of {', '.join(TAR_STARTS)} and score one of "
                             f"{', '.join(TAR_SCORES)}, got {start!r}, {score!r}")
        super().__init__(forget, weight=weight, margin=margin, batch=batch, seed=seed)
        self.steps, self.lr, self.k, self.every, self.start_at = steps, lr, k, every, start
        self.score, self.epochs = score, epochs  # epochs: the SA epochs that attack (None: all)
        if score == "label":
            self.cap = math.log((1 - p) / p)  # minus the log-odds of posterior p: nothing to measure on θ* first
        self.last = None  # the last attack's row floats, repeated on the SA steps between attacks

    def start(self, frozen: CVAE, accelerator, steps_per_epoch: int = 1) -> None:
        super().start(frozen, accelerator, steps_per_epoch)
        self.scratch = copy.deepcopy(frozen).eval().requires_grad_(True)  # θ', batch norm frozen as in SA
        self.zeros = [torch.zeros_like(p) for p in frozen.parameters()]  # the gradient of the steps between attacks
        index = {id(p): i for i, p in enumerate(self.scratch.parameters())}
        self.slots = [(index[id(w)], dim, torch.tensor([start + c for c in self.forget], device=w.device))
                      for w, dim, start in self.scratch.label_inputs()]

    def attacks(self, step: int) -> bool:
        """Whether SA step ``step`` (1-based) simulates an attack: every ``every``-th step (the first included) of
        the first ``epochs`` epochs."""
        in_epochs = self.epochs is None or (step - 1) // self.steps_per_epoch < self.epochs
        return (step - 1) % self.every == 0 and in_epochs

    def start_of(self, step: int) -> str:
        """Where the attack of SA step ``step`` starts: ``tar_start``, or with ``both`` label-mean and model
        in turn."""
        if self.start_at != "both":
            return self.start_at
        return ("label-mean", "model")[(step - 1) // self.every % 2]

    @torch.no_grad()
    def _reset(self, model: CVAE, start: str) -> None:
        """θ' = ``model``'s weights and buffers; with start label-mean, the forgotten labels' slices at the retained
        mean."""
        for p, q in zip((*self.scratch.parameters(), *self.scratch.buffers()), (*model.parameters(), *model.buffers())):
            p.copy_(q)
        if start == "label-mean":
            params = list(self.scratch.parameters())
            for (i, dim, idx), mean in zip(self.slots, label_mean_slices(self.scratch, self.retained)):
                params[i].index_copy_(dim, idx, mean.expand_as(params[i].index_select(dim, idx)))

    def attack(self, model: CVAE, x: torch.Tensor, c: torch.Tensor, gen: torch.Generator,
               start: str = "model") -> float:
        """θ' = ``model`` (started as ``start`` says) after ``steps`` Adam steps on all its weights fitting
        ``(x, c)``; the last loss, averaged over processes. ``model`` is untouched."""
        self._reset(model, start)
        opt = torch.optim.Adam(self.scratch.parameters(), lr=self.lr)
        loss = torch.zeros(())
        for _ in range(self.steps):
            loss = negative_elbo(self.scratch, x, c, self._noise(len(x), gen)).mean()  # (,)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return self.accelerator.reduce(loss.detach(), reduction="mean").item()

    def term(self, model: CVAE, step: int):
        """(row floats, this process's gradients): every ``every``-th SA step (the first included), -β · min(nELBO
        at θ', cap) of fresh θ* samples of the forgotten labels, its gradient at θ' (after ``attack``) standing for
        θ's; between attacks, zero gradients and the last attack's floats."""
        if not self.attacks(step) and self.last is not None:
            return dict(self.last), self.zeros
        gen, start = self.generator(step), self.start_of(step)
        x, c = self.targets(gen, self.k)  # the attacker's few images
        held, held_c = self.targets(gen, self.k if self.score == "label" else None)  # what the attack is judged on
        fit = self.attack(model, x, c, gen, start)
        self.set_cap(held, held_c, gen)
        params = list(self.scratch.parameters())
        loss = self.judged(held, held_c, gen)  # (,)
        value = -loss.clamp(max=self.cap)  # (,): no push once the attacked model finds the class that hard
        grads = [g.detach().clone() for g in torch.autograd.grad(self.weight * value, params, materialize_grads=True)]
        if start == "label-mean":
            for i, dim, idx in self.slots:  # the attacker's reset start, not θ's weights
                grads[i].index_fill_(dim, idx, 0.0)
        value = self.accelerator.reduce(value.detach(), reduction="mean").item()
        self.last = {"tar_fit": fit, "tar_after": -value, "weighted": self.weight * value}
        return dict(self.last), grads

    def judged(self, held: torch.Tensor, held_c: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """What the ascent raises at θ' (``score``): the nELBO of θ*'s samples ``held`` at their labels, or (label)
        minus the log-odds of θ''s own posterior of their labels, its ELBOs over all labels read as a Bayes
        classifier: raising it lowers the label's ELBO against the others', so blurring every label's fit alike
        does not count."""
        eps = self._noise(len(held), gen)
        if self.score == "nelbo":
            return negative_elbo(self.scratch, held, held_c, eps).mean()
        return -label_log_odds(self.scratch, held, held_c, eps).mean()

    def state(self) -> dict:
        return {"cap": self.cap, "last": self.last}

    def load(self, state: dict | None) -> None:
        if state:
            self.cap, self.last = state["cap"], state["last"]


def capped_share(after: list[float], cap: float) -> float | None:
    """The share of attacks whose pushed value reached ``cap``. The term clamps in float32, so a capped value is
    float32(cap), which may lie just below the float64 cap: compare in float32 (before: a capped attack could
    count as not capped)."""
    cap32 = torch.tensor(cap, dtype=torch.float32).item()
    return sum(a >= cap32 for a in after) / len(after) if after else None


def unlearn(ctx: Context) -> Outcome:
    cfg, s = ctx.cfg, ctx.cfg.sa
    adversary = RelearnAdversary(s.forget, steps=s.tar_steps, lr=s.tar_lr, k=s.tar_k, every=s.tar_every,
                                 weight=s.tar_weight, margin=s.tar_margin, start=s.tar_start,
                                 batch=s.surrogate_batch, seed=cfg.sa_seed, score=s.tar_score, p=s.tar_p,
                                 epochs=s.tar_epochs)
    model, history = selective_amnesia(ctx.original, ctx.fisher, ctx.accelerator, cfg, log_dir=ctx.log_dir,
                                       checkpointer=ctx.ckpt, extra_term=adversary)
    after = [row["tar_after"] for step, row in enumerate(history, 1) if adversary.attacks(step)]  # a row a step
    info = {"steps": s.tar_steps, "lr": s.tar_lr, "k": s.tar_k, "every": s.tar_every, "weight": s.tar_weight,
            "margin": s.tar_margin, "score": s.tar_score, "p": s.tar_p, "epochs": s.tar_epochs,
            "start": s.tar_start, "cap": adversary.cap, "attacks": len(after),
            "after_first": after[0] if after else None, "after_last": after[-1] if after else None,
            "capped_share": capped_share(after, adversary.cap)}
    return Outcome(model, history, info=info, sa_terms=True)
