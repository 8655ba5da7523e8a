"""adversary: Selective Amnesia plus a capped ascent on the forgotten class at the condition an attacker would choose.

SA rewrites what the forgotten label's own input weights point at; the shared weights keep drawing the class, and
an attacker who resets that label's input weights to the retained labels' mean and fine-tunes on a few real images
relearns it at θ*'s pace (docs/robustness.md, "an attacker who knows the surrogate"). Here an adversary keeps the
condition that best models the class: its own copy of the forgotten labels' slices of the weights that read the
one-hot label (``CVAE.label_inputs``), started where that attacker starts (the retained labels' mean) and moved
by ``adversary_steps`` Adam steps per SA step (lr ``adversary_lr``, the state kept across steps) to lower the
negative ELBO of θ*'s own samples of the forgotten labels under it. Each SA step then adds

    -β · min( -E[c~c_f, x~p(x|θ*,c)] ELBO(x | θ with the adversary's slices, c),  cap )     (β = ``adversary_weight``)

with cap = (1 + ``adversary_margin``) times θ*'s own negative ELBO of those samples at their label: the shared
weights (the slices are the adversary's, held fixed in this term) are pushed to model the class worse wherever the
label is pointed to model it, until it is that much harder there than in θ*; replay and EWC hold the retained
classes, SA's surrogate term the forgotten label. A min-max: the adversary minimises the class's nELBO over the
condition, the model raises that minimum to the cap. Not the naive baseline: the ascent is on θ*'s generations, not
real data, bounded, and only at the adversary's condition. (Drawing the surrogate there instead, by its
likelihood at prior z, wrecked the retained classes of a ``--quick`` linear run: docs/robustness.md.) No real data.
The adversary's gradients are averaged over processes, so every process holds the same condition; its state is
saved and resumed with SA's. History rows add ``adversary_fit`` (the adversary's loss after its steps: rising means
the shared weights model the class worse) and ``adversary_ascent`` (the capped nELBO the term pushes up)."""
from __future__ import annotations

import torch
from torch.func import functional_call

from ..amnesia import selective_amnesia
from ..models import CVAE, label_mean_slices, negative_elbo
from ..objective import rms
from . import Context, Outcome

USES = ("lam", "gamma", "adversary_steps", "adversary_lr", "adversary_weight", "adversary_margin")
NEEDS_FISHER = True
MARKER = "X"


