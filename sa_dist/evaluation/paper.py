"""The paper's protocol (``--protocol paper``): the official Selective Amnesia code's evaluation of a VAE,
re-implemented from its description so that our numbers can sit beside the paper's and its README's.

What the official code does (clear-nus/selective-amnesia, vae/): a small classifier, conv5(10) -> batch norm ->
max-pool -> ReLU -> conv5(20) -> batch norm -> 2-D dropout -> max-pool -> ReLU -> fc(50) -> ReLU -> dropout ->
fc(10) -> log-softmax, trained on the plain MNIST training images in [0, 1] (no augmentation) with Adam at 1e-4,
batch 64, 20 epochs, the learning rate divided by 10 every 5 epochs, NLL loss. The VAE draws 1,000 samples of the
forgotten class (decoder means for z ~ N(0, I)), saved as 8-bit PNG files and read back; the classifier's mean
entropy (nats) and mean probability of the forgotten class over them are the two numbers. Its README's example for
digit 0: entropy 2.19, P(y=0) 0.058 (``OFFICIAL_EXAMPLE``).

Here the samples go through the same 8-bit rounding in memory (``uint8_round_trip``; a PNG file of 8-bit grey is
lossless, so the numbers are those of the saved files). The classifier has no reject class and is not calibrated:
that is the point of the protocol, the comparison with the paper, not a better measurement (``evaluator``).
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import tensors_sha256
from ..data import batch_loader, data_checksum, load_mnist
from ..utils import cache_root, stable_hash
from .evaluator import cached_net

PAPER_VERSION = 1
N_SAMPLES = 1000
OFFICIAL_EXAMPLE = {"forget": 0, "entropy": 2.194569170475006, "p_forgotten": 0.058080864138901234,
                    "source": "the official code's vae/README.md (clear-nus/selective-amnesia)"}


class PaperClassifier(nn.Module):
    """The official evaluation classifier's layout; ``forward`` returns log-probabilities ``(B, 10)``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 10, 5), nn.BatchNorm2d(10)  # (B, 10, 24, 24)
        self.conv2, self.bn2 = nn.Conv2d(10, 20, 5), nn.BatchNorm2d(20)  # (B, 20, 8, 8)
        self.drop2d = nn.Dropout2d(0.5)
        self.fc1, self.fc2 = nn.Linear(320, 50), nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.bn1(self.conv1(x)), 2))  # (B, 10, 12, 12)
        x = F.relu(F.max_pool2d(self.drop2d(self.bn2(self.conv2(x))), 2))  # (B, 20, 4, 4)
        x = F.dropout(F.relu(self.fc1(x.flatten(1))), 0.5, training=self.training)
        return F.log_softmax(self.fc2(x), 1)


@torch.no_grad()
def log_probs(net: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    net.eval()
    dev = next(net.parameters()).device
    return torch.cat([net(x[i:i + batch].to(dev).float()).cpu() for i in range(0, len(x), batch)])


def train_paper_classifier(data_dir: str | None = None, seed: int = 0, epochs: int = 20, limit: int | None = None,
                           device: str | torch.device = "cpu") -> tuple[PaperClassifier, dict]:
    """Trained as the official script trains it; returns the network (eval mode) and ``{"version", "test_acc",
    "epochs", "seconds"}``."""
    torch.manual_seed(seed)
    x, y = load_mnist(True, data_dir, limit)
    net = PaperClassifier().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.1)
    loader = batch_loader(x, y, batch=64, shuffle=True, seed=seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for xb, yb in loader:
            loss = F.nll_loss(net(xb.to(device)), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    xt, yt = load_mnist(False, data_dir, limit)
    acc = (log_probs(net, xt).argmax(1) == yt).float().mean().item()
    return net.eval(), {"version": PAPER_VERSION, "test_acc": acc, "epochs": epochs,
                        "seconds": time.perf_counter() - t0}


def paper_classifier_path(seed: int = 0, limit: int | None = None, epochs: int = 20):
    key = stable_hash({"data": data_checksum(), "seed": seed, "limit": limit, "epochs": epochs,
                       "version": PAPER_VERSION})
    return cache_root() / "evaluator" / f"paper-classifier-{key}.safetensors"


def paper_fingerprint(seed: int = 0, limit: int | None = None) -> dict:
    """``{"version", "sha256"}`` of the paper classifier's weights (``get_paper_classifier`` makes it; the digest of
    its tensors alone, ``checkpoint.tensors_sha256``, since the file also records its training seconds): what a
    benchmark cell that reports its P records and keys on, like ``evaluator.evaluator_fingerprint``."""
    return {"version": PAPER_VERSION, "sha256": tensors_sha256(paper_classifier_path(seed, limit))}


def get_paper_classifier(accelerator=None, data_dir: str | None = None, seed: int = 0, limit: int | None = None,
                         device="cpu") -> tuple[PaperClassifier, dict]:
    """The cached paper classifier and its info, trained (by the main process alone) the first time."""
    return cached_net(paper_classifier_path(seed, limit), "paper_classifier",
                      lambda: train_paper_classifier(data_dir, seed, limit=limit), PaperClassifier, accelerator, device)


def uint8_round_trip(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as an 8-bit image file holds them (x * 255 rounded, clamped) and read back as x / 255."""
    return (images * 255 + 0.5).clamp(0, 255).to(torch.uint8).float() / 255


def paper_scores(logp: torch.Tensor, forgotten: int) -> dict:
    """The official two numbers from log-probabilities ``(N, 10)``: mean entropy (nats), mean P(y=forgotten)."""
    p = logp.exp()
    return {"entropy": -(p * logp).sum(1).mean().item(), "p_forgotten": p[:, forgotten].mean().item()}


@torch.no_grad()
def paper_protocol(before, after, classifier: nn.Module, info: dict, forget: list[int], n: int = N_SAMPLES,
                   seed: int = 0) -> dict:
    """results.json's ``paper_protocol`` block: for every forgotten class, the official numbers on ``n``
    8-bit samples of the original model (``before``) and the unlearned one (``after``)."""
    out = {}
    for c in forget:
        row = {}
        for name, model in (("before", before), ("after", after)):
            gen = torch.Generator().manual_seed(seed + 17 + c)
            model.eval()
            images = uint8_round_trip(model.sample(n, c, generator=gen).cpu())
            row[name] = paper_scores(log_probs(classifier, images), c)
        out[str(c)] = row
    return {"classifier": info, "n_samples": n, "per_class": out, "official_readme_example": OFFICIAL_EXAMPLE}
