"""The latent space before and after: encoder means of real test images in 2-D, per-class silhouette scores, and
decoder traversals over a 2-D grid of latent values.

The encoder is conditional, q(z|x, c): each test image is encoded under its true label, so its mean mu(x, c) says
where the model puts that image. The silhouette of class k (mean of scikit-learn's ``silhouette_samples`` over the
images of class k, Euclidean, in the full z space) is high when the class's means sit apart from the others:
"retained clusters preserved" is then the retained classes' silhouette after being close to before.

Because the label is an input of the encoder, a cVAE need not separate classes in z at all (z holds the style, the
label the class), so silhouettes near 0 are expected here; what matters is before vs after. ``drift`` adds how far
each image's mean moved, relative to its class's spread.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_samples

from ..utils import UsageError
from .plots import image_grid, save_png, subplots


def subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random ``n`` of the test images (all of them when fewer)."""
    if n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


@torch.no_grad()
def latent_means(model, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """Encoder means ``(N, z_dim)`` of images ``x`` under labels ``y`` (eval mode)."""
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model.encode(x[i:i + batch].to(dev), y[i:i + batch].to(dev))[0].float().cpu()
                      for i in range(0, len(x), batch)]).numpy()


def silhouette_by_class(mu: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per-class mean silhouette of the points ``mu`` labelled ``y`` (-1 worst, 1 best)."""
    s = silhouette_samples(mu, y)
    return {str(int(c)): float(s[y == c].mean()) for c in np.unique(y)}


def latent_block(before, after, x: torch.Tensor, y: torch.Tensor, forget: list[int], n: int = 5000,
                 seed: int = 0) -> dict:
    """results.json's ``latent``: per-class silhouette of the latent means before and after, the retained mean and
    the forgotten classes; ``n`` test images (seeded subset)."""
    xs, ys = subset(x, y, n, seed)
    out = {"space": f"encoder means mu(x, c) of real test images under their true label, z_dim={before.z_dim}",
           "metric": "silhouette (Euclidean), mean over each class's images", "n_images": len(xs)}
    keep = [str(c) for c in range(before.n_classes) if c not in forget]

    def summary(per: dict) -> dict:
        return {"per_class": per, "retained_mean": float(np.mean([per[k] for k in keep if k in per])),
                "forgotten": {str(c): per.get(str(c)) for c in forget}}

    mus = {name: latent_means(model, xs, ys) for name, model in (("before", before), ("after", after))}
    for name, mu in mus.items():
        out[name] = summary(silhouette_by_class(mu, ys.numpy()))
    out["drift"] = summary(drift_by_class(mus["before"], mus["after"], ys.numpy()))
    return out


def drift_by_class(mu_before: np.ndarray, mu_after: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per class: mean distance an image's latent mean moved, over the RMS spread of the class's means before
    (0: the encoder still puts each image where it did; about 1.4: no relation left)."""
    out = {}
    for c in np.unique(y):
        b, a = mu_before[y == c], mu_after[y == c]
        spread = np.sqrt(((b - b.mean(0)) ** 2).sum(1).mean())
        out[str(int(c))] = float(np.linalg.norm(a - b, axis=1).mean() / spread)
    return out


def _project(mus: list[np.ndarray], method: str, seed: int) -> list[np.ndarray]:
    """2-D coordinates: PCA fitted on the first set and applied to all (one shared frame), or one joint t-SNE."""
    if method == "pca":
        pca = PCA(2, random_state=seed).fit(mus[0])
        return [pca.transform(m) for m in mus]
    if method == "tsne":
        both = TSNE(2, init="pca", random_state=seed, perplexity=30).fit_transform(np.concatenate(mus))
        return np.split(both, np.cumsum([len(m) for m in mus])[:-1])
    raise UsageError(f"latent projection must be pca or tsne, got {method!r}")


def plot_latent_space(model, data: tuple[torch.Tensor, torch.Tensor], forget: list[int] = (), after=None,
                      method: str = "pca", path: str | Path | None = None, n: int = 2000, seed: int = 0,
                      silhouette: dict | None = None):
    """Encoder means of real test images ``data = (x, y)`` in 2-D, coloured by class with a legend; with ``after``,
    before and after side by side in one frame. Forgotten classes are drawn on top, larger, with a black edge.
    ``silhouette`` (a ``latent_block``) puts each side's retained/forgotten silhouette in its title."""
    xs, ys = subset(*data, n, seed)
    models = [("before (original)", "before", model)] + ([("after SA", "after", after)] if after is not None else [])
    coords = _project([latent_means(m, xs, ys) for _, _, m in models], method, seed)
    y = ys.numpy()
    cmap = matplotlib.colormaps["tab10"]
    fig, axes = subplots(1, len(models), figsize=(6.2 * len(models), 5.6), squeeze=False,
                             sharex=method == "pca", sharey=method == "pca")
    for ax, (name, key, _), xy in zip(axes[0], models, coords):
        for c in sorted(set(y.tolist()), key=lambda c: c in forget):  # forgotten last: on top
            pts, hit = xy[y == c], c in forget
            ax.scatter(pts[:, 0], pts[:, 1], s=22 if hit else 5, color=cmap(c % 10), alpha=0.9 if hit else 0.5,
                       edgecolors="black" if hit else "none", linewidths=0.4,
                       label=f"{c} (forgotten)" if hit else str(c))
        if silhouette is not None:
            s = silhouette[key]
            fs = ", ".join(f"{k}: {v:.2f}" for k, v in s["forgotten"].items())
            name += f"\nsilhouette retained {s['retained_mean']:.2f}; forgotten {fs}"
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"{method.upper()} 1")
        ax.set_ylabel(f"{method.upper()} 2")
    axes[0, -1].legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2, fontsize=8)
    fig.suptitle(f"Latent means of {len(xs)} test images ({method.upper()}), forgotten "
                 f"{', '.join(map(str, forget)) or 'none'} highlighted")
    fig.tight_layout()
    save_png(fig, path)


