"""Command-line plumbing shared by the scripts: flags -> RunConfig, and one-line errors instead of tracebacks."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from .config import METHODS, RunConfig, load_config, validate
from .utils import UsageError, UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line on stderr (exit 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _rank() -> str:
    """``[rank N] `` under torchrun / accelerate launch with several processes, else empty."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    return f"[rank {os.environ['RANK']}] " if several else ""


def _sigterm(signum, frame):
    from .resume import Interrupted

    raise Interrupted("interrupted by SIGTERM", signum)


def run_main(fn) -> None:
    """Call ``fn()``; a ``UserError`` becomes ``error: <message>`` on stderr and its exit code. Outside the
    training loops (which save a resumable state first) SIGINT and SIGTERM stop the run with one line too."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        fn()
    except UserError as e:
        sys.stderr.write(f"error: {_rank()}{e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(f"error: {_rank()}interrupted\n")
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
    p.add_argument("--mixed-precision", help="no | fp16 | bf16 (default no, or accelerate launch's setting; fp16 "
                   "needs a GPU). The Fisher and the EWC penalty are always float32")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="several processes: BatchNorm -> SyncBatchNorm on GPU, running stats averaged over ranks "
                   "each epoch on CPU (default on)")
    p.add_argument("--run-dir", help="output folder (default runs/<arch>-...-<time>); never overwritten")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR with its config.yaml")


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
    p.add_argument("--reset-label", action="store_true", default=None,
                   help="re-initialise the weights that read the forgotten labels before SA (slows relearning)")
    p.add_argument("--checkpoint", help="unlearn this baseline .safetensors instead of training/caching one")
    p.add_argument("--method", choices=METHODS, help="sa (default) or a baseline/ablation: " + ", ".join(METHODS[1:]))
    p.add_argument("--quick", action="store_true", help="~90 s smoke run on a CPU that already shows forgetting")


FLAG_TO_FIELD = {"arch": ("model", "arch"), "z_dim": ("model", "z_dim"), "width": ("model", "width"),
                 "epochs": ("train", "epochs"), "batch": ("train", "batch"), "lr": ("train", "lr"),
                 "seed": ("train", "seed"), "limit": ("train", "limit"), "forget": ("sa", "forget"),
                 "lam": ("sa", "lam"), "gamma": ("sa", "gamma"), "sa_epochs": ("sa", "sa_epochs"),
                 "sa_lr": ("sa", "lr"), "n_replay": ("sa", "n_replay"),
                 "surrogate_batch": ("sa", "surrogate_batch"), "n_fisher": ("sa", "n_fisher"),
                 "surrogate": ("sa", "surrogate"), "method": ("sa", "method"), "reset_label": ("sa", "reset_label"),
                 "data_dir": (None, "data_dir"), "mixed_precision": (None, "mixed_precision"),
                 "eval_samples": (None, "eval_samples"), "sync_bn": (None, "sync_bn")}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Dataclass defaults <- ``--config`` YAML <- ``accelerate launch``'s mixed precision (if not "no") <- flags;
    validated. ``--resume DIR``: DIR's config.yaml alone."""
    if getattr(args, "resume", None):
        return resume_config(args)
    cfg = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    updates: dict = {"model": {}, "train": {}, "sa": {}, None: {}}
    launcher_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()  # set by accelerate launch
    if launcher_mp != "no":
        updates[None]["mixed_precision"] = launcher_mp
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


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The config of the interrupted run ``--resume DIR``; other config flags are refused (it must not change)."""
    given = [f"--{f.replace('_', '-')}" for f in [*FLAG_TO_FIELD, "config", "run_dir", "quick"]
             if getattr(args, f, None) not in (None, False)]
    if given:
        raise UsageError(f"--resume continues a run with its own config.yaml; drop {', '.join(given)}")
    path = Path(args.resume) / "config.yaml"
    if not path.is_file():
        raise UsageError(f"--resume {args.resume}: no config.yaml there (not a sa_dist run directory)")
    if (Path(args.resume) / "results.json").exists():
        raise UsageError(f"--resume {args.resume}: that run already finished (results.json)")
    return validate(load_config(path))
