"""Baseline training of a cVAE under Hugging Face Accelerate (DDP across processes, GPUs or nodes)."""
from __future__ import annotations

import math
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration
from tqdm.auto import tqdm

from .models import build_model, elbo
from .resume import Checkpointer, inject
from .utils import UsageError, UserError


class NonFiniteLoss(UserError):
    """A NaN or Inf loss: training stops, naming the step and the term."""


def make_accelerator(cpu: bool | None = None, mixed_precision: str = "no", project_dir: str | None = None):
    """One Accelerator per process. CPU unless CUDA is there; TensorBoard logs under ``project_dir``.
    ``$SA_DIST_TIMEOUT`` (seconds, default 1800): a collective waiting longer on a stuck process fails the job.
    A prepared loader's batch size is the global batch, split over the processes (``split_batches``), so a run
    takes the same steps per epoch on any number of processes."""
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu and mixed_precision == "fp16":  # Accelerate would silently run float32
        raise UsageError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    project_dir = str(project_dir or Path.cwd() / "runs")
    timeout = timedelta(seconds=float(os.environ.get("SA_DIST_TIMEOUT", 1800)))  # a stuck collective fails after it
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, log_with="tensorboard",
                       project_config=ProjectConfiguration(project_dir=project_dir, logging_dir=project_dir),
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, split_batches=True),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])


def start_tracking(accelerator: Accelerator, log_dir: str | Path, name: str, config: dict | None = None):
    """TensorBoard event files go to ``log_dir/name`` (main process only)."""
    accelerator.project_configuration.logging_dir = str(log_dir)
    accelerator.trackers = []
    accelerator.init_trackers(name, config=_flat(config) if config else None)


def stop_tracking(accelerator: Accelerator):
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def tb_writer(accelerator: Accelerator):
    """The SummaryWriter, or None off the main process / without tracking."""
    if not accelerator.is_main_process or not accelerator.trackers:
        return None
    return accelerator.get_tracker("tensorboard", unwrap=True)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def check_finite(value: float, step: int, term: str, ckpt: Checkpointer):
    """A NaN/Inf ``value`` stops the run, naming the step, the term and where ``ckpt`` kept the last good state."""
    if not math.isfinite(value):
        raise NonFiniteLoss(f"non-finite {term} ({value}) at step {step}; stopped, {ckpt.where_kept()}")


def wrap_model(accelerator: Accelerator, model: nn.Module, sync_bn: bool = True) -> nn.Module:
    """With ``sync_bn`` and several CUDA processes, batch norm becomes SyncBatchNorm (statistics over the global
    batch). PyTorch's SyncBatchNorm refuses CPU tensors; on CPU ranks ``train_vae`` averages the running
    statistics over ranks after every epoch instead (``average_buffers``)."""
    if sync_bn and accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


@torch.no_grad()
def average_buffers(accelerator: Accelerator, model: nn.Module) -> None:
    """Average batch-norm running statistics over processes, so every rank ends with the same state."""
    if accelerator.num_processes == 1:
        return
    for buf in accelerator.unwrap_model(model).buffers():
        if buf.is_floating_point():
            buf.copy_(accelerator.reduce(buf.clone(), reduction="mean"))


def plain_copy(model: nn.Module) -> nn.Module:
    """A fresh, unwrapped cVAE (plain BatchNorm, float32, eval mode) holding ``model``'s weights."""
    fresh = build_model(model.cfg)
    fresh.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    return fresh.eval()


@torch.no_grad()
def mean_nelbo(model: nn.Module, loader, accelerator: Accelerator, seed: int = 0) -> float:
    """Mean negative ELBO over a (prepared, possibly sharded) loader, all processes' samples counted once."""
    model.eval()
    gen = torch.Generator().manual_seed(seed + accelerator.process_index)
    total, count = 0.0, 0
    for x, c in loader:
        eps = torch.randn(x.shape[0], accelerator.unwrap_model(model).z_dim, generator=gen).to(x.device)
        nelbo = accelerator.gather_for_metrics(elbo(model, x, c, eps))
        total, count = total + nelbo.double().sum().item(), count + nelbo.numel()
    return total / max(count, 1)


def _log_grid(accelerator: Accelerator, model: nn.Module, tag: str, step: int):
    writer = tb_writer(accelerator)
    if writer is None:
        return
    from torchvision.utils import make_grid

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
            model.train()
            for x, c in batches:
                loss = elbo(model, x, c).mean()
                step += 1
                value = inject("baseline", step, accelerator.process_index, loss.item())  # one device sync
                check_finite(value, step, "baseline negative ELBO", ckpt)
                opt.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                opt.step()
                total += torch.tensor([value * len(x), len(x)], dtype=torch.float64)
                bar.set_postfix(nelbo=f"{value:.1f}", refresh=False)  # drawn by update at tqdm's rate
                bar.update(1)
                if step < epoch * per_epoch:  # the epoch's last step is saved below, after its evaluation
                    ckpt.after_step(step, lambda: {"history": history, "total": total.tolist()})
            _end_epoch(model, test_loader, accelerator, history, epoch, total, t0, sync_bn)
            ckpt.after_step(step, lambda: {"history": history, "total": [0.0, 0.0]})
    _resume(ckpt, step)  # a state saved after the last epoch
    if log_dir is not None:
        stop_tracking(accelerator)
    ckpt.finish()
    return plain_copy(accelerator.unwrap_model(model)), history


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
