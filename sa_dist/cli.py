"""Command-line plumbing shared by the scripts: flags -> RunConfig, and one-line errors instead of tracebacks."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from .config import METHODS, RunConfig, load_config, validate
from .utils import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line on stderr (exit 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def run_main(fn) -> None:
    """Call ``fn()``; a ``UserError`` becomes ``error: <message>`` on stderr and its exit code."""
    try:
        fn()
    except UserError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Flags of baseline training (defaults None: unset flags keep the config file's or the dataclass's value)."""
    p.add_argument("--config", help="YAML config (sections model/train/sa); flags override it")
    p.add_argument("--arch", help="conv | linear (default conv)")
    p.add_argument("--z-dim", type=int, help="latent size (default 8)")
    p.add_argument("--width", type=int, help="conv: first-layer channels (16); linear: first hidden size (512)")
    p.add_argument("--epochs", type=int, help="baseline epochs (default 50)")
    p.add_argument("--batch", type=int, help="global batch size (default 256)")
    p.add_argument("--lr", type=float, help="baseline Adam learning rate (default 5e-4)")
    p.add_argument("--seed", type=int, help="seed (default 49)")
    p.add_argument("--limit", type=int, help="use only the first N train and test images (smoke runs)")
    p.add_argument("--data-dir", help="folder with the four MNIST files (default: the package's copy)")
    p.add_argument("--mixed-precision", help="no | fp16 | bf16 (default no)")
    p.add_argument("--run-dir", help="output folder (default runs/<arch>-...-<time>); never overwritten")


def add_sa_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--forget", type=int, nargs="+", help="classes to forget (default 2), e.g. --forget 2 7")
    p.add_argument("--lam", type=float, help="lambda, weight of the EWC term (default 1)")
    p.add_argument("--gamma", type=float, help="gamma, weight of the replay term (default 1)")
    p.add_argument("--sa_epochs", "--sa-epochs", dest="sa_epochs", type=int,
                   help="SA epochs, one = a pass over the replay set (default 10)")
    p.add_argument("--sa-lr", type=float, help="SA Adam learning rate (default: conv 1e-3, linear 5e-4)")
    p.add_argument("--n-replay", type=int, help="replay set size (default 15360: 60 steps of 256 per SA epoch)")
    p.add_argument("--surrogate-batch", type=int, help="surrogate samples per SA step (default 128)")
    p.add_argument("--n-fisher", type=int, help="samples for the Fisher (default 20000)")
    p.add_argument("--surrogate", help="uniform | blank | class:K | images.npy (default uniform)")
    p.add_argument("--eval-samples", type=int, help="samples per class scored by the evaluator (default 1000)")
    p.add_argument("--checkpoint", help="unlearn this baseline .safetensors instead of training/caching one")
    p.add_argument("--method", choices=METHODS, help="sa (default) or a baseline/ablation: " + ", ".join(METHODS[1:]))
    p.add_argument("--quick", action="store_true", help="~90 s smoke run on a CPU that already shows forgetting")


FLAG_TO_FIELD = {"arch": ("model", "arch"), "z_dim": ("model", "z_dim"), "width": ("model", "width"),
                 "epochs": ("train", "epochs"), "batch": ("train", "batch"), "lr": ("train", "lr"),
                 "seed": ("train", "seed"), "limit": ("train", "limit"), "forget": ("sa", "forget"),
                 "lam": ("sa", "lam"), "gamma": ("sa", "gamma"), "sa_epochs": ("sa", "sa_epochs"),
                 "sa_lr": ("sa", "lr"), "n_replay": ("sa", "n_replay"),
                 "surrogate_batch": ("sa", "surrogate_batch"), "n_fisher": ("sa", "n_fisher"),
                 "surrogate": ("sa", "surrogate"), "method": ("sa", "method"), "data_dir": (None, "data_dir"),
                 "mixed_precision": (None, "mixed_precision"), "eval_samples": (None, "eval_samples")}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Dataclass defaults <- ``--config`` YAML <- flags; validated."""
    cfg = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    updates: dict = {"model": {}, "train": {}, "sa": {}, None: {}}
    for flag, (section, name) in FLAG_TO_FIELD.items():
        if getattr(args, flag, None) is not None:
            updates[section][name] = getattr(args, flag)
    if updates["model"].get("arch", cfg.model.arch) != cfg.model.arch and "width" not in updates["model"]:
        updates["model"]["width"] = 0  # the new arch's default width
    cfg = replace(cfg, **updates[None], **{sec: replace(getattr(cfg, sec), **kv)
                                            for sec, kv in updates.items() if sec is not None})
    if getattr(args, "quick", False):
        cfg = replace(cfg, quick=True)
    return validate(cfg)
