"""Typed run configuration: dataclasses with YAML in and out, the checks on user input, and each field's one line
of help. Every default lives here once: the scripts' flags, their --help and docs/flags.md are generated from these
fields (``cli/flags.py``), and the comment beside a default says why it is that value."""
from __future__ import annotations

import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import yaml

from .models import ARCHS, ModelConfig
from .surrogate import get_surrogate
from .utils import UsageError, arg, atomic_write_text

MIXED_PRECISION = ("no", "fp16", "bf16")
DAMPEN_MODES = ("shrink", "reinit")  # dampen: the selected weights shrunk (SSD) or drawn afresh from the default init
DAMPEN_UNITS = ("weight", "unit")  # dampen: select single weights (SSD) or whole output units by their summed Fisher
REGULARISERS = ("ewc", "distance")  # the SA objective's third term: the paper's EWC, or the weight-distance push
NOISE_ANCHORS = ("noisy", "theta_star", "none")  # noise: EWC anchored at the noised weights, at θ*, or no EWC
TAR_SCORES = ("nelbo", "label")  # tar: push the class's nELBO after the attack, or the attacked model's own posterior of its label
TAR_STARTS = ("label-mean", "model", "both")  # tar: the simulated attacker starts like --relearn-start label-mean, from the model, or each in turn
PROTOCOLS = ("default", "paper")
SA_LR = {"conv": 1e-3, "linear": 5e-4}  # measured: the fastest that keep retained test nELBO within 2%


@dataclass
class TrainConfig:
    epochs: int = arg(50, "baseline epochs")  # test nELBO < 100 nats needs about 30+ passes over the 60k images
    batch: int = arg(256, "global batch per step, split across processes")
    lr: float = arg(5e-4, "Adam learning rate of baseline training")
    seed: int = arg(49, "seed of weights, shuffling and noise (same seed, same numbers on CPU)")
    limit: Optional[int] = arg(None, "use only the first N train and test images (smoke runs)", shown="all")


