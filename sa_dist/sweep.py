"""A grid of unlearning runs: forgotten classes x lambda x gamma x method, each point a run directory.

One grid definition serves both ways of running it: ``scripts/sweep.py`` runs the points one after the other in
one process from one cached baseline; ``slurm/sweep.sh`` asks ``scripts/sweep.py --task-args I`` for point I's
``scripts/unlearn.py`` arguments in each array task. Points a method does not read collapse (``retrain`` ignores
lambda and gamma, ``no_ewc`` lambda), so every point is a distinct run.
"""
from __future__ import annotations

import itertools
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from .methods import get_method
from .utils import UsageError


@dataclass(frozen=True)
class Point:
    method: str
    forget: tuple[int, ...]
    lam: float | None  # None: the method does not read it (or fixes it)
    gamma: float | None

    def name(self, arch: str) -> str:
        parts = [arch, self.method, "forget" + "_".join(map(str, self.forget))]
        parts += [f"lam{self.lam:g}"] if self.lam is not None else []
        parts += [f"gamma{self.gamma:g}"] if self.gamma is not None else []
        return "-".join(parts)

    def args(self) -> list[str]:
        """This point's flags for ``scripts/unlearn.py``."""
        out = ["--method", self.method, "--forget", *map(str, self.forget)]
        out += ["--lam", f"{self.lam:g}"] if self.lam is not None else []
        out += ["--gamma", f"{self.gamma:g}"] if self.gamma is not None else []
        return out


def parse_forget(groups: list[str]) -> list[tuple[int, ...]]:
    """``["2", "0", "2,7"]`` -> ``[(2,), (0,), (2, 7)]``: one grid value per group (``2,7`` forgets both)."""
    out = []
    for g in groups:
        try:
            out.append(tuple(int(c) for c in g.split(",")))
        except ValueError:
            raise UsageError(f"--forget takes classes or comma-joined groups like 2,7; got {g!r}") from None
    return out


def make_grid(methods: list[str], forget: list[tuple[int, ...]], lams: list[float], gammas: list[float]) -> list[Point]:
    """Every distinct point of methods x forget x lams x gammas, in that nesting order."""
    points, seen = [], set()
    for name, f, lam, gamma in itertools.product(methods, forget, lams, gammas):
        uses = get_method(name).uses
        p = Point(name, f, lam if "lam" in uses else None, gamma if "gamma" in uses else None)
        if p not in seen:
            seen.add(p)
            points.append(p)
    return points


def point_dir(out_dir: Path, point: Point, arch: str) -> Path:
    return Path(out_dir) / point.name(arch)


def task_args(point: Point, out_dir: Path, arch: str, extra: list[str]) -> str:
    """The shell-quoted ``scripts/unlearn.py`` arguments of one point (empty when its run already finished)."""
    run_dir = point_dir(out_dir, point, arch)
    if (run_dir / "results.json").exists():
        return ""
    return shlex.join([*extra, *point.args(), "--run-dir", str(run_dir)])


def prepare(cfg, methods: list[str], checkpoint: str | None = None, accelerator=None) -> dict:
    """Fill the cache every point shares: the evaluator, the baseline and (if a method needs it) its Fisher.
    Run once before the points (the SLURM dependency job); returns what was cached or computed."""
    from .evaluator import get_evaluator
    from .pipeline import get_baseline, get_fisher
    from .train import make_accelerator

    accelerator = accelerator or make_accelerator(mixed_precision=cfg.mixed_precision)
    get_evaluator(accelerator, cfg.data_dir, limit=cfg.train.limit)
    model, base = get_baseline(cfg, accelerator, checkpoint)
    out = {"baseline": base["key"], "baseline_cached": base["cached"]}
    if any(get_method(m).needs_fisher for m in methods):
        _, seconds, cached = get_fisher(cfg, model, base["key"], accelerator)
        out.update(fisher_seconds=seconds, fisher_cached=cached)
    return out


def run_points(points: list[Point], config_of, out_dir: Path, checkpoint: str | None = None, log=print) -> list:
    """Run every unfinished point in this process, one after the other (one accelerator, one cached baseline).
    ``config_of(point)`` gives its RunConfig. A point that fails is reported and the others still run;
    returns the (point, error) failures."""
    from .pipeline import run_unlearn
    from .train import make_accelerator
    from .utils import UserError

    accelerator, failures = None, []
    for i, point in enumerate(points):
        cfg = config_of(point)
        run_dir = point_dir(out_dir, point, cfg.model.arch)
        if (run_dir / "results.json").exists():
            log(f"[{i + 1}/{len(points)}] {run_dir}: finished before, kept")
            continue
        accelerator = accelerator or make_accelerator(mixed_precision=cfg.mixed_precision)
        log(f"[{i + 1}/{len(points)}] {run_dir} (load average {os.getloadavg()[0]:.2f})")
        try:
            t0 = time.perf_counter()
            run_unlearn(cfg, run_dir=str(run_dir), checkpoint=checkpoint, accelerator=accelerator)
            log(f"[{i + 1}/{len(points)}] done in {time.perf_counter() - t0:.0f} s wall "
                f"(load average {os.getloadavg()[0]:.2f})")
        except UserError as e:
            log(f"[{i + 1}/{len(points)}] {run_dir} failed: {e}")
            failures.append((point, str(e)))
    return failures
