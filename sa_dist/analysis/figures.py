"""Every figure of a run, in one call shared by ``scripts/unlearn.py`` and ``SelectiveAmnesiaVAE.visualize_results``,
and the same figures (plus the baseline curves as scalars) in TensorBoard."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import matplotlib.image as mpimg
import torch
from torch.utils.tensorboard import SummaryWriter

from ..data import load_mnist
from ..surrogate import z_blind_nelbo
from .latent import latent_block, plot_latent_manifold, plot_latent_space
from .plots import before_after_grid, plot_baseline_curves, plot_confusion, plot_sa_curves

# file name -> what it shows; the report lists figures in this order (any other PNG in the run comes after)
FIGURES = {
    "samples_before_after.png": "Samples before and after, one row per class (10 x 10, the same latent codes in "
                                "every row); forgotten rows in red.",
    "latent_space.png": "Encoder means of real test images in 2-D, coloured by class, before and after in one "
                        "frame; the forgotten class highlighted. Titles: mean silhouette in the full latent space.",
    "latent_manifold.png": "Decoder traversal over a 2-D grid of latent values, for a forgotten and a retained "
                           "label, before and after (the same directions for both models).",
    "curves_baseline.png": "Baseline training: train and test negative ELBO per epoch.",
    "curves_sa.png": "Selective Amnesia: surrogate, replay and EWC terms per step (every 10th step).",
    "collateral.png": "Collateral damage: for samples of each label (rows), the evaluator's mean probability of each "
                      "class it sees (columns), before, after and the difference.",
}


def make_figures(out_dir: str | Path, before, after, forget: list[int], data: tuple[torch.Tensor, torch.Tensor],
                 baseline_history: list | None = None, sa_rows: list | None = None, z_blind: float | None = None,
                 seed: int = 0, latent_method: str = "pca", n_silhouette: int = 5000,
                 confusion: tuple[dict, dict] | None = None) -> tuple[list[Path], dict]:
    """Write the figures of ``FIGURES`` that the inputs allow into ``out_dir``; return (paths, results.json's
    ``latent`` block). ``data``: the real test images and labels; models may be on any device; ``confusion``:
    results.json's ``confusion`` blocks before and after."""

    out = Path(out_dir)
    latent = latent_block(before, after, *data, forget, n=n_silhouette, seed=seed)
    before_after_grid(before, after, forget, out / "samples_before_after.png", seed=seed)
    plot_latent_space(before, data, forget, after, latent_method, out / "latent_space.png", seed=seed,
                      silhouette=latent)
    keep = [c for c in range(before.n_classes) if c not in forget]
    plot_latent_manifold(before, [forget[0], keep[0]], after, data, path=out / "latent_manifold.png", forget=forget)
    if baseline_history:
        plot_baseline_curves(baseline_history, out / "curves_baseline.png")
    if sa_rows:
        plot_sa_curves(sa_rows, out / "curves_sa.png", z_blind)
    if confusion and all(confusion):
        plot_confusion(*confusion, forget, out / "collateral.png")
    return [out / name for name in FIGURES if (out / name).is_file()], latent


def log_to_tensorboard(log_dir: str | Path, paths: list[Path], baseline_history: list | None = None) -> None:
    """Each figure as a TensorBoard image (tag ``figures/<name>``) and the baseline curves as scalars
    (``baseline/train_nelbo``, ``baseline/test_nelbo`` per epoch): the cached baseline's own logs live in the cache."""

    with SummaryWriter(str(log_dir)) as w:
        for p in paths:
            img = mpimg.imread(p)[..., :3]  # (H, W, 3) float in [0, 1]
            w.add_image(f"figures/{Path(p).stem}", img, dataformats="HWC")
        for row in baseline_history or []:
            for key in ("train_nelbo", "test_nelbo"):
                w.add_scalar(f"baseline/{key}", row[key], row["epoch"])


def figures_for_run(run_dir: Path, results: dict, before, after, forget: list[int]) -> list[Path]:
    """The run's figures and TensorBoard copies from its results (baseline history, SA rows, z-blind nELBO);
    adds ``latent``, ``environment`` and ``timing_s.figures`` to ``results``."""

    t0, cfg = time.perf_counter(), results["config"]
    hist, rows = (results.get("baseline") or {}).get("history"), (results.get("sa_history") or {}).get("rows")
    z_blind = z_blind_nelbo((results.get("surrogate") or {}).get("nelbo", {}))
    data = load_mnist(False, cfg.get("data_dir"), cfg["train"]["limit"])
    confusion = tuple(results[w].get("confusion") for w in ("before", "after")) if "after" in results else None
    paths, results["latent"] = make_figures(run_dir, before, after, forget, data, hist, rows, z_blind,
                                            seed=cfg["train"]["seed"], confusion=confusion)
    log_to_tensorboard(Path(run_dir) / "tensorboard" / "figures", paths, hist)
    results.setdefault("timing_s", {})["figures"] = time.perf_counter() - t0
    results["environment"] = environment()
    return paths


def show_figures(paths: list[Path]) -> bool:
    """Show saved figures: inline in a notebook, in a window when there is a display; False when neither (the
    files are then the only output)."""
    try:
        from IPython import get_ipython  # optional: only in a notebook

        if get_ipython() is not None and hasattr(get_ipython(), "kernel"):
            from IPython.display import Image, display

            for p in paths:
                display(Image(filename=str(p)))
            return True
    except ImportError:
        pass
    if not os.environ.get("DISPLAY"):
        return False
    import matplotlib.pyplot as plt  # only here: pyplot picks an interactive backend for the display

    for p in paths:
        plt.figure(figsize=(10, 6))
        plt.imshow(mpimg.imread(p))
        plt.axis("off")
    plt.show()
    return True


def environment() -> dict:
    """Where the run ran (the report prints it next to the timings)."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
