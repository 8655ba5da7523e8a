"""dampen: selective synaptic dampening (after Foster et al., SSD), then Selective Amnesia from the dampened point.

The weights that matter much more to the forgotten classes than to the retained ones are shrunk before SA starts:
with F_f the diagonal Fisher on samples the model generates for c_f and F_r the one on retained-class samples
(``fisher.class_fisher`` / ``retained_fisher``, ``n_forget_fisher`` samples each), a weight is selected when
F_f > ``dampen_alpha`` * F_r and multiplied by beta = min(1, F_r / F_f) (0 where F_r = 0); every other weight is
kept exactly. The cap at 1 is SSD's: with alpha < 1 a selected weight can have F_r / F_f up to 1 / alpha > 1, and
dampening must never amplify a weight. SA then starts at the dampened weights and its EWC term anchors there (θ*
stays the replay source), so the repair does not pull the dampened weights back. The two Fishers count in the
method's cost.

``dampen_mode`` ``reinit`` moves the selected weights away from θ* instead of shrinking them: the selected entries
of every weight matrix and kernel are drawn afresh from PyTorch's default init (uniform in ±1/sqrt(fan_in)), as in a
model that never learned them (biases and batch-norm scales are still shrunk).

``dampen_unit`` ``unit`` selects whole output units instead of single weights: a row of a weight matrix, an output
channel of a kernel (dim 1 of a transposed convolution's), by the Fisher summed over the unit's incoming weights, so
a feature that serves the forgotten classes goes as a whole, including its weights that alone would stay under the
threshold; one-dimensional parameters are still selected entry by entry.

``dampen_regulariser`` ``distance`` repairs with the ``distance`` method's third term instead of EWC: from the
dampened start, SA's surrogate and replay terms with -α·min(RMS(θ - θ*), cap) (``distance_alpha``,
``distance_target``), measured from θ*, so the repair keeps pushing every weight away from θ* where EWC would hold
the unselected ones at θ*'s values. λ and θ*'s Fisher are then unused (the Fisher is still computed and counted)."""
from __future__ import annotations

import torch
from torch import nn

from ..amnesia import selective_amnesia
from ..config import DAMPEN_MODES, DAMPEN_UNITS
from ..fisher import class_fisher, retained_fisher
from ..models import CVAE, default_init_draw, plain_copy
from . import Context, Outcome

USES = ("lam", "gamma", "dampen_alpha", "dampen_mode", "dampen_unit", "dampen_regulariser", "distance_alpha",
        "distance_target", "sam_rho")
NEEDS_FISHER = True
MARKER = "P"


def unit_axes(model: nn.Module) -> dict[str, int]:
    """The output-unit axis of every weight matrix and kernel, by parameter name: 0 for Linear and Conv2d
    ``(out, in, ...)``, 1 for ConvTranspose2d ``(in, out, ...)``."""
    return {f"{name}.weight": 1 if isinstance(m, nn.ConvTranspose2d) else 0 for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))}


def selection(ff: torch.Tensor, fr: torch.Tensor, alpha: float, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, beta) of one parameter: selected where ``ff > alpha * fr``, beta = min(1, fr / ff); with ``axis`` the
    two Fishers are first summed over each unit along it (the unit's incoming weights), so a unit goes whole."""
    if axis is not None:
        other = [d for d in range(ff.dim()) if d != axis]
        ff, fr = ff.sum(other, keepdim=True), fr.sum(other, keepdim=True)  # (1, out, 1, 1) or (out, 1, ...)
    mask = ff > alpha * fr
    beta = (fr / ff.clamp_min(torch.finfo(ff.dtype).tiny)).clamp(max=1.0)  # never amplify (alpha < 1)
    return mask, beta


@torch.no_grad()
def dampen(model: CVAE, f_forget: dict, f_retain: dict, alpha: float, mode: str = "shrink",
           seed: int = 0, unit: str = "weight") -> tuple[CVAE, dict]:
    """A copy of ``model`` with each parameter where ``f_forget > alpha * f_retain`` multiplied by
    ``min(1, f_retain / f_forget)`` (SSD's dampening, its lambda 1), or (``mode`` reinit, weights of 2 or more
    dimensions) drawn from U(±1/sqrt(fan_in)) with ``seed``; the rest unchanged. ``unit`` "unit": weights of 2 or
    more dimensions are selected by output unit (``selection``). Returns it and ``{"selected", "total",
    "per_tensor"}``."""
    if mode not in DAMPEN_MODES:
        raise ValueError(f"mode must be one of {', '.join(DAMPEN_MODES)}, got {mode!r}")
    if unit not in DAMPEN_UNITS:
        raise ValueError(f"unit must be one of {', '.join(DAMPEN_UNITS)}, got {unit!r}")
    out = plain_copy(model)
    axes = unit_axes(out) if unit == "unit" else {}
    gen = torch.Generator().manual_seed(seed)
    selected, total, per = 0, 0, {}
    for name, p in out.named_parameters():
        mask, beta = selection(f_forget[name].to(p), f_retain[name].to(p), alpha, axes.get(name))
        mask, beta = mask.expand_as(p), beta.expand_as(p)
        if mode == "reinit" and p.dim() >= 2:
            fresh = default_init_draw(p, p.shape, gen, torch.float64).to(p)
            p.copy_(torch.where(mask, fresh, p))
        else:
            p.mul_(torch.where(mask, beta, torch.ones_like(p)))
        n = int(mask.sum())
        selected, total = selected + n, total + p.numel()
        if n:
            per[name] = n
    return out, {"selected": selected, "total": total, "per_tensor": per}


def unlearn(ctx: Context) -> Outcome:
    cfg, acc, s = ctx.cfg, ctx.accelerator, ctx.cfg.sa
    model = ctx.original.to(acc.device)
    kw = dict(n_samples=s.n_forget_fisher, seed=cfg.sa_seed, batch=s.fisher_batch, accelerator=acc)
    f_f = class_fisher(model, s.forget, **kw)
    f_r = retained_fisher(model, s.forget, **kw)
    damped, info = dampen(model, f_f, f_r, s.dampen_alpha, s.dampen_mode, seed=cfg.sa_seed,
                          unit=s.dampen_unit)
    push = s.dampen_regulariser == "distance"  # away from θ* (the anchor's default); EWC: held at the damped point
    out, history = selective_amnesia(ctx.original, None if push else ctx.fisher, acc, cfg, log_dir=ctx.log_dir,
                                     checkpointer=ctx.ckpt, start=damped, anchor=None if push else damped,
                                     regulariser=s.dampen_regulariser)
    info = {"alpha": s.dampen_alpha, "mode": s.dampen_mode, "unit": s.dampen_unit,
            "regulariser": s.dampen_regulariser, "selected": info["selected"],
            "total": info["total"], "selected_share": info["selected"] / info["total"], "per_tensor": info["per_tensor"],
            "n_forget_fisher": s.n_forget_fisher}
    return Outcome(out, history, info=info, sa_terms=True)
