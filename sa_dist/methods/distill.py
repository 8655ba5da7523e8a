"""distill: Selective Amnesia, then distillation of the SA model into a shrink-perturbed copy of itself (after
UNDO, "Distillation Robustifies Unlearning", arXiv:2506.06278).

Teacher: the SA model, from θ* with the Fisher exactly as ``--method sa``. Student: ``shrink_perturb`` of the
teacher, θ <- (1 - α)θ + α·β·ξ with ξ a fresh default initialisation of the same architecture drawn from the
unlearning seed, biases only shrunk (b <- (1 - α)b); α = 1 (β = 1) is a fresh model. The student sees no real data
and no EWC: it learns the teacher's own generations for all classes, decoder means for z ~ N(0, I) under every
label (the forgotten labels thus carry the teacher's surrogate-like output), by its negative ELBO on them (encoder
and decoder), plus ``distill_match`` times the BCE between its decoder and the teacher's at the same z.

It stops once the student's retained quality meets the bar, measured without real data: its mean negative ELBO
on a held-out set of teacher samples of the retained labels (fixed z, labels and noise) within ``distill_bar``
(2%) of the teacher's own, checked every ``distill_every`` steps; else after ``distill_steps``. Each process draws
its own share of every batch (``distill_batch`` / processes, its own generator); DDP averages the gradients. The
student trains with batch norm in training mode, as a model trained from scratch (α = 1) must; its running
statistics are averaged over processes before each check. The SA phase resumes with ``--resume``, the
distillation starts over."""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..amnesia import selective_amnesia
from ..models import CVAE, build_model, negative_elbo, plain_copy
from ..resume import Checkpointer
from ..runtime import average_buffers, check_finite, rank_noise, start_tracking, stop_tracking, wrap_model
from . import Context, Outcome

USES = ("lam", "gamma", "distill_alpha", "distill_beta", "distill_match")
NEEDS_FISHER = True
MARKER = "p"


@torch.no_grad()
def shrink_perturb(model: CVAE, alpha: float, beta: float, seed: int) -> CVAE:
    """A copy of ``model`` with every weight theta <- (1 - alpha) theta + alpha * beta * xi and every bias
    b <- (1 - alpha) b (UNDO's shrink-perturb, arXiv:2506.06278), xi a fresh default initialisation of the same
    architecture drawn from ``seed``. Floating buffers (batch-norm running statistics) move the same way to the
    fresh model's, without beta. alpha 0: ``model`` exactly; alpha 1, beta 1: the fresh model."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        fresh = build_model(model.cfg).state_dict()
    out = plain_copy(model)
    for name, p in out.named_parameters():
        target = torch.zeros_like(p) if name.endswith("bias") else beta * fresh[name]
        p.mul_(1 - alpha).add_(alpha * target)
    for name, b in out.named_buffers():
        if b.is_floating_point():
            b.mul_(1 - alpha).add_(alpha * fresh[name])
    return out


@torch.no_grad()
def teacher_batch(teacher: CVAE, n: int, classes: list[int], gen: torch.Generator, device):
    """``n`` of the teacher's generations: z ~ N(0, I) ``(n, z)``, labels uniform over ``classes`` ``(n,)`` and
    the decoder means x = sigmoid(decode(z, c)) ``(n, 1, 28, 28)``, all on ``device``."""
    z = torch.randn(n, teacher.z_dim, generator=gen)  # (n, z)
    c = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=gen)]  # (n,)
    z, c = z.to(device), c.to(device)
    return z, c, torch.sigmoid(teacher.decode(z, c)).float()


class Student(nn.Module):
    """The student behind one forward, so DDP sees every parameter it trains: per-sample negative ELBO ``(B,)`` of
    the teacher's images, and with ``match`` the BCE ``(B,)`` of its decoder at the teacher's z against the
    teacher's means (summed over the 784 pixels, as the ELBO's reconstruction term)."""

    def __init__(self, model: CVAE, match: bool):
        super().__init__()
        self.model, self.match = model, match

    def forward(self, x, c, z):
        nelbo = negative_elbo(self.model, x, c)  # (B,)
        if not self.match:
            return nelbo, None
        logits = self.model.decode(z, c).float()  # (B, 1, 28, 28)
        return nelbo, F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)  # (B,)


@torch.no_grad()
def holdout_nelbo(model: CVAE, held: tuple, chunk: int) -> float:
    """Mean negative ELBO of ``model`` (eval mode) on the held-out ``(x, c, eps)``, in chunks of ``chunk``."""
    was_training = model.training
    model.eval()
    x, c, eps = held
    total = sum(negative_elbo(model, x[i:i + chunk], c[i:i + chunk], eps[i:i + chunk]).sum().item()
                for i in range(0, len(x), chunk))
    model.train(was_training)
    return total / len(x)


def _holdout(teacher: CVAE, forget: list[int], n: int, seed: int, device) -> tuple:
    """The bar's held-out set, the same on every process: teacher samples of the retained labels and their
    reparameterisation noise ``(n, z)``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    keep = [k for k in range(teacher.n_classes) if k not in forget]
    _, c, x = teacher_batch(teacher, n, keep, gen, device)
    return x, c, torch.randn(n, teacher.z_dim, generator=gen).to(device)


