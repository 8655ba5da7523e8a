"""Two conditional VAEs with a Bernoulli decoder, and the negative ELBO.

Labels enter as integer classes ``(B,)`` or as float vectors ``(B, n_classes)`` (one-hot, or any continuous
vector: the condition-inversion attack optimises it). Nothing here is device-specific.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import UsageError, arg

ARCHS = ("conv", "linear")
WIDTH = {"conv": 16, "linear": 512}  # conv 16: 13 s/epoch on 2 CPU cores (32: 21 s)


@dataclass
class ModelConfig:
    arch: str = arg("conv", "which cVAE: " + " | ".join(ARCHS))
    z_dim: int = arg(8, "latent size")  # 8 is the paper's MNIST setting
    width: int = arg(0, "conv: first-layer channels (doubling per layer); linear: first hidden size",
                     shown=", ".join(f"{a} {w}" for a, w in WIDTH.items()))  # 0 = the arch's WIDTH
    n_classes: int = arg(10, "classes (MNIST digits)", flag="")

    def __post_init__(self):
        if not self.width and self.arch in ARCHS:
            self.width = WIDTH[self.arch]


def one_hot(c: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B,) int labels -> (B, n) one-hot; (B, n) float vectors pass through."""
    if c.dim() == 2:
        return c.to(dtype)
    return F.one_hot(c.long(), n_classes).to(dtype)


class CVAE(nn.Module):
    """Shared interface: ``encode(x, c) -> (mu, logvar)``, ``decode(z, c) -> logits``, ``forward``, ``sample``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.n_classes = cfg.z_dim, cfg.n_classes

    def forward(self, x, c, eps=None):
        """Logits ``(B, 1, 28, 28)``, ``mu`` and ``logvar`` ``(B, z)``; ``eps`` is the reparameterisation noise."""
        mu, logvar = self.encode(x, c)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + eps * torch.exp(0.5 * logvar)  # (B, z)
        return self.decode(z, c), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, labels, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` decoder means ``(n, 1, 28, 28)`` in [0, 1] for ``labels`` (an int or ``(n,)`` tensor)."""
        device = next(self.parameters()).device
        if isinstance(labels, int):
            labels = torch.full((n,), labels, dtype=torch.long)
        z = torch.randn(n, self.z_dim, generator=generator)
        return torch.sigmoid(self.decode(z.to(device), labels.to(device))).float()

    def label_inputs(self) -> list[tuple[torch.Tensor, int, int]]:
        """``(weight, dim, start)`` of every weight that reads the one-hot label: class ``c``'s slice is
        ``weight.narrow(dim, start + c, 1)`` (the encoder's and the decoder's first layer)."""
        raise NotImplementedError


class LinearCVAE(CVAE):
    """MLP cVAE: 4-layer encoder [x, c] -> h -> h/2 -> h/4 -> (mu, logvar); decoder [z, c] -> h/4 -> h/2 -> h -> x."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        h = cfg.width
        sizes = [784 + cfg.n_classes, h, h // 2, h // 4]

        def mlp(dims):
            layers = []
            for a, b in zip(dims[:-1], dims[1:]):
                layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
            return nn.Sequential(*layers)

        self.enc = mlp(sizes)
        self.enc_out = nn.Linear(h // 4, 2 * cfg.z_dim)
        self.dec = mlp([cfg.z_dim + cfg.n_classes, h // 4, h // 2, h])
        self.dec_out = nn.Linear(h, 784)

    def encode(self, x, c):
        onehot = one_hot(c, self.n_classes, x.dtype)
        mu, logvar = self.enc_out(self.enc(torch.cat([x.flatten(1), onehot], 1))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z, c):
        onehot = one_hot(c, self.n_classes, z.dtype)
        return self.dec_out(self.dec(torch.cat([z, onehot], 1))).view(-1, 1, 28, 28)

    def label_inputs(self):
        return [(self.enc[0].weight, 1, 784), (self.dec[0].weight, 1, self.z_dim)]  # Linear: (out, in)


def _block(conv: nn.Module, ch: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(ch), nn.ReLU()]


class ConvCVAE(CVAE):
    """Conv cVAE. Encoder: [x, c as 10 constant channels] through 4 convs with batch norm, 28 -> 14 -> 7 -> 4 -> 1;
    decoder: [z, c] through the mirrored transposed convs, 1 -> 4 -> 7 -> 14 -> 28."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        w, k = cfg.width, cfg.n_classes
        self.enc = nn.Sequential(
            *_block(nn.Conv2d(1 + k, w, 4, 2, 1), w),  # (B, w, 14, 14)
            *_block(nn.Conv2d(w, 2 * w, 4, 2, 1), 2 * w),  # (B, 2w, 7, 7)
            *_block(nn.Conv2d(2 * w, 4 * w, 3, 2, 1), 4 * w),  # (B, 4w, 4, 4)
            *_block(nn.Conv2d(4 * w, 8 * w, 4, 1, 0), 8 * w),  # (B, 8w, 1, 1)
        )
        self.enc_out = nn.Linear(8 * w, 2 * cfg.z_dim)
        self.dec = nn.Sequential(
            *_block(nn.ConvTranspose2d(cfg.z_dim + k, 8 * w, 1, 1, 0), 8 * w),  # (B, 8w, 1, 1)
            *_block(nn.ConvTranspose2d(8 * w, 4 * w, 4, 1, 0), 4 * w),  # (B, 4w, 4, 4)
            *_block(nn.ConvTranspose2d(4 * w, 2 * w, 3, 2, 1), 2 * w),  # (B, 2w, 7, 7)
            *_block(nn.ConvTranspose2d(2 * w, w, 4, 2, 1), w),  # (B, w, 14, 14)
        )
        self.dec_out = nn.ConvTranspose2d(w, 1, 4, 2, 1)  # (B, 1, 28, 28) logits

    def encode(self, x, c):
        onehot = one_hot(c, self.n_classes, x.dtype)
        planes = onehot[:, :, None, None].expand(-1, -1, *x.shape[-2:])  # (B, 10, 28, 28)
        mu, logvar = self.enc_out(self.enc(torch.cat([x, planes], 1)).flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z, c):
        onehot = one_hot(c, self.n_classes, z.dtype)
        return self.dec_out(self.dec(torch.cat([z, onehot], 1)[:, :, None, None]))

    def label_inputs(self):  # Conv2d: (out, in, kh, kw); ConvTranspose2d: (in, out, kh, kw)
        return [(self.enc[0].weight, 1, 1), (self.dec[0].weight, 0, self.z_dim)]