@dataclass
class SAConfig:
    forget: list = arg(help="classes c_f to forget, e.g. --forget 2 7", factory=lambda: [2], nargs="+", type=int)
    lam: float = arg(1.0, "lambda: weight of the EWC term beside batch-mean losses (= λ_paper / 256: the paper's "
                          "100 is 0.39 here)")  # measured (docs/method.md); the reference sums over 256 samples
    gamma: float = arg(1.0, "gamma: weight of the generative-replay term")
    sa_epochs: int = arg(10, "SA epochs; one is a pass over the replay set", flag=("--sa-epochs", "--sa_epochs"))
    lr: Optional[float] = arg(None, "SA Adam learning rate", flag="--sa-lr",
                              shown=", ".join(f"{a} {v:g}" for a, v in SA_LR.items()))
    batch: int = arg(256, "replay samples per SA step", flag="")
    surrogate_batch: int = arg(128, "surrogate samples per SA step")  # half the replay batch: same forgetting, 25% cheaper
    n_replay: int = arg(15360, "replay set size")  # 15360 / 256 = 60 steps per SA epoch, 600 steps by default
    surrogate: str = arg("uniform", "q(x|c_f): uniform | blank | class:K | images.npy")
    n_fisher: int = arg(20000, "samples the model draws for the Fisher")  # keeps Fisher + SA <= 10% of the baseline
    fisher_batch: int = arg(500, "Fisher samples per backward", flag="")  # of 250/500/1000: fastest on 2 CPU cores
    method: str = arg("sa", "unlearning method (sa_dist/methods/)")
    seed: Optional[int] = arg(None, "seed of the unlearning: replay, surrogate and noise draws", flag="--sa-seed",
                              shown="--seed")  # vary it alone to see SA's own spread on one baseline
    sam_rho: float = arg(0.0, "SAM on the surrogate term: radius ρ of its ascent step in weight space (0: off, the paper's SA)")  # arXiv:2502.05374; off until the benchmark shows a gain
    reset_label: bool = arg(False, "re-initialise the weights that read the forgotten labels before SA")  # slows relearning, costs retained quality (docs/verification.md)
    dampen_alpha: float = arg(5.0, "dampen: shrink the weights whose forgotten-class Fisher exceeds alpha x the retained one")  # SSD's selection threshold
    dampen_mode: str = arg("shrink", "dampen: the selected weights are shrunk (SSD) | reinit (weight matrices and kernels drawn afresh from the default init)")  # SSD's, and what committed dampen cells mean; reinit measures better (docs/robustness.md)
    dampen_unit: str = arg("weight", "dampen: select single weights (SSD) | unit (whole rows and output channels, by the Fisher summed over each)")  # weight until the benchmark shows unit's gain
    dampen_regulariser: str = arg("ewc", "dampen: the repair's third term: ewc (λ·EWC anchored at the dampened point) | distance (the distance method's push away from θ*, its α and cap; λ unused)")  # the paper's EWC until the benchmark shows the push's gain
    noise: float = arg(0.5, "noise: std of the Gaussian noise per weight, relative to the weight's magnitude")
    n_forget_fisher: int = arg(5000, "dampen: samples per Fisher of the forgotten and of the retained classes")  # cost within the SA budget
    noise_anchor: str = arg("noisy", "noise: where EWC pulls: noisy (the noised weights) | theta_star | none (λ = 0)")  # today's behaviour until the benchmark measures the others
    distance_alpha: float = arg(1e4, "distance: α, weight of the push -α·min(RMS(θ - θ*), cap) away from θ*")  # tiny linear cVAE, 40 steps: 2.7x SA's move for +1% replay nELBO (1e3: 1.5x)
    distance_target: float = arg(0.5, "distance: the cap of RMS(θ - θ*) as a fraction of RMS(θ*); the push stops there")  # --noise 0.5's RMS move
    distance_noise: float = arg(0.0, "distance: start from θ* noised as --noise does (0: start at θ*)")  # the push alone until measured
    distill_alpha: float = arg(0.5, "distill: shrink-perturb α, student = (1-α)·teacher + α·β·fresh init (1: a fresh model)")  # mid-way; the benchmark sweeps it
    distill_beta: float = arg(1.0, "distill: β, the scale of the fresh initialisation mixed into the student")  # 1: α = 1 is exactly a fresh model
    distill_steps: int = arg(3000, "distill: most student steps (fewer when the retained bar is met)")  # a quarter of retraining's 50 x 235 steps
    distill_lr: Optional[float] = arg(None, "distill: Adam learning rate of the student", shown="--lr")  # at α = 1 it trains from scratch, as the baseline
    distill_batch: int = arg(256, "distill: teacher samples per student step, split across processes")  # the baseline's batch
    distill_match: float = arg(0.0, "distill: weight of the decoder-matching BCE (student vs teacher means at the same z)")  # off: the student learns as a VAE
    distill_every: int = arg(100, "distill: student steps between checks of the retained bar")  # a check costs about one step: ~1% of the run
    distill_holdout: int = arg(1000, "distill: held-out teacher samples of the retained labels for the bar")  # paired, so its noise is well under the bar
    distill_bar: float = arg(0.02, "distill: stop once the student's held-out nELBO is within this fraction of the teacher's")  # SA's own retained bar (SA_LR)
    adversary_steps: int = arg(2, "adversary: Adam steps of the attacker's condition per SA step")  # kept across steps, so a few per step follow it
    adversary_lr: float = arg(1e-2, "adversary: Adam learning rate of the attacker's condition")  # the relearning grid's top lr
    adversary_weight: float = arg(1.0, "adversary: β, weight of the capped ascent on the class's nELBO at the attacker's condition")  # the surrogate term's own weight
    adversary_margin: float = arg(0.5, "adversary: the ascent stops once that nELBO is (1 + margin) x θ*'s own at the label")  # conv, forget 2, seed 0: retraining's best condition models θ*'s 2s at 1.32x θ*'s own (docs/robustness.md)
    tar_steps: int = arg(16, "tar: Adam steps of each simulated relearning attack")  # conv forget 2 seed 0 (benchmarks/attack_fit.py): after 16, retraining models θ*'s 2s at 1.34x θ*'s own, SA at 1.27x
    tar_every: int = arg(4, "tar: SA steps per simulated attack (1: an attack every step)")  # keeps 16 attack steps within the 25% cost bar on 2 CPU cores
    tar_lr: float = arg(1e-3, "tar: Adam learning rate of the simulated attack")  # the middle of the relearning grid (1e-4 to 1e-2)
    tar_k: int = arg(32, "tar: θ* samples of the forgotten class the simulated attacker fine-tunes on")  # between the benchmark's k = 10 and 100
    tar_weight: float = arg(1.0, "tar: β, weight of the capped ascent on the class's nELBO after the simulated attack")  # the surrogate term's own weight
    tar_margin: float = arg(0.4, "tar: the ascent stops once that nELBO is (1 + margin) x θ*'s own at the label")  # a cap just above retraining's 1.34x after the same attack
    tar_score: str = arg("nelbo", "tar: what the ascent after the attack raises: the class's nELBO (nelbo), or minus the log-odds of the attacked model's own posterior of the forgotten label for θ*'s samples, its ELBOs read as a Bayes classifier (label)")  # nelbo: measured first; label: nELBO rose while the judge still saw the class (docs/robustness.md)
    tar_p: float = arg(0.6, "tar (score label): the ascent stops once that posterior is down to p")  # retraining's is 0.57-0.60 after tar's own attack (benchmarks/attack_fit.py, both starts)
    tar_epochs: Optional[int] = arg(None, "tar: SA epochs that simulate attacks; the later ones repair with SA's own terms alone", shown="all")  # all: the method as first measured; a repair tail is measured in docs/robustness.md
    tar_start: str = arg("both", "tar: the simulated attacker starts from the model (model), with the forgotten labels' input weights at the retained mean (label-mean), or each in turn (both)")  # the benchmark's two attackers (--relearn-start)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sa: SAConfig = field(default_factory=SAConfig)
    eval_samples: int = arg(1000, "generated samples per class scored by the evaluator")
    protocol: str = arg("default", "default | paper: also score as the official code does (its classifier, "
                                   "1,000 8-bit samples)")
    mixed_precision: str = arg("no", "no | fp16 | bf16 (fp16 needs a GPU); the Fisher and EWC stay float32",
                               shown="no, or accelerate launch's setting")
    sync_bn: bool = arg(True, "several processes: SyncBatchNorm on CUDA, BN statistics averaged on CPU")
    threads: Optional[int] = arg(None, "torch threads of each CPU process (or $SA_DIST_THREADS)",
                                 shown="the cores free to it / its node's processes")  # accelerate launch sets 1
    data_dir: Optional[str] = arg(None, "folder with the four MNIST files", shown="the package's copy")
    quick: bool = arg(False, "a ~1 min smoke run on a CPU that already shows forgetting")
    figures: bool = arg(True, "draw the run's figures (PNGs, their TensorBoard copies, the latent block); "
                              "--no-figures: results, checkpoint and report without them")  # a sweep saves ~5 s a run

    @property
    def sa_seed(self) -> int:
        """The seed of the unlearning step: ``sa.seed``, else the run's ``train.seed``."""
        return self.train.seed if self.sa.seed is None else self.sa.seed


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "sa": SAConfig}
QUICK = {"eval_samples": 200, "train.epochs": 2, "sa.n_fisher": 5000, "sa.sa_epochs": 3}  # --quick's settings


