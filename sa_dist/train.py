"""Baseline training of a cVAE on real MNIST under Hugging Face Accelerate (DDP across processes, GPUs or nodes)."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from .data import loaders
from .models import build_model, negative_elbo, plain_copy
from .resume import Checkpointer, inject
from .runtime import (average_buffers, check_finite, memory_guard, rank_noise, start_tracking, stop_tracking,
                      tb_writer, wrap_model)
from .utils import UsageError


@torch.no_grad()
def mean_nelbo(model: nn.Module, loader, accelerator: Accelerator, seed: int = 0) -> float:
    """Mean negative ELBO over a (prepared, possibly sharded) loader, all processes' samples counted once."""
    model.eval()
    gen = torch.Generator().manual_seed(seed + accelerator.process_index)
    total, count = 0.0, 0
    for x, c in loader:
        eps = torch.randn(x.shape[0], accelerator.unwrap_model(model).z_dim, generator=gen).to(x.device)
        nelbo = accelerator.gather_for_metrics(negative_elbo(model, x, c, eps))
        total, count = total + nelbo.double().sum().item(), count + nelbo.numel()
    return total / max(count, 1)


def _log_grid(accelerator: Accelerator, model: nn.Module, tag: str, step: int):
    writer = tb_writer(accelerator)
    if writer is None:
        return
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    labels = torch.arange(net.n_classes).repeat_interleave(10)
    imgs = net.sample(len(labels), labels, generator=torch.Generator().manual_seed(0)).cpu()  # (100, 1, 28, 28)
    writer.add_image(tag, make_grid(imgs, nrow=10, pad_value=1.0), step)
    net.train(was_training)


def train_vae(model: nn.Module, train_loader, test_loader, accelerator: Accelerator, epochs: int, lr: float,
              log_dir: str | Path | None = None, config: dict | None = None, sync_bn: bool = True,
              checkpointer=None):
    """Train a cVAE on the negative ELBO (batch mean); return ``(plain trained model, history)``.

    ``history`` has one dict per epoch: ``{"epoch", "train_nelbo", "test_nelbo", "seconds"}``.
    Only the main process logs (tqdm, TensorBoard under ``log_dir/baseline``). ``checkpointer``
    (``resume.Checkpointer``) saves a resumable state after every epoch and on SIGINT/SIGTERM, and resumes from one.
    ``sync_bn``: with several processes, SyncBatchNorm on CUDA, running statistics averaged over ranks every epoch
    on CPU (``wrap_model``); off, every rank normalises with its own batch share and keeps the main process's
    running statistics (DDP broadcasts them)."""
    n, batch = accelerator.num_processes, train_loader.batch_size
    if batch and batch % n:
        raise UsageError(f"--batch {batch} is the global batch, split over the processes: it must be a multiple "
                         f"of their number ({n})")
    ckpt = checkpointer or Checkpointer(accelerator, None, "baseline")
    model = wrap_model(accelerator, model, sync_bn)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model, opt, train_loader, test_loader = accelerator.prepare(model, opt, train_loader, test_loader)
    rank_noise(accelerator)  # after prepare: the loaders' shuffles keep the shared seed
    if log_dir is not None:
        start_tracking(accelerator, log_dir, "baseline", config)
    per_epoch = len(train_loader)
    meta = ckpt.load_meta() or {"step": 0, "history": [], "total": [0.0, 0.0]}
    history, step, ckpt.every = meta["history"], meta["step"], per_epoch
    bar = tqdm(total=epochs * per_epoch, initial=step, desc="baseline", disable=not accelerator.is_local_main_process)
    with ckpt.catching_signals(), bar:  # the bar ends its line also when a fault stops the loop
        for epoch in range(1, epochs + 1):
            t0, batches = time.perf_counter(), iter(train_loader)
            done = min(max(meta["step"] - (epoch - 1) * per_epoch, 0), per_epoch)  # batches done before a resume
            for _ in range(done):
                next(batches)  # replay the shuffle, nothing computed
            if len(history) >= epoch:  # finished before a resume
                for _ in batches:
                    pass
                continue
            total = torch.tensor(meta["total"] if done else [0.0, 0.0], dtype=torch.float64)
            _resume(ckpt, step)
            step = _epoch_steps(model, opt, batches, accelerator, step, epoch * per_epoch, total, bar, ckpt, history)
            _end_epoch(model, test_loader, accelerator, history, epoch, total, t0, sync_bn)
            ckpt.after_step(step, lambda: {"history": history, "total": [0.0, 0.0]})
    _resume(ckpt, step)  # a state saved after the last epoch
    if log_dir is not None:
        stop_tracking(accelerator)
    ckpt.finish()
    return plain_copy(accelerator.unwrap_model(model)), history


