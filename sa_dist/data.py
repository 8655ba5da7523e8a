"""Offline MNIST.

The four official IDX files ship inside the package (``sa_dist/data/mnist/*.gz``), so a clone, a wheel or the
container runs with no network. Each file's *uncompressed* content is checked against the SHA-256 below, laid out
where ``torchvision.datasets.MNIST(root, download=False)`` reads it (a cache dir), and returned as float tensors in
[0, 1]. MNIST fits in memory, so batches are sliced straight from tensors (``TensorBatches.__getitems__``).
"""
from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import MNIST

from .utils import UserError, atomic_write_bytes, cache_root

SHA256 = {  # of the uncompressed IDX files (shared/data/mnist/README.md)
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
PACKAGE_DATA = Path(__file__).parent / "data" / "mnist"


def data_checksum() -> str:
    """One hash for the whole data set: part of every cache key (baseline, Fisher, evaluator)."""
    return hashlib.sha256("".join(SHA256[k] for k in sorted(SHA256)).encode()).hexdigest()[:16]


def _read_verified(data_dir: Path, name: str) -> bytes:
    """Uncompressed bytes of ``name`` from ``data_dir`` (``name.gz`` or ``name``), checked against SHA256."""
    gz, raw = data_dir / f"{name}.gz", data_dir / name
    if gz.is_file():
        try:
            blob = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as e:
            raise UserError(f"MNIST file {gz} is corrupt ({e}); expected a gzip file whose content has "
                            f"SHA-256 {SHA256[name]}") from None
        src = gz
    elif raw.is_file():
        blob, src = raw.read_bytes(), raw
    else:
        raise UserError(f"MNIST file {gz} is missing (expected {name}.gz or {name} in {data_dir})")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SHA256[name]:
        raise UserError(f"MNIST file {src} failed its checksum: uncompressed SHA-256 {digest[:16]}..., "
                        f"expected {SHA256[name][:16]}...")
    return blob


@lru_cache(maxsize=4)
def prepare_mnist(data_dir: str | None = None) -> Path:
    """Verify the four files and lay them out as ``ROOT/MNIST/raw/<name>``; return ROOT for torchvision."""
    src = Path(data_dir) if data_dir else PACKAGE_DATA
    root = cache_root() / "mnist"
    raw_dir = root / "MNIST" / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name in SHA256:
        blob = _read_verified(src, name)
        target = raw_dir / name
        if not (target.is_file() and target.stat().st_size == len(blob)
                and hashlib.sha256(target.read_bytes()).hexdigest() == SHA256[name]):
            atomic_write_bytes(target, blob)
    return root


@lru_cache(maxsize=4)
def _load(train: bool, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    ds = MNIST(str(prepare_mnist(data_dir)), train=train, download=False)
    x = ds.data.unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28) in [0, 1]
    return x, ds.targets.long()


def load_mnist(train: bool = True, data_dir: str | None = None, limit: int | None = None):
    """Images ``(N, 1, 28, 28)`` float32 in [0, 1] and labels ``(N,)`` int64; ``limit`` keeps the first N."""
    x, y = _load(bool(train), str(data_dir) if data_dir else None)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


class TensorBatches(torch.utils.data.Dataset):
    """A dataset of in-memory tensors that hands the DataLoader whole batches (one fancy index per batch)."""

    def __init__(self, *tensors: torch.Tensor):
        if len({len(t) for t in tensors}) != 1:
            raise ValueError("tensors must have the same length")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i):
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, idx: list[int]):
        idx = torch.as_tensor(idx)
        return tuple(t[idx] for t in self.tensors)


def _identity(batch):
    return batch


def batch_loader(*tensors: torch.Tensor, batch: int, shuffle: bool, seed: int = 0,
                 drop_last: bool = False) -> DataLoader:
    """A DataLoader over in-memory tensors; ``accelerator.prepare`` shards it across processes."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorBatches(*tensors), batch_size=batch, shuffle=shuffle, generator=gen,
                      collate_fn=_identity, drop_last=drop_last)


def loaders(batch: int = 256, seed: int = 0, data_dir: str | None = None, limit: int | None = None,
            classes: list[int] | None = None) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled) and test loaders of real MNIST; ``classes`` keeps only those labels."""
    out = []
    for train in (True, False):
        x, y = load_mnist(train, data_dir, limit)
        if classes is not None:
            keep = torch.isin(y, torch.tensor(classes))
            x, y = x[keep], y[keep]
        out.append(batch_loader(x, y, batch=batch, shuffle=train, seed=seed))
    return out[0], out[1]
