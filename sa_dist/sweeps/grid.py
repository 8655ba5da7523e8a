"""A grid of unlearning runs: method x forgotten classes x lambda x gamma x seed, each point a run directory.

One grid definition serves both ways of running it: ``scripts/sweep.py`` runs the points one after the other in
one process from one cached baseline; ``slurm/sweep.sh`` asks ``scripts/sweep.py --task-args I`` for point I's
``scripts/unlearn.py`` arguments in each array task. Points a method does not read collapse (``retrain`` ignores
lambda and gamma, ``no_ewc`` lambda), so every point is a distinct run. A seed sets ``--seed``: the baseline's seed
and, with it, the unlearning's, so a point's spread over seeds covers both.
"""
from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, validate, with_values
from ..methods import get_method
from ..utils import UsageError


def number(x: float) -> str:
    """``x`` as the shortest text that reads back as exactly ``x`` (1.0 -> "1", 0.1 -> "0.1", 1e-07 -> "1e-07")."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Point:
    method: str
    forget: tuple[int, ...]
    lam: float | None  # None: the method does not read it (or fixes it)
    gamma: float | None
    seed: int | None = None  # None: the base config's seed

    def name(self, arch: str) -> str:
        parts = [arch, self.method, "forget" + "_".join(map(str, self.forget))]
        parts += [f"lam{number(self.lam)}"] if self.lam is not None else []
        parts += [f"gamma{number(self.gamma)}"] if self.gamma is not None else []
        parts += [f"seed{self.seed}"] if self.seed is not None else []
        return "-".join(parts)

    def values(self) -> dict:
        """This point's config values (``with_values`` keys)."""
        out = {"sa.method": self.method, "sa.forget": list(self.forget)}
        out.update({f"sa.{k}": v for k, v in (("lam", self.lam), ("gamma", self.gamma)) if v is not None})
        if self.seed is not None:
            out["train.seed"] = self.seed
        return out

    def config(self, base: RunConfig) -> RunConfig:
        """The run config of this point: ``base`` with its values, validated."""
        return validate(with_values(base, self.values()))

    def args(self) -> list[str]:
        """This point's flags for ``scripts/unlearn.py`` (numbers written exactly, so they read back unchanged)."""
        out = ["--method", self.method, "--forget", *map(str, self.forget)]
        out += ["--lam", number(self.lam)] if self.lam is not None else []
        out += ["--gamma", number(self.gamma)] if self.gamma is not None else []
        out += ["--seed", str(self.seed)] if self.seed is not None else []
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


def make_grid(methods: list[str], forget: list[tuple[int, ...]], lams: list[float], gammas: list[float],
              seeds: list[int | None] = (None,)) -> list[Point]:
    """Every distinct point of methods x forget x lams x gammas x seeds, in that nesting order."""
    points, seen = [], set()
    for name, f, lam, gamma, seed in itertools.product(methods, forget, lams, gammas, seeds):
        uses = get_method(name).uses
        p = Point(name, f, lam if "lam" in uses else None, gamma if "gamma" in uses else None, seed)
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
