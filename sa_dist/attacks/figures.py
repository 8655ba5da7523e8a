"""The attack suite's figures: relearning curves per k and lr (both judges), the best inversion images."""
from __future__ import annotations

from pathlib import Path

from ..analysis.plots import image_grid, save_png, subplots


def relearn_figure(block: dict, target: int, path: Path):
    """One panel per (k, lr): every model's P curve (solid: the evaluator; dashed: the paper classifier)."""
    ks, lrs = block["settings"]["k"], [f"{lr:g}" for lr in block["settings"]["lr"]]
    drawn = block["settings"].get("draw", target)  # --relearn-draw: the control's class, taught to label target
    fig, axes = subplots(len(ks), len(lrs), figsize=(4.2 * len(lrs), 3.2 * len(ks)), squeeze=False)
    for row, k in zip(axes, ks):
        for ax, lr in zip(row, lrs):
            for i, (name, r) in enumerate(block["models"].items()):
                cur = r[f"k{k}"]["by_lr"][lr]["curve"]
                ax.plot(cur["step"], cur["p"], marker=".", color=f"C{i}", label=name)
                if "p_paper" in cur:
                    ax.plot(cur["step"], cur["p_paper"], ls="--", color=f"C{i}", lw=1)
            ax.axhline(block["settings"]["threshold"], color="grey", ls=":", lw=1)
            data = "retained classes only" if k == 0 else f"k={k} real {drawn}s" + (
                f" as label {target}" if drawn != target else "")
            ax.set(title=f"{data}, lr {lr}", xlabel="fine-tuning step", ylabel=f"mean P(y={drawn})",
                   ylim=(-0.02, 1.02))
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def invert_figure(grids: dict, numbers: dict, variants: list, target: int, path: Path):
    """One panel per (inversion variant, model): its best images with their P."""
    names = list(numbers)
    fig, axes = subplots(len(variants), len(names), figsize=(3.2 * len(names), 3.8 * len(variants)), squeeze=False)
    for i, var in enumerate(variants):
        for j, name in enumerate(names):
            ax, r = axes[i][j], numbers[name][var]
            ax.imshow(image_grid(grids[(name, var)], 4), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name}, {var}\nbest P {r['best_p']:.3f}, mean {r['mean_p']:.3f}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"condition inversion: best images for y={target}")
    fig.tight_layout(h_pad=1.5)
    save_png(fig, path)
