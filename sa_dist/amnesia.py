"""Selective Amnesia, the training loop: minimise the SA objective (``objective.sa_objective``: surrogate, replay
and a regulariser, EWC by default) from theta* under Accelerate.

The data of both expectations is generated, never real: the surrogate dataset samples q(x|c_f) for the forgotten
labels, the replay dataset samples a frozen copy of theta* for the retained ones. Each process draws its own share
of both (n_replay / processes, its own seed) and its own reparameterisation noise (``runtime.rank_noise``); DDP
averages the gradients.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .config import REGULARISERS, RunConfig, validate
from .data import TensorBatches, batch_loader
from .models import CVAE, default_init_draw, negative_elbo, plain_copy
from .objective import Regulariser, ewc, injected, regularised_objective, rms, sam_epsilon, weight_distance
from .resume import Checkpointer, inject
from .runtime import check_device, check_finite, rank_noise, start_tracking, stop_tracking, wrap_model
from .surrogate import get_surrogate

TERMS = ("surrogate_nelbo", "replay_nelbo", "ewc", "loss")  # a history row's floats, as SATerms' fields (SA's)


def _labels(classes: list[int], n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.tensor(classes)[torch.randint(len(classes), (n,), generator=gen)]  # (n,)


def surrogate_dataset(kind: str, n: int, forget: list[int] = (2,), model: CVAE | None = None,
                      seed: int = 0) -> TensorBatches:
    """(x, c) pairs of the surrogate q(x|c_f) named ``kind``, labels uniform over the forgotten classes."""
    gen = torch.Generator().manual_seed(seed)
    c = _labels(list(forget), n, gen)
    return TensorBatches(get_surrogate(kind, forget, model.n_classes if model else 10).sample(n, gen, model), c)


@torch.no_grad()
def replay_dataset(model: CVAE, forget: list[int], n: int, seed: int = 0, batch: int = 1000) -> TensorBatches:
    """(x, c) pairs from p(x|theta*, c_r): decoder means of the frozen original for the retained classes."""
    gen = torch.Generator().manual_seed(seed)
    keep = [c for c in range(model.n_classes) if c not in forget]
    c = _labels(keep, n, gen)
    model.eval()
    x = torch.cat([model.sample(len(c[i:i + batch]), c[i:i + batch], generator=gen).cpu()
                   for i in range(0, n, batch)])
    return TensorBatches(x, c)


@torch.no_grad()
def reset_label_inputs(model: CVAE, classes: list[int], seed: int = 0) -> CVAE:
    """A copy of ``model`` whose weights reading the one-hot inputs of ``classes`` (the encoder's and the decoder's
    first layer) are drawn afresh from PyTorch's default init, as in a model that never saw those labels. Nothing
    else changes, so the other labels' outputs are exactly the same."""
    gen = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    for w, dim, start in out.label_inputs():  # the encoder's and the decoder's first layer
        for c in classes:
            view = w.narrow(dim, start + c, 1)
            view.copy_(default_init_draw(w, view.shape, gen))
    return out