def with_values(cfg: RunConfig, values: dict) -> RunConfig:
    """``cfg`` with ``{"section.field": value, "field": value}`` applied (sections: model, train, sa)."""
    top, sections = {}, {}
    for key, v in values.items():
        sec, _, name = key.rpartition(".")
        (sections.setdefault(sec, {}) if sec else top)[name] = v
    return replace(cfg, **top, **{sec: replace(getattr(cfg, sec), **kv) for sec, kv in sections.items()})


def apply_quick(cfg: RunConfig) -> RunConfig:
    """``--quick``: the smoke settings of ``QUICK``; any other config unchanged."""
    return with_values(cfg, {"quick": True, **QUICK}) if cfg.quick else cfg


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


class _Loader(yaml.SafeLoader):
    """YAML as users write numbers: PyYAML follows YAML 1.1, where ``3e-4`` (no dot) is a string; read it as the
    float it is in YAML 1.2 and in Python."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")  # 3e-4, 1E5, 2.5e3
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def read_yaml(text: str):
    """``yaml.safe_load`` that reads ``3e-4`` as a float (config files, ``--set`` and method-spec values)."""
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | Path) -> RunConfig:
    try:
        data = read_yaml(Path(path).read_text()) or {}
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
    """Every user-facing value checked once, with the argument's name in the message; the SA lr resolved."""
    m, t, s = cfg.model, cfg.train, cfg.sa
    if m.arch not in ARCHS:
        raise UsageError(f"--arch must be one of {', '.join(ARCHS)}, got {m.arch!r}")
    if m.z_dim < 1:
        raise UsageError(f"--z-dim must be >= 1, got {m.z_dim}")
    if m.width < 0:
        raise UsageError(f"--width must be >= 0 (0: the architecture's default), got {m.width}")
    for name, seed in (("--seed", t.seed), ("--sa-seed", s.seed)):
        if seed is not None and seed < 0:
            raise UsageError(f"{name} must be an integer >= 0, got {seed}")
    if t.limit is not None and t.limit < 1:
        raise UsageError(f"--limit must be a positive integer (or unset for all images), got {t.limit}")
    for name, v in (("--epochs", t.epochs), ("--batch", t.batch), ("--sa-epochs", s.sa_epochs),
                    ("sa.batch", s.batch), ("--surrogate-batch", s.surrogate_batch),
                    ("--n-replay", s.n_replay), ("--n-fisher", s.n_fisher),
                    ("sa.fisher_batch", s.fisher_batch), ("--eval-samples", cfg.eval_samples),
                    ("--n-forget-fisher", s.n_forget_fisher)):
        _positive(name, v)
    if s.lr is None:
        s.lr = SA_LR[m.arch]
    if s.distill_lr is None:
        s.distill_lr = t.lr
    for name, v in (("--lr", t.lr), ("--sa-lr", s.lr)):
        _positive(name, v, integer=False)
    _check_method_fields(s)
    _check_forget(s.forget, m.n_classes)
    if cfg.threads is not None and cfg.threads < 1:
        raise UsageError(f"--threads must be >= 1 (or unset for the cores / processes rule), got {cfg.threads}")
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {cfg.mixed_precision!r}")
    if cfg.protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {cfg.protocol!r}")
    get_surrogate(s.surrogate, s.forget, m.n_classes)
    return cfg


