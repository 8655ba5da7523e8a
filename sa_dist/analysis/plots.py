"""Plotting helpers and the basic figures: titled sample grids, the before/after grid with the forgotten rows
marked, and the training curves. Figures are matplotlib ``Figure`` objects written straight to PNG: no pyplot, so
no backend is switched and no display is needed."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.ticker
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torchvision.utils import make_grid

from ..utils import atomic_write_bytes


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs):
    """A new figure and its axes (``Figure.subplots``' arguments)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_png(fig: Figure, path: str | Path | None, dpi: int = 150) -> None:
    """Write ``fig`` as a PNG (atomically); ``path`` None draws nothing."""
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        atomic_write_bytes(path, buf.getvalue())


def image_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """Images ``(N, 1, 28, 28)`` as one grey ``(H, W)`` array, ``nrow`` per row, 2-pixel white gaps."""
    return make_grid(images.detach().cpu().float(), nrow=nrow, padding=2, pad_value=1.0)[0].numpy()


def show_grid(images: torch.Tensor, title: str, path: str | Path | None = None, nrow: int = 10):
    """A titled grid of ``images`` ``(N, 1, 28, 28)`` in [0, 1], saved as a 150-dpi PNG when ``path`` is given."""
    fig, ax = subplots(figsize=(nrow * 0.45, (len(images) + nrow - 1) // nrow * 0.45 + 0.6))
    ax.imshow(image_grid(images, nrow), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    save_png(fig, path)


@torch.no_grad()
def class_rows(model, n_per_class: int = 10, seed: int = 0) -> torch.Tensor:
    """``(n_classes * n, 1, 28, 28)`` samples, one row per class (the same latent codes in every row)."""
    z = torch.randn(n_per_class, model.z_dim, generator=torch.Generator().manual_seed(seed))
    dev = next(model.parameters()).device
    model.eval()
    rows = [torch.sigmoid(model.decode(z.to(dev), torch.full((n_per_class,), c, device=dev))).cpu()
            for c in range(model.n_classes)]
    return torch.cat(rows)


def before_after_grid(before, after, forget: list[int], path: str | Path | None = None, seed: int = 0,
                      title: str = "Selective Amnesia"):
    """Samples before and after side by side, one row per class, forgotten rows marked in red."""
    fig, axes = subplots(1, 2, figsize=(10, 5.6))
    for ax, model, name in zip(axes, (before, after), ("before (original)", "after SA")):
        ax.imshow(image_grid(class_rows(model, seed=seed), 10), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([2 + 15 + 30 * c for c in range(10)], [str(c) for c in range(10)])
        ax.set_ylabel("class label c")
        for c in forget:
            ax.add_patch(Rectangle((0.5, 30 * c + 0.5), 300, 30, fill=False, ec="red", lw=2))
            ax.get_yticklabels()[c].set_color("red")
    fig.suptitle(f"{title}: forgotten {', '.join(map(str, forget))} (red)")
    fig.tight_layout()
    save_png(fig, path)


def plot_baseline_curves(history: list[dict], path: str | Path | None = None):
    """Baseline train and test negative ELBO per epoch (``history`` rows: epoch, train_nelbo, test_nelbo)."""
    fig, ax = subplots(figsize=(6, 4))
    ep = [r["epoch"] for r in history]
    for key, name in (("train_nelbo", "train"), ("test_nelbo", "test")):
        ax.plot(ep, [r[key] for r in history], marker="o" if len(ep) < 20 else None, ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (nats)")
    ax.set_title(f"Baseline training: final test nELBO {history[-1]['test_nelbo']:.2f}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


SA_TERMS = (("surrogate_nelbo", "surrogate: -ELBO on q(x|c_f)"), ("replay_nelbo", "replay: -ELBO on p(x|θ*,c_r)"),
            ("ewc", "EWC: Σ F_i (θ_i - θ*_i)²"))
REGULARISERS = {"ewc": SA_TERMS[2][1], "weight_dist_reg": "weight distance: -min(RMS(θ - θ*), cap)"}  # third panel


def plot_sa_curves(rows: list[dict], path: str | Path | None = None, z_blind: float | None = None):
    """The three SA terms per step, one panel each (their scales differ by orders of magnitude); ``z_blind``: the
    surrogate's nELBO under the best decoder that ignores z (uniform noise: 784 ln 2). The surrogate panel then
    shows the difference to it on a symmetric log scale: values below it (possible, it is no lower bound) stay
    visible as negative values instead of being dropped by a log axis."""
    fig, axes = subplots(1, 3, figsize=(13, 3.8))
    steps = [r["step"] for r in rows]
    third = next((k for k in REGULARISERS if k in rows[0]), "ewc")  # the distance method logs its own term
    terms = (*SA_TERMS[:2], (third, REGULARISERS[third]))
    for ax, (key, name), color in zip(axes, terms, ("tab:red", "tab:blue", "tab:green")):
        vals, ylabel = [r[key] for r in rows], "penalty (before its weight)" if key == third else "nats"
        if key == "surrogate_nelbo":  # starts thousands of nats above where it ends: log scale
            if z_blind is not None:
                vals, ylabel = [v - z_blind for v in vals], f"nats above z-blind {z_blind:.1f} (symlog)"
                name += " minus z-blind"
                ax.set_yscale("symlog", linthresh=1.0)
            else:
                ylabel = "nats (log)"
                ax.set_yscale("log")
        ax.plot(steps, vals, color=color, label=name)
        if key == "surrogate_nelbo" and z_blind is not None:
            ax.axhline(0.0, color="grey", lw=0.8, ls="--", label="z-blind decoder")
        if key != "surrogate_nelbo":  # plain numbers on the axis: no "1e-5" offset text next to the title
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.6g}"))
        ax.set_xlabel("SA step")
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Selective Amnesia: the three terms of the objective per step")
    fig.tight_layout()
    save_png(fig, path)


def plot_confusion(before: dict, after: dict, forget: list[int], path: str | Path | None = None):
    """The label -> seen-class matrices (results.json ``confusion``: mean evaluator probability of each seen class
    for samples of each label) before and after, and their difference, the changes of at least 0.01 written in."""
    b, a = np.array(before["mean_p"]), np.array(after["mean_p"])  # (labels, seen)
    fig, axes = subplots(1, 3, figsize=(17, 5.2))
    panels = (("before", b, "Blues", 0, 1), ("after", a, "Blues", 0, 1), ("after - before", a - b, "RdBu_r", -1, 1))
    for ax, (name, m, cmap, lo, hi) in zip(axes, panels):
        im = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi)
        ax.set_xticks(range(m.shape[1]), before["seen"], fontsize=8)
        ax.set_yticks(range(m.shape[0]), before["labels"])
        for c in forget:
            ax.get_yticklabels()[c].set_color("red")
        ax.set_xlabel("class the evaluator sees")
        ax.set_ylabel("label asked for (forgotten in red)")
        ax.set_title(f"{name}: mean P(seen class | label)", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
        if name.startswith("after -"):
            for (i, j), v in np.ndenumerate(m):
                if abs(v) >= 0.01:
                    ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=6)
    fig.tight_layout()
    save_png(fig, path)
