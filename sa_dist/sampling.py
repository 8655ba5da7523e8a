"""Samples of a checkpoint as a NumPy array, for scoring with any classifier."""
from __future__ import annotations

import io

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .utils import UsageError, atomic_write_bytes


def write_samples(checkpoint: str, label: int, n: int, seed: int, out: str) -> str:
    """Write ``(n, 28, 28)`` float32 decoder means in [0, 1] for ``label`` to ``out``; return a summary line."""
    model, _ = load_checkpoint(checkpoint)
    if not 0 <= label < model.n_classes:
        raise UsageError(f"--label must be in 0-{model.n_classes - 1}, got {label}")
    if n < 1:
        raise UsageError(f"-n must be >= 1, got {n}")
    x = model.eval().sample(n, label, generator=torch.Generator().manual_seed(seed))  # (n, 1, 28, 28)
    arr = x[:, 0].numpy().astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(out, buf.getvalue())
    return f"wrote {arr.shape} float32 samples of label {label} to {out}"