def traversal_axes(model, data: tuple[torch.Tensor, torch.Tensor] | None, dims: tuple[int, int] | None,
                   n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Two unit directions ``(2, z_dim)`` in latent space and their axis names: two chosen dims, or the two leading
    PCA directions of the latent means of real test images (the aggregate posterior; the N(0, I) prior itself is
    isotropic, so the PCA of prior samples would pick arbitrary directions)."""
    if dims is not None or data is None:
        d = dims or (0, 1)
        return torch.eye(model.z_dim)[list(d)], [f"z[{d[0]}]", f"z[{d[1]}]"]
    pca = PCA(2, random_state=seed).fit(latent_means(model, *subset(*data, n, seed)))
    return torch.from_numpy(pca.components_).float(), ["PC 1 of latent means", "PC 2 of latent means"]


@torch.no_grad()
def traversal(model, label: int, axes: torch.Tensor, steps: int = 11, span: float = 2.5) -> torch.Tensor:
    """Decoder means ``(steps * steps, 1, 28, 28)`` at z = a * axes[0] + b * axes[1], a, b in [-span, span];
    rows go from +b (top) to -b, columns from -a to +a."""
    model.eval()
    v = torch.linspace(-span, span, steps)
    a, b = torch.meshgrid(v, v.flip(0), indexing="xy")  # a varies along columns, b down the rows
    z = a.reshape(-1, 1) * axes[0] + b.reshape(-1, 1) * axes[1]  # (steps^2, z_dim)
    dev = next(model.parameters()).device
    return torch.sigmoid(model.decode(z.to(dev), torch.full((len(z),), label, device=dev))).float().cpu()


def plot_latent_manifold(model, label: int | list[int], after=None, data=None, dims: tuple[int, int] | None = None,
                         path: str | Path | None = None, steps: int = 11, span: float = 2.5, forget: list[int] = ()):
    """Decoder traversals over a 2-D grid of latent values (``traversal_axes``), one row of panels per label,
    before and (with ``after``) after side by side; the same directions for both models."""
    labels = [label] if isinstance(label, int) else list(label)
    axes_z, names = traversal_axes(model, data, dims)
    models = [("before (original)", model)] + ([("after SA", after)] if after is not None else [])
    fig, axs = subplots(len(labels), len(models), figsize=(4.6 * len(models), 4.6 * len(labels)),
                            squeeze=False)
    px = 30 * steps  # grid pixels per side (28 + 2 padding per image)
    ticks = [2 + 14 + 30 * i for i in (0, steps // 2, steps - 1)]
    for r, c in enumerate(labels):
        for k, (name, m) in enumerate(models):
            ax = axs[r, k]
            ax.imshow(image_grid(traversal(m, c, axes_z, steps, span), steps), cmap="gray", vmin=0, vmax=1,
                      extent=(0, px + 2, px + 2, 0))
            tag = " (forgotten)" if c in forget else " (retained)" if forget else ""
            ax.set_title(f"label {c}{tag}: {name}", fontsize=10, color="red" if c in forget else "black")
            ax.set_xticks(ticks, [f"{-span:g}", "0", f"{span:g}"])
            ax.set_yticks(ticks, [f"{span:g}", "0", f"{-span:g}"])
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
    fig.suptitle(f"Decoder traversal, {steps}x{steps} latent grid in [-{span:g}, {span:g}]")
    fig.tight_layout()
    save_png(fig, path)
