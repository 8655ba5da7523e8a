"""The Python API as users of the method know it:

    from sa_dist import SelectiveAmnesiaVAE
    m = SelectiveAmnesiaVAE(z_dim=8, forget_class=2)
    m.train_baseline(epochs=100)
    m.selective_amnesia(epochs=10, lambda_reg=1)
    m.visualize_results()
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

from .amnesia import selective_amnesia
from .analysis.figures import make_figures, show_figures
from .checkpoint import save_checkpoint
from .config import RunConfig, SAConfig, TrainConfig, validate
from .data import load_mnist
from .fisher import diag_fisher
from .models import ModelConfig
from .pipeline import evaluate_run
from .runtime import make_accelerator
from .train import train_baseline


class SelectiveAmnesiaVAE:
    """A cVAE, its original parameters theta* and, after ``selective_amnesia``, the unlearned model."""

    def __init__(self, z_dim: int = 8, forget_class: int | list[int] = 2, arch: str = "conv", seed: int = 49,
                 data_dir: str | None = None, limit: int | None = None, accelerator=None):
        forget = [forget_class] if isinstance(forget_class, int) else list(forget_class)
        self.cfg = validate(RunConfig(model=ModelConfig(arch=arch, z_dim=z_dim),
                                      train=TrainConfig(seed=seed, limit=limit), sa=SAConfig(forget=forget),
                                      data_dir=data_dir))
        self.accelerator = accelerator or make_accelerator()
        self.original = self.unlearned = None
        self.history: dict[str, list] = {}

    def train_baseline(self, epochs: int = TrainConfig.epochs, batch: int = TrainConfig.batch,
                       lr: float = TrainConfig.lr):
        """Train theta* on all classes (real MNIST)."""
        self.cfg = validate(replace(self.cfg, train=replace(self.cfg.train, epochs=epochs, batch=batch, lr=lr)))
        self.original, self.history["baseline"], _ = train_baseline(self.cfg, self.accelerator, log_dir=None)
        return self

    def selective_amnesia(self, epochs: int = SAConfig.sa_epochs, lambda_reg: float = SAConfig.lam,
                          gamma: float = SAConfig.gamma, lr: float | None = None, n_fisher: int = SAConfig.n_fisher,
                          surrogate: str = SAConfig.surrogate, **settings):
        """Fisher of theta*, then SA: surrogate on the forgotten class, replay and EWC on the rest.
        ``settings``: any other ``SAConfig`` field by name (``n_replay=...``)."""
        if self.original is None:
            raise RuntimeError("call train_baseline() first")
        s = replace(self.cfg.sa, sa_epochs=epochs, lam=lambda_reg, gamma=gamma, lr=lr, n_fisher=n_fisher,
                    surrogate=surrogate, **settings)
        self.cfg = validate(replace(self.cfg, sa=s))
        on_device = copy.deepcopy(self.original).to(self.accelerator.device)  # as the pipeline computes it
        self.fisher = diag_fisher(on_device, n_fisher, seed=self.cfg.train.seed, batch=s.fisher_batch,
                                  accelerator=self.accelerator)
        self.unlearned, self.history["sa"] = selective_amnesia(self.original, self.fisher, self.accelerator, self.cfg)
        return self

    def evaluate(self, n_samples: int = 1000) -> dict:
        """results.json's ``before``/``after``/``surrogate``/``summary`` blocks for this object."""
        return evaluate_run(replace(self.cfg, eval_samples=n_samples), self.original, self.unlearned,
                            self.accelerator.device)[0]

    def visualize_results(self, out_dir: str | Path = "sa_figures", latent_method: str = "pca") -> list[Path]:
        """The run's figures (samples before/after, latent space, manifold traversals, curves) saved as PNGs in
        ``out_dir``, and shown when there is a display; ``self.latent`` gets the silhouette numbers."""
        if self.unlearned is None:
            raise RuntimeError("call selective_amnesia() first")
        data = load_mnist(False, self.cfg.data_dir, self.cfg.train.limit)
        paths, self.latent = make_figures(out_dir, self.original, self.unlearned, self.cfg.sa.forget, data,
                                          self.history.get("baseline"), self.history.get("sa"),
                                          seed=self.cfg.train.seed, latent_method=latent_method)
        show_figures(paths)
        return paths

    def save(self, out_dir: str | Path) -> None:
        """``baseline.safetensors`` and, once unlearned, ``unlearned.safetensors``."""
        if self.accelerator.is_main_process:
            save_checkpoint(Path(out_dir) / "baseline.safetensors", self.original)
            if self.unlearned is not None:
                save_checkpoint(Path(out_dir) / "unlearned.safetensors", self.unlearned, kind="unlearned",
                                extra={"forget": self.cfg.sa.forget})
