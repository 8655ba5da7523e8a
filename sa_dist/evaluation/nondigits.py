"""Images that are not digits: the evaluator's reject class is trained on them.

Each generator makes ``(n, 1, 28, 28)`` images in [0, 1] on the CPU, deterministic from a ``torch.Generator``;
those that destroy a real digit (heavy blur, shuffled patches, a digit's strokes scattered) take ``digits``,
real MNIST images. ``nondigits`` draws an equal share of every kind. What counts as "not a digit" here is what an
unlearned model may generate instead of its forgotten class: noise (the uniform surrogate's samples), flat grey
(its ideal output), blank black or white images, blobs and texture that keep a digit's ink but not its shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SHAPE = (1, 28, 28)


def _levels(n: int, gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, 1, 1, 1, generator=gen))


def noise(n: int, gen: torch.Generator, digits=None) -> torch.Tensor:
    """Uniform noise in [0, 1] per pixel (the uniform surrogate's samples)."""
    return torch.rand(n, *SHAPE, generator=gen)


def binary_noise(n: int, gen: torch.Generator, digits=None) -> torch.Tensor:
    """Each pixel on with a per-image probability in [0.05, 0.95] (sampled Bernoulli pixels of a grey image)."""
    return (torch.rand(n, *SHAPE, generator=gen) < _levels(n, gen, 0.05, 0.95)).float()


def flat(n: int, gen: torch.Generator, digits=None) -> torch.Tensor:
    """One grey level per image, uniform in [0, 1] (flat 0.5 grey is the uniform surrogate's ideal output)."""
    return _levels(n, gen).expand(n, *SHAPE).clone()


def grey_noise(n: int, gen: torch.Generator, digits=None) -> torch.Tensor:
    """A grey level with weaker noise around it: what a model half way to the uniform surrogate draws."""
    x = _levels(n, gen, 0.2, 0.8) + _levels(n, gen, 0.02, 0.3) * (torch.rand(n, *SHAPE, generator=gen) - 0.5)
    return x.clamp(0, 1)


def black(n: int, gen: torch.Generator, digits=None) -> torch.Tensor:
    """Blank black images (the blank surrogate)."""
    return torch.zeros(n, *SHAPE)


def white(n: int, gen: torch.Generator, digits=None) -> torch.Tensor:
    """Blank white images."""
    return torch.ones(n, *SHAPE)


def _pick(digits: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    if digits is None or len(digits) == 0:
        raise ValueError("this kind of non-digit is made from real digits: pass digits")
    return digits[torch.randint(len(digits), (n,), generator=gen)].float()


def blurred(n: int, gen: torch.Generator, digits=None) -> torch.Tensor:
    """Real digits under a heavy box blur (9 x 9, twice), rescaled to a random peak: a blob without a shape."""
    x = _pick(digits, n, gen)
    for _ in range(2):
        x = F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
    peak = x.flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]
    return (x / peak * _levels(n, gen, 0.3, 1.0)).clamp(0, 1)


def scrambled(n: int, gen: torch.Generator, digits=None, patch: int = 7) -> torch.Tensor:
    """Real digits cut into 7 x 7 patches that are shuffled (one random order per image): the ink, not the shape."""
    x = _pick(digits, n, gen)
    k = 28 // patch
    tiles = x.reshape(n, k, patch, k, patch).permute(0, 1, 3, 2, 4).reshape(n, k * k, patch, patch)
    order = torch.argsort(torch.rand(n, k * k, generator=gen), 1)
    tiles = tiles[torch.arange(n)[:, None], order]
    return tiles.reshape(n, k, k, patch, patch).permute(0, 1, 3, 2, 4).reshape(n, *SHAPE)


def scattered(n: int, gen: torch.Generator, digits=None) -> torch.Tensor:
    """A real digit's pixels in a random permutation: its ink spread over the image as speckle."""
    x = _pick(digits, n, gen).flatten(1)
    order = torch.argsort(torch.rand(n, 784, generator=gen), 1)
    return x.gather(1, order).reshape(n, *SHAPE)


KINDS = {"noise": noise, "binary_noise": binary_noise, "flat": flat, "grey_noise": grey_noise, "black": black,
         "white": white, "blurred": blurred, "scrambled": scrambled, "scattered": scattered}


def make(kind: str, n: int, gen: torch.Generator, digits: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` non-digits of one kind (a key of ``KINDS``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of non-digit {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[kind](n, gen, digits)


def nondigits(n: int, seed: int, digits: torch.Tensor | None = None, kinds=tuple(KINDS)) -> torch.Tensor:
    """``n`` non-digits, an equal share of each of ``kinds`` (in this order), deterministic from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    counts = [n // len(kinds) + (i < n % len(kinds)) for i in range(len(kinds))]
    return torch.cat([make(k, m, gen, digits) for k, m in zip(kinds, counts)])