def _data(frozen: CVAE, cfg: RunConfig, rank: int, world: int):
    """This process's replay and surrogate loaders: one surrogate batch per replay batch."""
    s, seed = cfg.sa, cfg.sa_seed
    share, local_batch = math.ceil(s.n_replay / world), max(1, s.batch // world)
    local_sb = max(1, s.surrogate_batch // world)
    replay = replay_dataset(frozen, s.forget, share, seed=seed * 7919 + 2 * rank)
    replay = batch_loader(*replay.tensors, batch=local_batch, shuffle=True, seed=seed + rank)
    surr = surrogate_dataset(s.surrogate, len(replay) * local_sb, s.forget, frozen, seed=seed * 7919 + 2 * rank + 1)
    surr = batch_loader(*surr.tensors, batch=local_sb, shuffle=True, seed=seed + rank + 10_000)
    return replay, surr


def _steps(replay, surr, sa_epochs: int, ckpt):
    """(iterator of every step's (replay, surrogate) batches, history, steps done, the saved meta). On a resume the
    shuffles are replayed up to the saved step (nothing computed) and the saved state is loaded; a state is saved
    every SA epoch."""
    meta = ckpt.load_meta() or {"step": 0, "history": []}
    ckpt.every = len(replay)
    batches = ((r, q) for _ in range(sa_epochs) for r, q in zip(replay, surr))
    for _ in range(meta["step"]):
        next(batches)
    if meta["step"]:
        ckpt.restore()
    return batches, meta["history"], meta["step"], meta


def _regulariser(kind: str, s, fisher: dict | None, names: list[str], theta_star: list, device) -> Regulariser:
    """The objective's third term: ``ewc``, lam * EWC with the Fisher at the anchor; ``distance``, alpha times
    ``objective.distance_term`` from the anchor with its cap ``distance_target`` * RMS(anchor) (no Fisher)."""
    if kind not in REGULARISERS:
        raise ValueError(f"regulariser must be one of {', '.join(REGULARISERS)}, got {kind!r}")
    if kind == "distance":
        return weight_distance(theta_star, s.distance_alpha, s.distance_target * float(rms(theta_star)))
    return ewc([fisher[name].to(device, torch.float32) for name in names], theta_star, s.lam)


def selective_amnesia(model: CVAE, fisher: dict | None, accelerator, cfg: RunConfig, *,
                      log_dir: str | Path | None = None, checkpointer: Checkpointer | None = None,
                      surrogate_weight: float = 1.0, start: CVAE | None = None, anchor: CVAE | None = None,
                      regulariser: str = "ewc", extra_term=None):
    """Minimise the SA objective from theta* = ``model`` with the settings of ``cfg`` (``cfg.sa``: forget, lam,
    gamma, lr, batches, surrogate; the seed ``cfg.sa_seed``); return (unlearned plain model, history of float rows).

    An SA epoch is one pass over the replay set of ``n_replay`` samples, each step pairing a replay batch with a
    surrogate batch. Batch norm stays in eval mode (theta*'s running statistics on real data are kept), so the
    objective is the very function whose Fisher was taken, and a sample's loss does not depend on its batch.
    ``cfg.sa.reset_label``: ``reset_label_inputs`` on theta*, ``start`` and ``anchor`` alike (one draw: they share
    the fresh weights, which EWC then anchors). ``checkpointer`` saves a resumable
    state every SA epoch and on SIGINT/SIGTERM, and resumes from one. ``surrogate_weight`` 0: replay_only.
    ``start``: begin the optimisation from these weights instead of theta*; ``anchor``: the point the EWC term
    pulls towards instead of theta* (the deeper methods: a dampened or noised copy). Replay always samples
    ``model``. ``regulariser``: the third term, ``ewc`` (the paper) or ``distance`` (the weight-distance push
    away from the anchor, ``objective.distance_term``; ``fisher`` may then be None). ``extra_term``: a fourth term
    computed outside the model's forward (the ``adversary`` method's ``ConditionAdversary``): an object with
    ``start(frozen, accelerator, steps_per_epoch)``, ``term(model, step) -> (row floats, gradients)``, ``state()`` and
    ``load(state)``; its gradients join the step's backward and its state is saved and resumed with the loop's."""
    cfg = validate(cfg)
    s, seed = cfg.sa, cfg.sa_seed
    set_seed(seed)
    if s.reset_label:  # a method's start and anchor too: without it a dampened or noised start kept its old columns
        model, start, anchor = (m if m is None else reset_label_inputs(m, s.forget, seed) for m in (model, start, anchor))
    frozen = plain_copy(model).to(accelerator.device).requires_grad_(False)  # p(x|theta*), never wrapped
    names = [name for name, _ in frozen.named_parameters()]
    anchor = frozen if anchor is None else plain_copy(anchor).to(accelerator.device)
    theta_star = [p.detach().float().clone() for p in anchor.parameters()]
    reg = _regulariser(regulariser, s, fisher, names, theta_star, accelerator.device)
    replay, surr = _data(frozen, cfg, accelerator.process_index, accelerator.num_processes)
    first = frozen if start is None else plain_copy(start).to(accelerator.device)
    net = wrap_model(accelerator, copy.deepcopy(first).requires_grad_(True), cfg.sync_bn)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    net, opt = accelerator.prepare(net, opt)
    rank_noise(accelerator, seed)
    check_device(accelerator, net, *theta_star, what="a tensor of the SA loss")
    if log_dir is not None:
        start_tracking(accelerator, log_dir, "sa", asdict(cfg))
    ckpt = checkpointer or Checkpointer(accelerator, None, "sa")
    batches, history, step, meta = _steps(replay, surr, s.sa_epochs, ckpt)
    if extra_term is not None:
        extra_term.start(frozen, accelerator, len(replay))
        extra_term.load(meta.get("extra_term"))
    objective = dict(regulariser=reg, gamma=s.gamma, surrogate_weight=surrogate_weight)
    _loop(net, opt, accelerator, batches, history, step, ckpt, objective, s.sa_epochs * len(replay), s.sam_rho,
          extra_term)
    if log_dir is not None:
        stop_tracking(accelerator)
    ckpt.finish()
    return plain_copy(accelerator.unwrap_model(net)), history


def sam_surrogate(net, accelerator, surrogate: tuple[torch.Tensor, torch.Tensor], rho: float,
                  weight: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """SAM on the surrogate term (arXiv:2502.05374, after Foret et al. 2021): (the term -E_q ELBO at theta, the
    gradient of weight * -E_q ELBO at theta + epsilon), epsilon = ``sam_epsilon`` of the term's gradient at theta.
    That gradient is averaged over processes first, so every process climbs the same way; the weights are restored
    exactly. SA then descends the worst surrogate loss within rho of theta: a flat forgetting, harder to undo."""
    plain = accelerator.unwrap_model(net)
    params = list(plain.parameters())
    s = negative_elbo(plain, *surrogate).mean()  # (,)
    grads = torch.autograd.grad(s, params)
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")  # (N,)
    eps = sam_epsilon(list(flat.split([g.numel() for g in grads])), rho)
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e.view_as(p))
    adv = torch.autograd.grad(weight * negative_elbo(plain, *surrogate).mean(), params)
    with torch.no_grad():
        for p, v in zip(params, saved):
            p.copy_(v)
    return s.detach(), list(adv)


def _loop(net, opt, accelerator, batches, history: list, step: int, ckpt, objective: dict, total: int,
          sam_rho: float = 0.0, extra_term=None) -> None:
    """The SA steps: objective, a finite check of every term, the update, a float row per step (the third term
    under its regulariser's name). ``sam_rho`` > 0: the surrogate term's gradient is taken at SAM's ascent point
    (``sam_surrogate``), the other terms' at theta. ``extra_term`` (see ``selective_amnesia``): its gradient is
    added to the step's, its floats to the row (its weighted value into ``loss``)."""
    dev, rank = accelerator.device, accelerator.process_index
    names = (*TERMS[:2], objective["regulariser"].name, TERMS[3])
    bar = tqdm(total=total, initial=step, desc="selective amnesia", disable=not accelerator.is_local_main_process)
    net.eval()  # batch norm frozen: see selective_amnesia
    with ckpt.catching_signals(), bar:  # the bar ends its line also when a fault stops the loop
        for (xr, cr), (xs, cs) in batches:
            step += 1
            surrogate, extra = (xs.to(dev), cs.to(dev)), 0.0
            if sam_rho > 0:
                surrogate, adv = sam_surrogate(net, accelerator, surrogate, sam_rho, objective["surrogate_weight"])
                extra = injected(accelerator.unwrap_model(net).parameters(), adv)
            more = {}
            if extra_term is not None:
                plain = accelerator.unwrap_model(net)
                more, grads = extra_term.term(plain, step)
                extra = extra + injected(plain.parameters(), grads)
            terms = regularised_objective(net, surrogate, (xr.to(dev), cr.to(dev)), **objective)
            row = {"step": step, **dict(zip(names, (t.item() for t in terms)))}
            row["loss"] += more.pop("weighted", 0.0)
            row.update(more)
            row["surrogate_nelbo"] = inject("sa", step, rank, row["surrogate_nelbo"])
            for term in (*names, *more):
                check_finite(row[term], step, f"SA {term}", ckpt)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(terms.total + extra)
            opt.step()
            history.append(row)
            accelerator.log({f"sa/{k}": v for k, v in row.items() if k != "step"}, step=step)
            bar.set_postfix(surrogate=f"{row['surrogate_nelbo']:.1f}", replay=f"{row['replay_nelbo']:.1f}",
                            **{names[2]: f"{row[names[2]]:.3g}"}, **{k: f"{v:.1f}" for k, v in more.items()},
                            refresh=False)  # drawn at tqdm's rate
            bar.update(1)
            ckpt.after_step(step, lambda: {"history": history,
                                           **({"extra_term": extra_term.state()} if extra_term is not None else {})})
