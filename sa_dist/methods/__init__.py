"""Unlearning methods behind ``scripts/unlearn.py --method NAME``: one module per method, one interface.

A method is a module ``sa_dist/methods/NAME.py`` with

    USES = ("lam", "gamma")      # the SAConfig fields it reads (a sweep varies only these for it)
    OVERRIDES = {"lam": 0.0}     # SAConfig fields it fixes (recorded in config.yaml and results.json)
    NEEDS_FISHER = True          # the pipeline computes (or loads) the Fisher before timing starts
    MARKER = "o"                 # its marker in the sweep's trade-off plot
    def unlearn(ctx: Context) -> Outcome: ...

Adding a method is adding one such file: the names come from the package's files, so ``--method`` (choices and
validation), the sweep and the aggregate tables know it at once. The pipeline gives every method the same baseline
theta*, times ``unlearn`` and evaluates its model with the same evaluator, so all methods land in the same
results.json schema.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from ..utils import UsageError


def method_names() -> tuple[str, ...]:
    """``sa`` first, then every other module of this package (alphabetically)."""
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return ("sa", *[n for n in found if n != "sa"])


@dataclass
class Context:
    """What every method gets: the resolved config, theta* (plain, eval mode), the Fisher (None unless the
    method asked for it), the accelerator and a TensorBoard folder for its curves."""

    cfg: Any  # RunConfig, with the method's OVERRIDES applied
    original: Any  # the baseline cVAE theta*
    fisher: Optional[dict]
    accelerator: Any
    log_dir: Optional[Path] = None
    ckpt: Any = None  # the resume.Checkpointer for the method's loop (SIGINT/SIGTERM state, --resume)


@dataclass
class Outcome:
    """A method's result: the unlearned model, per-step (or per-epoch) rows of floats, and facts to report."""

    model: Any
    history: list = field(default_factory=list)
    seconds: Optional[float] = None  # its own cost when not the wall time of ``unlearn`` (retrain from the cache)
    cached: bool = False  # the model came from the cache (``seconds`` is what computing it took)
    info: dict = field(default_factory=dict)  # method-specific facts for results.json ("method_info")
    sa_terms: bool = False  # history rows are SA terms (results.json "sa_history"), else "method_history"


@dataclass(frozen=True)
class Method:
    name: str
    unlearn: Callable[[Context], Outcome]
    uses: tuple = ()
    overrides: dict = field(default_factory=dict)
    needs_fisher: bool = False
    marker: str = "o"
    doc: str = ""  # the module's first docstring line

    def configure(self, cfg):
        """``cfg`` with this method's fixed SAConfig values (``no_ewc``: lam 0)."""
        return replace(cfg, sa=replace(cfg.sa, **self.overrides)) if self.overrides else cfg


def get_method(name: str) -> Method:
    """The method named ``name`` (one of ``method_names()``)."""
    if name not in method_names():
        raise UsageError(f"--method must be one of {', '.join(method_names())}, got {name!r}")
    mod = importlib.import_module(f"{__name__}.{name}")
    return Method(name, mod.unlearn, tuple(getattr(mod, "USES", ())), dict(getattr(mod, "OVERRIDES", {})),
                  bool(getattr(mod, "NEEDS_FISHER", False)), getattr(mod, "MARKER", "o"),
                  (mod.__doc__ or "").strip().splitlines()[0])
