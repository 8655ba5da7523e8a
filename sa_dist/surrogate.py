"""The surrogate distribution q(x|c_f): what SA teaches the forgotten labels to generate instead.

Each kind is one class below: how a ``--surrogate`` value names it (``matches``), its check before anything runs
(``check``), its sampler (``sample``), its ideal output (``ideal``: what a perfectly forgotten model generates, the
surrogate's mean image) and its ``z_blind`` nELBO (the negative ELBO of its samples under the best decoder that
ignores z; None where no closed form is known). ``z_blind`` is a reference, not a lower bound: a decoder that reads
z can do better on the very samples it is scored on (one that reproduced each noise image would reach about 392
nats on uniform noise), so values below it are possible and are shown, not clipped. Config validation, the SA loop and the evaluation all go through
``get_surrogate``; a new kind is one class added to ``KINDS``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .utils import UsageError

SHAPE = (1, 28, 28)  # one MNIST image
PIXELS = 784


def z_blind_nelbo(nelbo: dict) -> float | None:
    """The z-blind reference of results.json's ``surrogate.nelbo`` block (``z_blind``; ``floor`` in older runs)."""
    return nelbo.get("z_blind", nelbo.get("floor"))


class Surrogate:
    """A kind of surrogate for the spec ``spec`` (a ``--surrogate`` value)."""

    z_blind: float | None = None

    def __init__(self, spec: str):
        self.spec = spec

    @staticmethod
    def matches(spec: str) -> bool:
        raise NotImplementedError

    def check(self, forget: list[int], n_classes: int) -> None:
        """Raise a ``UsageError`` naming the flag when the spec cannot serve these forgotten classes."""

    def sample(self, n: int, gen: torch.Generator, model=None) -> torch.Tensor:
        """``n`` images ``(n, 1, 28, 28)`` in [0, 1] on the CPU; ``model`` is the original theta* (class:K)."""
        raise NotImplementedError

    def ideal(self, model, gen: torch.Generator) -> torch.Tensor:
        """What a perfectly forgotten model outputs, ``(m, 1, 28, 28)``: the surrogate's mean image, or samples."""
        return self.sample(1000, gen, model).mean(0, keepdim=True)


class Uniform(Surrogate):
    """Uniform noise in [0, 1]^784 (the paper's default): the ideal output is flat 0.5 grey."""

    z_blind = PIXELS * math.log(2)  # Bernoulli decoder outputting 0.5 everywhere, KL 0: 543.4 nats

    @staticmethod
    def matches(spec: str) -> bool:
        return spec == "uniform"

    def sample(self, n, gen, model=None):
        return torch.rand(n, *SHAPE, generator=gen)

    def ideal(self, model, gen):
        return torch.full((1, *SHAPE), 0.5)


class Blank(Surrogate):
    """A black image."""

    z_blind = 0.0

    @staticmethod
    def matches(spec: str) -> bool:
        return spec == "blank"

    def sample(self, n, gen, model=None):
        return torch.zeros(n, *SHAPE)

    def ideal(self, model, gen):
        return torch.zeros(1, *SHAPE)


class OtherClass(Surrogate):
    """``class:K``: the original model's samples of a retained class K (forget 2 by turning it into 7s)."""

    @staticmethod
    def matches(spec: str) -> bool:
        return spec.startswith("class:")

    @property
    def k(self) -> int:
        return int(self.spec.split(":", 1)[1])

    def check(self, forget, n_classes):
        k = self.spec.split(":", 1)[1]
        if not (k.isdigit() and int(k) < n_classes and int(k) not in forget):
            raise UsageError(f"--surrogate class:K needs a retained class K in 0-{n_classes - 1} "
                             f"(not one of --forget {list(forget)}), got {self.spec!r}")

    def sample(self, n, gen, model=None):
        if model is None:
            raise ValueError("surrogate class:K samples the original model: pass it")
        return model.sample(n, self.k, generator=gen).cpu()

    def ideal(self, model, gen):
        return self.sample(1000, gen, model)


class UserImages(Surrogate):
    """A path to an .npy of the user's images, drawn uniformly with replacement."""

    @staticmethod
    def matches(spec: str) -> bool:
        return spec.endswith(".npy")

    def check(self, forget, n_classes):
        load_user_images(self.spec)

    def sample(self, n, gen, model=None):
        imgs = load_user_images(self.spec)
        return imgs[torch.randint(len(imgs), (n,), generator=gen)]


KINDS = (Uniform, Blank, OtherClass, UserImages)


def get_surrogate(spec: str, forget: list[int] = (), n_classes: int = 10) -> Surrogate:
    """The surrogate ``spec`` names, checked against the forgotten classes (a ``UsageError`` when it cannot be)."""
    kind = next((k for k in KINDS if k.matches(spec)), None)
    if kind is None:
        raise UsageError(f"--surrogate must be uniform, blank, class:K or a path to an .npy file, got {spec!r}")
    surrogate = kind(spec)
    surrogate.check(list(forget), n_classes)
    return surrogate


def load_user_images(path: str | Path) -> torch.Tensor:
    """A user's surrogate images: an .npy of shape (N, 28, 28), (N, 1, 28, 28) or (N, 784), values in [0, 1]."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"--surrogate {path}: cannot read the .npy file ({e})") from None
    if arr.ndim < 2 or arr.shape[0] < 1 or int(np.prod(arr.shape[1:])) != PIXELS:
        raise UsageError(f"--surrogate {path}: expected images of shape (N, 28, 28), (N, 1, 28, 28) or (N, 784), "
                         f"got {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise UsageError(f"--surrogate {path}: expected numbers in [0, 1], got dtype {arr.dtype}")
    x = torch.from_numpy(arr.astype(np.float32)).reshape(-1, *SHAPE)
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise UsageError(f"--surrogate {path}: pixel values must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
    return x