def _check(acc, net, held: tuple, chunk: int) -> float:
    """The student's held-out nELBO, the same number on every process (batch-norm statistics averaged first)."""
    average_buffers(acc, net)
    value = holdout_nelbo(acc.unwrap_model(net).model, held, chunk)
    return acc.reduce(torch.tensor(value, device=acc.device), reduction="mean").item()


def distill(teacher: CVAE, cfg, acc, log_dir=None) -> tuple[CVAE, list, dict]:
    """Train the shrink-perturbed student on the teacher's generations (module docstring); returns the student
    (plain, eval mode), its per-step rows and what happened (steps, the bar, the held-out nELBOs)."""
    s, seed = cfg.sa, cfg.sa_seed
    teacher = plain_copy(teacher).to(acc.device).requires_grad_(False)
    held = _holdout(teacher, s.forget, s.distill_holdout, seed, acc.device)
    teacher_nelbo = holdout_nelbo(teacher, held, s.distill_batch)
    student = shrink_perturb(teacher, s.distill_alpha, s.distill_beta, seed)
    net = wrap_model(acc, Student(student, s.distill_match > 0).requires_grad_(True), cfg.sync_bn)
    opt = torch.optim.Adam(net.parameters(), lr=s.distill_lr)
    net, opt = acc.prepare(net, opt)
    rank_noise(acc, seed)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 104_729 * (acc.process_index + 1))  # this process's share
    local = max(2, s.distill_batch // acc.num_processes)  # batch norm in training mode needs 2 samples
    if log_dir is not None:
        start_tracking(acc, log_dir, "distill")
    history, checks = _loop(net, opt, acc, teacher, gen, local, held, (1 + s.distill_bar) * teacher_nelbo, s)
    if log_dir is not None:
        stop_tracking(acc)
    last = checks[-1]["student_nelbo"]  # the last step is always checked
    info = {"steps": len(history), "max_steps": s.distill_steps, "teacher_holdout_nelbo": teacher_nelbo,
            "student_holdout_nelbo": last, "stopped_on_bar": last <= (1 + s.distill_bar) * teacher_nelbo,
            "checks": checks}
    return plain_copy(acc.unwrap_model(net).model), history, info


def _loop(net, opt, acc, teacher: CVAE, gen, local: int, held: tuple, bar: float, s) -> tuple[list, list]:
    """The student's steps until its held-out nELBO is at most ``bar`` (checked every ``distill_every`` steps and
    at the last) or ``distill_steps`` are done; returns the per-step rows and the checks."""
    ckpt, history, checks = Checkpointer(acc, None, "distill"), [], []
    every_label = list(range(teacher.n_classes))
    net.train()
    for step in range(1, s.distill_steps + 1):
        z, c, x = teacher_batch(teacher, local, every_label, gen, acc.device)
        nelbo, match = net(x, c, z)
        terms = {"nelbo": nelbo.mean(), **({"match": match.mean()} if match is not None else {})}
        loss = terms["nelbo"] + s.distill_match * terms.get("match", 0.0)
        row = {"step": step, **dict(zip([*terms, "loss"], torch.stack([*terms.values(), loss]).tolist()))}
        check_finite(row["loss"], step, "distillation loss", ckpt)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        history.append(row)
        acc.log({f"distill/{k}": v for k, v in row.items() if k != "step"}, step=step)
        if step % s.distill_every == 0 or step == s.distill_steps:
            checks.append({"step": step, "student_nelbo": _check(acc, net, held, s.distill_batch)})
            acc.log({"distill/holdout_nelbo": checks[-1]["student_nelbo"]}, step=step)
            if checks[-1]["student_nelbo"] <= bar:
                break
    return history, checks


def unlearn(ctx: Context) -> Outcome:
    cfg, acc, s = ctx.cfg, ctx.accelerator, ctx.cfg.sa
    t0 = time.perf_counter()
    teacher, sa_history = selective_amnesia(ctx.original, ctx.fisher, acc, cfg, log_dir=ctx.log_dir,
                                            checkpointer=ctx.ckpt)
    t1 = time.perf_counter()
    student, history, info = distill(teacher, cfg, acc, ctx.log_dir)
    info = {"alpha": s.distill_alpha, "beta": s.distill_beta, "match": s.distill_match, "lr": s.distill_lr,
            "bar": s.distill_bar, **info, "sa_last": sa_history[-1] if sa_history else None,
            "seconds": {"sa": t1 - t0, "distill": time.perf_counter() - t1}}
    return Outcome(student, history, info=info)