def _check_method_fields(s: SAConfig) -> None:
    """The fields of the methods beside SA (dampen, noise, distance, distill) and lam, gamma."""
    for name, v in (("--distill-steps", s.distill_steps), ("--distill-batch", s.distill_batch),
                    ("--distill-every", s.distill_every), ("--distill-holdout", s.distill_holdout),
                    ("--adversary-steps", s.adversary_steps), ("--tar-steps", s.tar_steps), ("--tar-k", s.tar_k),
                    ("--tar-every", s.tar_every)):
        _positive(name, v)
    for name, v in (("--dampen-alpha", s.dampen_alpha), ("--distance-target", s.distance_target),
                    ("--distill-lr", s.distill_lr), ("--adversary-lr", s.adversary_lr),
                    ("--tar-lr", s.tar_lr)):
        _positive(name, v, integer=False)
    for name, v in (("--lam", s.lam), ("--gamma", s.gamma), ("--noise", s.noise),
                    ("--distance-alpha", s.distance_alpha), ("--distance-noise", s.distance_noise),
                    ("--distill-beta", s.distill_beta), ("--distill-match", s.distill_match),
                    ("--distill-bar", s.distill_bar), ("--sam-rho", s.sam_rho),
                    ("--adversary-weight", s.adversary_weight), ("--adversary-margin", s.adversary_margin),
                    ("--tar-weight", s.tar_weight), ("--tar-margin", s.tar_margin)):
        if not (math.isfinite(v) and v >= 0):
            raise UsageError(f"{name} must be a finite number >= 0, got {v}")
    if not (0 <= s.distill_alpha <= 1):
        raise UsageError(f"--distill-alpha must be in [0, 1] (0: the teacher, 1: a fresh model), got {s.distill_alpha}")
    if s.dampen_mode not in DAMPEN_MODES:
        raise UsageError(f"--dampen-mode must be one of {', '.join(DAMPEN_MODES)}, got {s.dampen_mode!r}")
    if s.dampen_unit not in DAMPEN_UNITS:
        raise UsageError(f"--dampen-unit must be one of {', '.join(DAMPEN_UNITS)}, got {s.dampen_unit!r}")
    if s.dampen_regulariser not in REGULARISERS:
        raise UsageError(f"--dampen-regulariser must be one of {', '.join(REGULARISERS)}, got {s.dampen_regulariser!r}")
    if s.tar_score not in TAR_SCORES:
        raise UsageError(f"--tar-score must be one of {', '.join(TAR_SCORES)}, got {s.tar_score!r}")
    if not 0 < s.tar_p < 1:
        raise UsageError(f"--tar-p must be in (0, 1), got {s.tar_p}")
    if s.tar_epochs is not None and not 1 <= s.tar_epochs <= s.sa_epochs:
        raise UsageError(f"--tar-epochs must be between 1 and --sa-epochs ({s.sa_epochs}), got {s.tar_epochs}")
    if s.tar_start not in TAR_STARTS:
        raise UsageError(f"--tar-start must be one of {', '.join(TAR_STARTS)}, got {s.tar_start!r}")
    if s.noise_anchor not in NOISE_ANCHORS:
        raise UsageError(f"--noise-anchor must be one of {', '.join(NOISE_ANCHORS)}, got {s.noise_anchor!r}")


def _check_forget(forget: list, n_classes: int) -> None:
    if not forget or any(not isinstance(c, int) or not 0 <= c < n_classes for c in forget):
        raise UsageError(f"--forget takes classes in 0-{n_classes - 1}, got {forget}")
    if len(set(forget)) != len(forget):
        raise UsageError(f"--forget has a repeated class: {forget} (distinct classes in 0-{n_classes - 1})")
    if len(forget) >= n_classes:
        raise UsageError(f"--forget cannot take all {n_classes} classes: at most {n_classes - 1}, so something is "
                         "retained")