def build_model(cfg: ModelConfig) -> CVAE:
    if cfg.arch not in ARCHS:
        raise UsageError(f"--arch must be one of {', '.join(ARCHS)}, got {cfg.arch!r}")
    return (ConvCVAE if cfg.arch == "conv" else LinearCVAE)(cfg)


def default_init_draw(weight: torch.Tensor, shape, generator: torch.Generator,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values of ``shape`` drawn as PyTorch initialises ``weight`` (a Linear or conv weight): U(±1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(weight)[0])
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound


def label_mean_slices(model: CVAE, donors) -> list[torch.Tensor]:
    """For every weight that reads the one-hot label (``CVAE.label_inputs``, in its order), the mean of the
    ``donors``' slices: the condition of "the average of these labels" (the label-mean attacker's start)."""
    return [torch.stack([w.narrow(dim, start + d, 1) for d in donors]).mean(0) for w, dim, start in model.label_inputs()]


def plain_copy(model: CVAE) -> CVAE:
    """A fresh, unwrapped cVAE (plain BatchNorm, float32, eval mode) holding ``model``'s weights and buffers."""
    fresh = build_model(model.cfg)
    fresh.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    return fresh.eval()


def negative_elbo(model: nn.Module, x: torch.Tensor, c: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample negative ELBO ``(B,)`` in nats, -ELBO(x|theta,c) (Kingma & Welling 2014, eq. 10):
    BCE(x, decoder(z)) summed over the 784 pixels + KL(q(z|x,c) || N(0, I)). Losses average it over the batch,
    so their scale never depends on the batch size."""
    logits, mu, logvar = model(x, c, eps)
    dt = torch.promote_types(logits.dtype, torch.float32)  # float32 under mixed precision, float64 stays float64
    logits, x, mu, logvar = logits.to(dt), x.to(dt), mu.to(dt), logvar.to(dt)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return rec + kl


def label_log_odds(model: nn.Module, x: torch.Tensor, c: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """log p(c|x,θ) / (1 - p(c|x,θ)) per image ``(B,)``: the cVAE read as a Bayes classifier with a uniform label
    prior, ELBO(x|θ,c) less the log-sum-exp of the other labels' ELBOs (``negative_elbo``), every label scored with
    the same noise ``eps`` ``(B, z)`` (default one fresh draw). Unlike the log-posterior it does not saturate at
    p = 1, so its gradient does not vanish where the label is certain."""
    n, b = model.n_classes, len(x)
    if eps is None:
        eps = torch.randn(b, model.z_dim, device=x.device)
    labels = torch.arange(n, device=x.device).repeat_interleave(b)  # (n·B,): every label for every image
    elbo = -negative_elbo(model, x.repeat(n, *[1] * (x.dim() - 1)), labels, eps.repeat(n, 1)).view(n, b).T  # (B, n)
    own = elbo.gather(1, c[:, None]).squeeze(1)  # (B,)
    others = elbo.masked_fill(F.one_hot(c, n).bool(), float("-inf"))  # (B, n)
    return own - torch.logsumexp(others, 1)
