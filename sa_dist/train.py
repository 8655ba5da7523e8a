"""Baseline training of a cVAE under Hugging Face Accelerate (DDP across processes, GPUs or nodes)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from tqdm.auto import tqdm

from .models import build_model, elbo
from .utils import UsageError, UserError


class NonFiniteLoss(UserError):
    """A NaN or Inf loss: training stops, naming the step and the term."""


def make_accelerator(cpu: bool | None = None, mixed_precision: str = "no", project_dir: str | None = None):
    """One Accelerator per process. CPU unless CUDA is there; TensorBoard logs under ``project_dir``.
    A prepared loader's batch size is the global batch, split over the processes (``split_batches``), so a run
    takes the same steps per epoch on any number of processes."""
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu and mixed_precision == "fp16":  # Accelerate would silently run float32
        raise UsageError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    project_dir = str(project_dir or Path.cwd() / "runs")
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, log_with="tensorboard",
                       project_config=ProjectConfiguration(project_dir=project_dir, logging_dir=project_dir),
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, split_batches=True))


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


def check_finite(value: float, step: int, term: str):
    if not math.isfinite(value):
        raise NonFiniteLoss(f"non-finite {term} ({value}) at step {step}; stopped, the last good checkpoint is kept")


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
              log_dir: str | Path | None = None, config: dict | None = None, sync_bn: bool = True):
    """Train a cVAE on the negative ELBO (batch mean); return ``(plain trained model, history)``.

    ``history`` has one dict per epoch: ``{"epoch", "train_nelbo", "test_nelbo", "seconds"}``.
    Only the main process logs (tqdm, TensorBoard under ``log_dir/baseline``). ``sync_bn``: with several
    processes, SyncBatchNorm on CUDA, running statistics averaged over ranks every epoch on CPU (``wrap_model``);
    off, every rank normalises with its own batch share and keeps the main process's running statistics (DDP
    broadcasts them)."""
    n, batch = accelerator.num_processes, train_loader.batch_size
    if batch and batch % n:
        raise UsageError(f"--batch {batch} is the global batch, split over the processes: it must be a multiple "
                         f"of their number ({n})")
    model = wrap_model(accelerator, model, sync_bn)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model, opt, train_loader, test_loader = accelerator.prepare(model, opt, train_loader, test_loader)
    if log_dir is not None:
        start_tracking(accelerator, log_dir, "baseline", config)
    bar = tqdm(total=epochs * len(train_loader), desc="baseline", disable=not accelerator.is_local_main_process)
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        t0, total = time.perf_counter(), torch.zeros(2, dtype=torch.float64)
        model.train()
        for x, c in train_loader:
            loss = elbo(model, x, c).mean()
            step += 1
            check_finite(loss.item(), step, "baseline negative ELBO")
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            total += torch.tensor([loss.item() * len(x), len(x)], dtype=torch.float64)
            bar.update(1)
            bar.set_postfix(nelbo=f"{loss.item():.1f}")
        if sync_bn:
            average_buffers(accelerator, model)
        total = accelerator.reduce(total.to(accelerator.device), reduction="sum").cpu()
        row = {"epoch": epoch, "train_nelbo": total[0].item() / total[1].item(),
               "test_nelbo": mean_nelbo(model, test_loader, accelerator), "seconds": time.perf_counter() - t0}
        history.append(row)
        accelerator.log({"baseline/train_nelbo": row["train_nelbo"], "baseline/test_nelbo": row["test_nelbo"],
                         "baseline/epoch_seconds": row["seconds"]}, step=epoch)
        _log_grid(accelerator, model, "baseline/samples", epoch)
    bar.close()
    if log_dir is not None:
        stop_tracking(accelerator)
    return plain_copy(accelerator.unwrap_model(model)), history
