"""Selective Amnesia (Heng & Soh, NeurIPS 2023, arXiv:2305.10120), eq. (4) of the paper:

    L(theta) = - E[c~c_f, x~q(x|c)] ELBO(x|theta,c)                 surrogate term
               - gamma * E[c~c_r, x~p(x|theta*,c)] ELBO(x|theta,c)  generative replay
               + lam * sum_i F_i (theta_i - theta*_i)^2              EWC

The model learns to produce the surrogate q(x|c_f) (default uniform noise) for the forgotten classes while replay
from a frozen copy of theta* and the Fisher-weighted EWC penalty keep the other classes. No real data is used.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .config import SA_LR, SAConfig
from .data import TensorBatches, batch_loader
from .models import CVAE, elbo
from .resume import Checkpointer, inject
from .train import check_finite, plain_copy, start_tracking, stop_tracking, wrap_model
from .utils import UsageError


def _labels(classes: list[int], n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.tensor(classes)[torch.randint(len(classes), (n,), generator=gen)]  # (n,)


def load_user_images(path: str | Path) -> torch.Tensor:
    """A user's surrogate images: an .npy of shape (N, 28, 28), (N, 1, 28, 28) or (N, 784), values in [0, 1]."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"--surrogate {path}: cannot read the .npy file ({e})") from None
    if arr.ndim < 2 or arr.shape[0] < 1 or int(np.prod(arr.shape[1:])) != 784:
        raise UsageError(f"--surrogate {path}: expected images of shape (N, 28, 28), (N, 1, 28, 28) or (N, 784), "
                         f"got {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise UsageError(f"--surrogate {path}: expected numbers in [0, 1], got dtype {arr.dtype}")
    x = torch.from_numpy(arr.astype(np.float32)).reshape(-1, 1, 28, 28)
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise UsageError(f"--surrogate {path}: pixel values must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
    return x


def surrogate_images(kind: str, n: int, gen: torch.Generator, model: CVAE | None = None,
                     forget: list[int] = ()) -> torch.Tensor:
    """``n`` images ``(n, 1, 28, 28)`` from q(x|c_f)."""
    if kind == "uniform":
        return torch.rand(n, 1, 28, 28, generator=gen)
    if kind == "blank":
        return torch.zeros(n, 1, 28, 28)
    if kind.startswith("class:"):
        k = kind.split(":", 1)[1]
        if not k.isdigit() or int(k) >= (model.n_classes if model else 10) or int(k) in forget:
            raise UsageError(f"--surrogate class:K needs a retained class K in 0-9, got {kind!r}")
        if model is None:
            raise ValueError("surrogate class:K needs the original model")
        return model.sample(n, int(k), generator=gen).cpu()
    if kind.endswith(".npy"):
        imgs = load_user_images(kind)
        return imgs[torch.randint(len(imgs), (n,), generator=gen)]
    raise UsageError(f"--surrogate must be uniform, blank, class:K or a path to an .npy file, got {kind!r}")


def surrogate_dataset(kind: str, n: int, forget: list[int] = (2,), model: CVAE | None = None,
                      seed: int = 0) -> TensorBatches:
    """(x, c) pairs of the surrogate q(x|c_f), labels uniform over the forgotten classes."""
    gen = torch.Generator().manual_seed(seed)
    c = _labels(list(forget), n, gen)
    return TensorBatches(surrogate_images(kind, n, gen, model, list(forget)), c)


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


def ewc_penalty(model: nn.Module, fisher: dict, theta_star: dict) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2, always in float32."""
    total = 0.0
    for name, p in model.named_parameters():
        total = total + (fisher[name] * (p.float() - theta_star[name]).pow(2)).sum()
    return total


@torch.no_grad()
def reset_label_inputs(model: CVAE, classes: list[int], seed: int = 0) -> CVAE:
    """A copy of ``model`` whose weights reading the one-hot inputs of ``classes`` (the encoder's and the decoder's
    first layer) are drawn afresh from PyTorch's default init, as in a model that never saw those labels. Nothing
    else changes, so the other labels' outputs are exactly the same."""
    gen = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    first = {"conv": ((out.enc[0], 1), (out.dec[0], out.z_dim)), "linear": ((out.enc[0], 784), (out.dec[0], out.z_dim))}
    for layer, offset in first[out.cfg.arch]:
        w = layer.weight  # Linear/Conv2d: (out, in, ...); ConvTranspose2d: (in, out, ...)
        bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(w)[0])
        for c in classes:
            view = w[offset + c] if isinstance(layer, nn.ConvTranspose2d) else w[:, offset + c]
            view.copy_((torch.rand(view.shape, generator=gen) * 2 - 1) * bound)
    return out


def _step_terms(model, xs, cs, xr, cr, fisher, theta_star, net, lam, gamma, alpha=1.0):
    surrogate = elbo(model, xs, cs).mean()  # -E_q ELBO on the forgotten classes
    replay = elbo(model, xr, cr).mean()  # -E_p(x|theta*) ELBO on the retained classes
    ewc = ewc_penalty(net, fisher, theta_star)
    return surrogate, replay, ewc, alpha * surrogate + gamma * replay + lam * ewc


def _steps(replay, surr, sa_epochs: int, ckpt):
    """(iterator of every step's (replay, surrogate) batches, history, steps done). On a resume the shuffles are
    replayed up to the saved step (nothing computed) and the saved state is loaded; a state is saved every SA epoch."""
    meta = ckpt.load_meta() or {"step": 0, "history": []}
    ckpt.every = len(replay)
    batches = ((r, q) for _ in range(sa_epochs) for r, q in zip(replay, surr))
    for _ in range(meta["step"]):
        next(batches)
    if meta["step"]:
        ckpt.restore()
    return batches, meta["history"], meta["step"]


def selective_amnesia(model: CVAE, fisher: dict, forget: list[int], accelerator, *, lam: float = SAConfig.lam,
                      gamma: float = SAConfig.gamma, sa_epochs: int = SAConfig.sa_epochs, lr: float | None = None,
                      batch: int = SAConfig.batch, n_replay: int = SAConfig.n_replay,
                      surrogate: str = SAConfig.surrogate, seed: int = 0, log_dir: str | Path | None = None,
                      config: dict | None = None, sync_bn: bool = True, alpha: float = 1.0,
                      surrogate_batch: int | None = SAConfig.surrogate_batch, checkpointer=None,
                      reset_label: bool = False):
    """Minimise the SA objective (module docstring) from theta* = ``model``; return (unlearned model, history).

    An SA epoch is one pass over the replay set of ``n_replay`` samples (default 15360 = 60 steps of 256), each
    step pairing a replay batch with a surrogate batch of ``surrogate_batch`` (None: ``batch``). Each process
    draws its own replay and surrogate share (n_replay / processes) with its own seed; gradients are averaged by
    DDP. Batch norm stays in eval mode (the running statistics of theta* on real data are kept), so the objective
    is the very function whose Fisher was taken, and a sample's loss does not depend on the rest of its batch. ``history`` holds floats per step.
    ``alpha`` weighs the surrogate term (1 in the paper; 0 leaves replay and EWC alone, an ablation).
    ``lr`` None takes the architecture's measured default (``config.SA_LR``). ``checkpointer``
    (``resume.Checkpointer``) saves a resumable state every SA epoch and on SIGINT/SIGTERM, and resumes from one.
    ``reset_label``: start from
    ``reset_label_inputs(model, forget, seed)`` (theta* too): fresh weights on the forgotten labels' inputs, which
    slows relearning from real images (README, "Verification")."""
    lr = SA_LR[model.cfg.arch] if lr is None else lr
    if reset_label:
        model = reset_label_inputs(model, forget, seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    frozen = plain_copy(model).to(accelerator.device).requires_grad_(False)  # p(x|theta*), never wrapped
    theta_star = {k: v.detach().float().clone() for k, v in frozen.named_parameters()}
    fisher = {k: v.to(accelerator.device, torch.float32) for k, v in fisher.items()}
    share, local_batch = math.ceil(n_replay / world), max(1, batch // world)
    local_sb = max(1, (surrogate_batch or batch) // world)
    replay = replay_dataset(frozen, forget, share, seed=seed * 7919 + 2 * rank)
    replay = batch_loader(*replay.tensors, batch=local_batch, shuffle=True, seed=seed + rank)
    surr = surrogate_dataset(surrogate, len(replay) * local_sb, forget, frozen, seed=seed * 7919 + 2 * rank + 1)
    surr = batch_loader(*surr.tensors, batch=local_sb, shuffle=True, seed=seed + rank + 10_000)  # one per replay batch
    net = wrap_model(accelerator, copy.deepcopy(frozen).requires_grad_(True), sync_bn)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net, opt = accelerator.prepare(net, opt)
    inner = accelerator.unwrap_model(net)
    if log_dir is not None:
        start_tracking(accelerator, log_dir, "sa", config)
    ckpt = checkpointer or Checkpointer(accelerator, None, "sa")
    batches, history, step = _steps(replay, surr, sa_epochs, ckpt)
    dev = accelerator.device
    bar = tqdm(total=sa_epochs * len(replay), initial=step, desc="selective amnesia",
               disable=not accelerator.is_local_main_process)
    net.eval()  # batch norm frozen: see docstring
    with ckpt.catching_signals(), bar:  # the bar ends its line also when a fault stops the loop
        for (xr, cr), (xs, cs) in batches:
            step += 1
            terms = _step_terms(net, xs.to(dev), cs.to(dev), xr.to(dev), cr.to(dev), fisher, theta_star, inner,
                                lam, gamma, alpha)
            row = {"step": step, **dict(zip(("surrogate_nelbo", "replay_nelbo", "ewc", "loss"),
                                            (t.item() for t in terms)))}
            row["surrogate_nelbo"] = inject("sa", step, rank, row["surrogate_nelbo"])
            for term in ("surrogate_nelbo", "replay_nelbo", "ewc", "loss"):
                check_finite(row[term], step, f"SA {term}", ckpt)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(terms[-1])
            opt.step()
            history.append(row)
            accelerator.log({f"sa/{k}": v for k, v in row.items() if k != "step"}, step=step)
            bar.set_postfix(surrogate=f"{row['surrogate_nelbo']:.1f}", replay=f"{row['replay_nelbo']:.1f}",
                            ewc=f"{row['ewc']:.3g}", refresh=False)  # drawn by update at tqdm's rate
            bar.update(1)
            ckpt.after_step(step, lambda: {"history": history})
    if log_dir is not None:
        stop_tracking(accelerator)
    ckpt.finish()
    return plain_copy(inner), history