def _epoch_steps(model, opt, batches, accelerator, step: int, last: int, total: torch.Tensor, bar, ckpt,
                 history: list) -> int:
    """One epoch's optimizer steps on the negative ELBO (batch mean); ``total`` gains (sum, count); returns the step."""
    model.train()
    for x, c in batches:
        loss = negative_elbo(model, x, c).mean()
        step += 1
        value = inject("baseline", step, accelerator.process_index, loss.item())  # one device sync
        check_finite(value, step, "baseline negative ELBO", ckpt)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        total += torch.tensor([value * len(x), len(x)], dtype=torch.float64)
        bar.set_postfix(nelbo=f"{value:.1f}", refresh=False)  # drawn by update at tqdm's rate
        bar.update(1)
        if step < last:  # the epoch's last step is saved by the caller, after its evaluation
            ckpt.after_step(step, lambda: {"history": history, "total": total.tolist()})
    return step


def _resume(ckpt, step: int) -> None:
    """Load the saved state once, when the loop reaches the step it was saved at (loaders already replayed)."""
    if ckpt.meta is not None and step == ckpt.meta["step"] and not ckpt.meta.get("restored"):
        ckpt.restore()
        ckpt.meta["restored"] = True


def _end_epoch(model, test_loader, accelerator, history: list, epoch: int, total: torch.Tensor, t0: float,
               sync_bn: bool = True):
    """BN statistics evened out over processes (``sync_bn``), the epoch's train/test nELBO logged and appended."""
    if sync_bn:
        average_buffers(accelerator, model)
    total = accelerator.reduce(total.to(accelerator.device), reduction="sum").cpu()
    row = {"epoch": epoch, "train_nelbo": total[0].item() / total[1].item(),
           "test_nelbo": mean_nelbo(model, test_loader, accelerator), "seconds": time.perf_counter() - t0}
    history.append(row)
    accelerator.log({"baseline/train_nelbo": row["train_nelbo"], "baseline/test_nelbo": row["test_nelbo"],
                     "baseline/epoch_seconds": row["seconds"]}, step=epoch)
    _log_grid(accelerator, model, "baseline/samples", epoch)


def train_baseline(cfg, accelerator: Accelerator, log_dir: Path | None, exclude: tuple[int, ...] = (),
                   checkpointer=None) -> tuple:
    """Train theta* of the ``RunConfig`` ``cfg`` on real MNIST: ``(plain model, per-epoch history, seconds)``.
    ``exclude``: classes left out of the training and test data (``retrain``, exact unlearning).
    ``checkpointer``: a ``resume.Checkpointer`` (resumable state, resume)."""
    set_seed(cfg.train.seed)
    keep = [c for c in range(cfg.model.n_classes) if c not in exclude] if exclude else None
    tr, te = loaders(cfg.train.batch, cfg.train.seed, cfg.data_dir, cfg.train.limit, classes=keep)
    t0 = time.perf_counter()
    with memory_guard("building the model", "lower --z-dim or --width"):
        model = build_model(cfg.model).to(accelerator.device)
    with memory_guard("training the baseline", "lower --batch, --z-dim or --width"):
        model, history = train_vae(model, tr, te, accelerator, cfg.train.epochs, cfg.train.lr, log_dir=log_dir,
                                   config=asdict(cfg), checkpointer=checkpointer, sync_bn=cfg.sync_bn)
    return model, history, time.perf_counter() - t0
