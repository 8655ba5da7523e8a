"""``scripts/train_baseline.py``: train one cVAE into a run directory, with per-class metrics."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from accelerate.utils import set_seed

from .checkpoint import save_checkpoint
from .config import RunConfig, save_config
from .data import load_mnist, loaders, prepare_mnist
from .evaluate import class_metrics
from .evaluator import get_evaluator
from .models import build_model
from .train import make_accelerator, train_vae
from .utils import write_json


def train_baseline(cfg: RunConfig, accelerator, log_dir: Path | None, exclude: tuple[int, ...] = (),
                   checkpointer=None) -> tuple:
    """Baseline training of ``cfg`` on real MNIST: ``(plain model, per-epoch history, seconds)``.
    ``exclude``: classes left out of the training and test data (``retrain``, exact unlearning).
    ``checkpointer``: a ``resume.Checkpointer`` (resumable state, resume)."""
    set_seed(cfg.train.seed)
    keep = [c for c in range(cfg.model.n_classes) if c not in exclude] if exclude else None
    tr, te = loaders(cfg.train.batch, cfg.train.seed, cfg.data_dir, cfg.train.limit, classes=keep)
    t0 = time.perf_counter()
    model, history = train_vae(build_model(cfg.model), tr, te, accelerator, cfg.train.epochs, cfg.train.lr,
                               log_dir=log_dir, config=asdict(cfg), checkpointer=checkpointer, sync_bn=cfg.sync_bn)
    return model, history, time.perf_counter() - t0


def save_baseline(path: Path, model, history: list, seconds: float, cfg: RunConfig) -> None:
    """The checkpoint with its training seconds, history and run config in the metadata (main process)."""
    save_checkpoint(path, model, extra={"seconds": seconds, "history": history, "config": asdict(cfg)})


def run_baseline(cfg: RunConfig, run_dir: str | None = None, accelerator=None,
                 resume: bool = False) -> tuple[dict | None, Path]:
    """Train, save ``baseline.safetensors``, ``config.yaml``, ``metrics.json`` (main process) and TensorBoard logs.
    ``resume``: continue the interrupted run in ``run_dir`` from its saved state."""
    from .pipeline import new_run_dir
    from .resume import checkpointer, drop_state

    prepare_mnist(cfg.data_dir)  # a bad data file costs one line before anything is written
    accelerator = accelerator or make_accelerator(mixed_precision=cfg.mixed_precision)
    out = new_run_dir(cfg, run_dir, accelerator, resume, finished="baseline.safetensors")
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    model, history, seconds = train_baseline(cfg, accelerator, out / "tensorboard",
                                             checkpointer=checkpointer(accelerator, out, "baseline"))
    metrics = None
    if accelerator.is_main_process:
        save_baseline(out / "baseline.safetensors", model, history, seconds, cfg)
        evaluator, ev_info = get_evaluator(None, cfg.data_dir, limit=cfg.train.limit)
        x, y = load_mnist(False, cfg.data_dir, cfg.train.limit)
        metrics = {"config": asdict(cfg), "processes": accelerator.num_processes, "seconds": seconds,
                   "seconds_per_epoch": seconds / cfg.train.epochs, "history": history, "evaluator": ev_info,
                   **class_metrics(model, evaluator, x, y, cfg.eval_samples, cfg.train.seed)}
        write_json(out / "metrics.json", metrics)
        pc = metrics["per_class"]
        accelerator.print(f"test nELBO {history[-1]['test_nelbo']:.2f}, mean sample_acc "
                          f"{sum(v['sample_acc'] for v in pc.values()) / len(pc):.4f}, {seconds:.0f} s; "
                          f"wrote {out}/baseline.safetensors")
        drop_state(out)
    accelerator.wait_for_everyone()
    return metrics, out