class ClassTargets:
    """What an attacker-simulating ``extra_term`` draws each SA step: θ*'s own samples of the forgotten labels from
    its own random stream, and the cap of a capped ascent on their nELBO, (1 + margin) × θ*'s own. Shared by
    ``adversary`` and ``tar``."""

    def __init__(self, forget: list[int], *, weight: float, margin: float, batch: int, seed: int):
        self.forget, self.weight, self.batch, self.seed = forget, weight, batch, seed
        self.margin, self.cap = margin, None  # the cap is set at the first step, from θ*'s own fit

    def start(self, frozen: CVAE, accelerator, steps_per_epoch: int = 1) -> None:
        self.frozen, self.accelerator, self.steps_per_epoch = frozen, accelerator, steps_per_epoch
        self.retained = [c for c in range(frozen.n_classes) if c not in self.forget]

    def generator(self, step: int) -> torch.Generator:
        """The term's own random stream for ``step`` on this process: seeded by step and rank, so a resumed
        run draws the same and SA's own draws are untouched (β = 0 is SA exactly)."""
        return torch.Generator().manual_seed((self.seed * 7919 + step) * 64 + self.accelerator.process_index)

    def _noise(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.frozen.z_dim, generator=gen).to(self.accelerator.device)  # (n, z)

    def targets(self, gen: torch.Generator, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of ``batch`` (default ``self.batch``) of θ*'s own samples of the forgotten labels."""
        n = max(1, (batch or self.batch) // self.accelerator.num_processes)
        c = torch.tensor(self.forget)[torch.randint(len(self.forget), (n,), generator=gen)]  # (n,)
        return self.frozen.sample(n, c, generator=gen), c.to(self.accelerator.device)

    @torch.no_grad()
    def own_nelbo(self, x: torch.Tensor, c: torch.Tensor, gen: torch.Generator) -> float:
        """θ*'s own negative ELBO of its samples ``x`` at their labels ``c``, averaged over processes."""
        own = negative_elbo(self.frozen, x, c, self._noise(len(x), gen)).mean()
        return self.accelerator.reduce(own, reduction="mean").item()

    def set_cap(self, x: torch.Tensor, c: torch.Tensor, gen: torch.Generator) -> None:
        """At the first step: cap = (1 + margin) · θ*'s own nELBO of ``(x, c)``."""
        if self.cap is None:
            self.cap = (1 + self.margin) * self.own_nelbo(x, c, gen)


class ConditionAdversary(ClassTargets):
    """The attacker's condition for the forgotten labels, kept across SA steps (``selective_amnesia``'s
    ``extra_term``): ``term`` moves it, then returns the capped ascent at it and that term's gradients."""

    def __init__(self, forget: list[int], *, steps: int, lr: float, weight: float, margin: float, batch: int,
                 seed: int):
        super().__init__(forget, weight=weight, margin=margin, batch=batch, seed=seed)
        self.steps, self.lr = steps, lr

    def start(self, frozen: CVAE, accelerator, steps_per_epoch: int = 1) -> None:
        """Slices at the retained labels' mean of θ* = ``frozen`` (one per forgotten label, in ``forget`` order)."""
        super().start(frozen, accelerator, steps_per_epoch)
        names = {id(p): n for n, p in frozen.named_parameters()}
        means = label_mean_slices(frozen, self.retained)  # per label input: (.., 1, ..) along its dim
        self.slots = [(names[id(w)], dim, torch.tensor([start + c for c in self.forget], device=w.device))
                      for w, dim, start in frozen.label_inputs()]
        self.slices = [m.repeat_interleave(len(self.forget), dim).detach().requires_grad_(True)
                       for m, (_, dim, _) in zip(means, self.slots)]
        self.first = [s.detach().clone() for s in self.slices]
        self.opt = torch.optim.Adam(self.slices, lr=self.lr)

    def _swapped(self, model: CVAE, slices: list[torch.Tensor]) -> dict:
        """The label inputs' weights of ``model`` with the forgotten slices replaced by ``slices`` (differentiable
        in both), by parameter name."""
        params = dict(model.named_parameters())
        return {name: params[name].index_copy(dim, idx, s) for (name, dim, idx), s in zip(self.slots, slices)}

    def _at(self, model: CVAE, slices: list[torch.Tensor]):
        """``model``'s forward with the forgotten slices replaced by ``slices``."""
        swapped = self._swapped(model, slices)
        return lambda x, c, eps=None: functional_call(model, swapped, (x, c, eps))

    def fit(self, model: CVAE, x: torch.Tensor, c: torch.Tensor, gen: torch.Generator) -> float:
        """``steps`` Adam steps of the slices on θ*'s samples ``(x, c)``, the model's weights fixed; the last
        loss."""
        for _ in range(self.steps):
            loss = negative_elbo(self._at(model, self.slices), x, c, self._noise(len(x), gen)).mean()  # (,)
            grads = torch.autograd.grad(loss, self.slices)
            for s, g in zip(self.slices, grads):
                s.grad = self.accelerator.reduce(g.detach(), reduction="mean")
            self.opt.step()
        return self.accelerator.reduce(loss.detach(), reduction="mean").item()

    def term(self, model: CVAE, step: int):
        """(row floats, this process's gradients of the capped ascent at the adversary's condition):
        -β · min(nELBO, cap) of this step's θ* samples at the slices just fitted (held fixed), fresh noise, with
        cap = (1 + margin) · θ*'s own nELBO of its samples at their label. The gradients join the step's backward
        (``objective.injected``), where DDP averages them over processes like the other terms'."""
        gen = self.generator(step)
        x, c = self.targets(gen)
        fit = self.fit(model, x, c, gen)
        self.set_cap(x, c, gen)
        params = list(model.parameters())
        nelbo = negative_elbo(self._at(model, [s.detach() for s in self.slices]), x, c, self._noise(len(x), gen))
        value = -nelbo.mean().clamp(max=self.cap)  # (,): no push once the class is that hard to model there
        grads = torch.autograd.grad(self.weight * value, params, materialize_grads=True)
        value = self.accelerator.reduce(value.detach(), reduction="mean").item()
        return {"adversary_fit": fit, "adversary_ascent": -value, "weighted": self.weight * value}, list(grads)

    def moved(self) -> float:
        """RMS of how far the slices moved from the retained labels' mean, over all of them together."""
        with torch.no_grad():
            return float(rms([s - f for s, f in zip(self.slices, self.first)]))

    def state(self) -> dict:
        """The slices and the Adam state as plain lists (saved in the SA checkpoint's meta)."""
        opt = self.opt.state_dict()
        moments = [{k: v.tolist() for k, v in opt["state"].get(i, {}).items()} for i in range(len(self.slices))]
        return {"slices": [s.detach().cpu().tolist() for s in self.slices], "adam": moments, "cap": self.cap}

    def load(self, state: dict | None) -> None:
        """Back to a saved ``state`` (None: keep the start)."""
        if not state:
            return
        with torch.no_grad():
            for s, v in zip(self.slices, state["slices"]):
                s.copy_(torch.tensor(v, dtype=s.dtype))
        opt = self.opt.state_dict()
        opt["state"] = {i: {k: torch.tensor(v) for k, v in m.items()} for i, m in enumerate(state["adam"]) if m}
        self.opt.load_state_dict(opt)
        self.cap = state["cap"]


def unlearn(ctx: Context) -> Outcome:
    cfg, s = ctx.cfg, ctx.cfg.sa
    adversary = ConditionAdversary(s.forget, steps=s.adversary_steps, lr=s.adversary_lr, weight=s.adversary_weight,
                                   margin=s.adversary_margin, batch=s.surrogate_batch, seed=cfg.sa_seed)
    model, history = selective_amnesia(ctx.original, ctx.fisher, ctx.accelerator, cfg, log_dir=ctx.log_dir,
                                       checkpointer=ctx.ckpt, extra_term=adversary)
    fits = [row["adversary_fit"] for row in history]
    info = {"steps": s.adversary_steps, "lr": s.adversary_lr, "weight": s.adversary_weight,
            "margin": s.adversary_margin, "cap": adversary.cap,
            "fit_first": fits[0] if fits else None, "fit_last": fits[-1] if fits else None,
            "moved_rms": adversary.moved()}
    return Outcome(model, history, info=info, sa_terms=True)
