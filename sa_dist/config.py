"""Typed run configuration: dataclasses with YAML in and out, and the checks on user input."""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import yaml

from .methods import method_names
from .models import ARCHS, ModelConfig
from .utils import UsageError, atomic_write_text

SURROGATE_KINDS = ("uniform", "blank")  # plus "class:K" and a path to an .npy of images
MIXED_PRECISION = ("no", "fp16", "bf16")
METHODS = method_names()  # --method: sa, then the baselines/ablations, one module each in sa_dist/methods/
SA_LR = {"conv": 1e-3, "linear": 5e-4}  # measured: the fastest that keep retained test nELBO within 2%


@dataclass
class TrainConfig:
    epochs: int = 50  # baseline passes over the 60k training images (test nELBO < 100 nats needs about 30+)
    batch: int = 256  # global batch per step, split across processes
    lr: float = 5e-4  # Adam learning rate of baseline training
    seed: int = 49  # seeds weights, shuffling and noise: same seed, same numbers on CPU
    limit: Optional[int] = None  # keep only the first N train and test images (tests and smoke runs)


@dataclass
class SAConfig:
    forget: list = field(default_factory=lambda: [2])  # classes c_f to forget (one or more, not all)
    lam: float = 1.0  # lambda of the EWC penalty; the paper's 100 keeps P(y=c_f) ~ 0.9 here (README, "Choosing lambda")
    gamma: float = 1.0  # gamma: weight of the generative-replay term on the retained classes
    sa_epochs: int = 10  # SA epochs; one SA epoch is one pass over the n_replay replay samples
    lr: Optional[float] = None  # SA Adam lr; None = per arch: conv 1e-3, linear 5e-4 (README, "Choosing the defaults")
    batch: int = 256  # replay samples per step
    surrogate_batch: int = 128  # surrogate samples per step: half the replay batch, same forgetting, 25% cheaper
    n_replay: int = 15360  # replay set size: 15360 / 256 = 60 steps per SA epoch, 600 steps by default
    surrogate: str = "uniform"  # q(x|c_f): uniform | blank | class:K | path/to/images.npy
    n_fisher: int = 20000  # Fisher samples: 20k keeps Fisher + SA <= 10% of baseline training (paper: 50k)
    fisher_batch: int = 500  # samples per Fisher batch (the fastest on a 2-core CPU)
    method: str = "sa"  # sa | retrain | naive | no_ewc | no_replay | replay_only
    reset_label: bool = False  # re-initialise the weights that read the forgotten labels before SA (README, "Verification")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sa: SAConfig = field(default_factory=SAConfig)
    eval_samples: int = 1000  # generated samples per class scored by the evaluator
    mixed_precision: str = "no"  # no | fp16 | bf16 (fp16 on GPU only), passed to Accelerate; Fisher and EWC stay float32
    sync_bn: bool = True  # several processes: SyncBatchNorm on CUDA; on CPU, BN running stats averaged each epoch
    data_dir: Optional[str] = None  # another copy of the four MNIST files (default: the package's own)
    quick: bool = False  # a ~90 s smoke run that already shows forgetting


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "sa": SAConfig}


def _check_type(where: str, value, hint):
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          list: lambda v: isinstance(v, list)}.get(hint, lambda v: True)
    if not ok(value):
        raise UsageError(f"config {where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(f"config {where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for k, v in data.items():
        sub = SECTIONS.get(k) if cls is RunConfig else None
        if sub is not None:
            if not isinstance(v, dict):
                raise UsageError(f"config {where}{k}: expected a mapping, got {v!r}")
            kwargs[k] = _build(sub, v, f"{where}{k}.")
        else:
            _check_type(f"{where}{k}", v, hints[k])
            kwargs[k] = float(v) if hints[k] is float else v
    return cls(**kwargs)


def load_config(path: str | Path) -> RunConfig:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise UsageError(f"--config {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of sections (model, train, sa)")
    return _build(RunConfig, data, "")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(asdict(cfg), sort_keys=False))


def _positive(name: str, value, integer: bool = True):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UsageError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value}")


def validate(cfg: RunConfig) -> RunConfig:
    """Every user-facing value checked once, with the argument's name in the message."""
    m, t, s = cfg.model, cfg.train, cfg.sa
    if m.arch not in ARCHS:
        raise UsageError(f"--arch must be one of {', '.join(ARCHS)}, got {m.arch!r}")
    if m.z_dim < 1:
        raise UsageError(f"--z-dim must be >= 1, got {m.z_dim}")
    if m.width < 0:
        raise UsageError(f"--width must be >= 0 (0: the architecture's default), got {m.width}")
    if t.seed < 0:
        raise UsageError(f"--seed must be an integer >= 0, got {t.seed}")
    if t.limit is not None and t.limit < 1:
        raise UsageError(f"--limit must be a positive integer (or unset for all images), got {t.limit}")
    if s.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {s.method!r}")
    for name, v in (("--epochs", t.epochs), ("--batch", t.batch), ("--sa_epochs", s.sa_epochs),
                    ("sa.batch", s.batch), ("--surrogate-batch", s.surrogate_batch),
                    ("sa.n_replay", s.n_replay), ("--n-fisher", s.n_fisher),
                    ("sa.fisher_batch", s.fisher_batch), ("eval_samples", cfg.eval_samples)):
        _positive(name, v)
    if s.lr is None:
        s.lr = SA_LR[m.arch]
    for name, v in (("--lr", t.lr), ("--sa-lr", s.lr)):
        _positive(name, v, integer=False)
    for name, v in (("--lam", s.lam), ("--gamma", s.gamma)):
        if not (math.isfinite(v) and v >= 0):
            raise UsageError(f"{name} must be a finite number >= 0, got {v}")
    forget = s.forget
    if not forget or any(not isinstance(c, int) or not 0 <= c < m.n_classes for c in forget):
        raise UsageError(f"--forget takes classes in 0-{m.n_classes - 1}, got {forget}")
    if len(set(forget)) != len(forget):
        raise UsageError(f"--forget has a repeated class: {forget} (distinct classes in 0-{m.n_classes - 1})")
    if len(forget) >= m.n_classes:
        raise UsageError(f"--forget cannot take all {m.n_classes} classes: at most {m.n_classes - 1}, "
                         "so something is retained")
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {cfg.mixed_precision!r}")
    _check_surrogate(s.surrogate, forget, m.n_classes)
    return cfg


def _check_surrogate(kind: str, forget: list, n_classes: int) -> None:
    """Before anything runs: the kind, K of class:K, and a user .npy's shape and range."""
    if kind.startswith("class:"):
        k = kind.split(":", 1)[1]
        if not (k.isdigit() and int(k) < n_classes and int(k) not in forget):
            raise UsageError(f"--surrogate class:K needs a retained class K in 0-{n_classes - 1} "
                             f"(not one of --forget {forget}), got {kind!r}")
    elif kind.endswith(".npy"):
        from .sa import load_user_images

        load_user_images(kind)
    elif kind not in SURROGATE_KINDS:
        raise UsageError(f"--surrogate must be uniform, blank, class:K or a path to an .npy file, got {kind!r}")
