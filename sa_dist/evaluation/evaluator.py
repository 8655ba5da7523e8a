"""The evaluator: a small CNN classifier of MNIST digits that scores every generated sample.

Trained once on the real training set (>= 99.0% test accuracy) and cached, keyed by the data checksum, the seed
and this file's format version; every later metric uses the same network."""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_tensors, save_tensors
from ..data import batch_loader, data_checksum, load_mnist
from ..utils import cache_root, stable_hash

EVALUATOR_VERSION = 1


class Classifier(nn.Module):
    """conv5(16) -> pool -> conv5(32) -> pool -> fc(128) -> fc(10); batch norm, dropout. ~15 s/epoch on 2 cores."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 14, 14)
            nn.Conv2d(16, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 7, 7)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 49, 128), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(128, n_classes))

    def forward(self, x):
        return self.head(self.features(x))  # (B, n_classes) logits


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (MNIST borders are black, so rolling is a shift)."""
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    net.eval()
    hits = sum((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return hits / len(x)


def train_evaluator(data_dir: str | None = None, seed: int = 0, epochs: int = 3, limit: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Adam, 3 epochs, random shifts; returns the network (eval mode) and ``{"test_acc", "seconds"}``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = load_mnist(True, data_dir, limit)
    net = Classifier().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    loader = batch_loader(x, y, batch=128, shuffle=True, seed=seed)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * len(loader))
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for xb, yb in loader:
            loss = F.cross_entropy(net(_shift(xb, gen).to(device)), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    xt, yt = load_mnist(False, data_dir, limit)
    info = {"test_acc": accuracy(net, xt.to(device), yt.to(device)), "seconds": time.perf_counter() - t0}
    return net.eval(), info


def evaluator_path(seed: int = 0, limit: int | None = None):
    key = stable_hash({"data": data_checksum(), "seed": seed, "limit": limit, "version": EVALUATOR_VERSION})
    return cache_root() / "evaluator" / f"evaluator-{key}.safetensors"


def get_evaluator(accelerator=None, data_dir: str | None = None, seed: int = 0, limit: int | None = None,
                  device="cpu") -> tuple[Classifier, dict]:
    """The cached evaluator, trained (by the main process alone) the first time."""
    path = evaluator_path(seed, limit)
    is_main = accelerator is None or accelerator.is_main_process
    if is_main and not path.is_file():
        net, info = train_evaluator(data_dir, seed, limit=limit)
        save_tensors(path, net.state_dict(), {"kind": "evaluator", **info})
    if accelerator is not None:
        accelerator.wait_for_everyone()
    tensors, meta = load_tensors(path, what="evaluator cache")
    net = Classifier()
    net.load_state_dict(tensors)
    return net.to(device).eval(), {"test_acc": float(meta["test_acc"]), "seconds": float(meta["seconds"])}


@torch.no_grad()
def score(net: nn.Module, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Class probabilities ``(N, 10)`` for images ``(N, 1, 28, 28)`` in [0, 1]."""
    dev = next(net.parameters()).device
    return torch.cat([F.softmax(net(images[i:i + batch].to(dev).float()), 1).cpu()
                      for i in range(0, len(images), batch)])


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Classifier entropy in nats, per image ``(N,)``."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)
