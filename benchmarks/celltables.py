"""What the cell-based tables share (``digits.py``, ``sequential.py``, ``launchers.py``): their common flags, the
plan of cells, ``--dry-run``, the run directories in ``--work``, the instruments that score a run, spread over
seeds and the provenance line of a rendered table.

A table's script builds a **plan**: ``Item(name, config, fn, before)`` per cell, in the order they should run.
``run_plan`` measures every item whose cell is not on disk (``before()`` first, outside the cell's timing: a shared
step such as training the baseline that a group of cells needs), and ``found`` reads the cells of the same plan back,
so a table is rendered from its cells alone and only from cells of the configs asked for (a cell of an older config
or evaluator stays on disk but is not shown). A cell's run directory is ``--work/<cell>-<hash>``: named by the
hash of the cell's config, so a changed config never reuses a stale run.
"""
from __future__ import annotations

import argparse
import functools
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cells import RESULTS, ROOT, Table, cell_stem, code_commit
from sa_dist.config import RunConfig, load_config, read_yaml, validate, with_values
from sa_dist.evaluation.evaluator import evaluator_fingerprint, get_evaluator
from sa_dist.evaluation.metrics import P_BAR
from sa_dist.evaluation.paper import get_paper_classifier, paper_classifier_path, paper_fingerprint
from sa_dist.pipeline import run_unlearn
from sa_dist.runs import load_results
from sa_dist.utils import UsageError, cache_root

# the project's bars (docs/results.md): forgotten P(y=c) at most P_BAR; retained sample accuracy within 1 point and
# retained test nELBO within 2% of the original model's
BARS = {"forgotten_p": P_BAR, "retained_acc_drop_pts": 1.0, "retained_nelbo_rise_pct": 2.0}


@dataclass
class Item:
    """One cell of a plan: ``fn()`` -> its result, run only when no cell of ``config`` is on disk."""
    name: str
    config: dict
    fn: Callable[[], dict]
    before: Callable[[], object] | None = None  # shared work the cell needs, done before its timing starts
    own_threads: int | None = None  # the threads the cell runs (its load mark), default torch's


def once(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run at its first call only; later calls return the first call's value."""
    return functools.cache(fn)


def add_table_args(p, table: str | None = None, settable: bool = True) -> None:
    """``--out``, ``--work``, ``--commit``, ``--dry-run`` of every table, and (``settable``) the hidden
    ``--set KEY=VALUE``."""
    where = f"benchmarks/results/{table}" if table else "benchmarks/results/<table>"
    p.add_argument("--out", type=Path, help=f"the table's folder: cells/ and the rendered .md/.json/.png "
                   f"(default {where})")
    p.add_argument("--work", type=Path, help="folder of the run directories, outside the repository "
                   "(default $SA_DIST_CACHE/tables/<table>)")
    p.add_argument("--commit", action="store_true", help="git-commit each cell as it is written")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are done; measure nothing")
    if settable:  # hidden: config values of every cell's run (with_values keys), for tiny test runs
        p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)


def table_for(out: Path | None, name: str, commit: bool) -> Table:
    """The ``Table`` of the folder ``out`` (default ``benchmarks/results/<name>``)."""
    out = Path(out) if out else RESULTS / name
    return Table(out.name, results=out.parent, commit=commit)


def work_dir(work: Path | None, table: Table) -> Path:
    """``--work`` (default ``$SA_DIST_CACHE/tables/<table>``), refused inside the repository."""
    work = Path(work) if work else cache_root() / "tables" / table.name
    resolved = work.resolve()
    if resolved == ROOT or ROOT in resolved.parents:
        raise UsageError(f"--work {work}: inside the repository; run directories belong outside it")
    return work


def parse_set(items: list[str]) -> dict:
    """``["train.limit=2000", ...]`` -> ``{"train.limit": 2000}`` (values read as YAML), each key checked."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set takes KEY=VALUE (a config key such as train.limit=2000), got {item!r}")
        out[key] = read_yaml(value)
    run_config(out)
    return out


def run_config(values: dict, **cell) -> RunConfig:
    """RunConfig's defaults <- ``values`` (``--set``) <- the cell's own values (``with_values`` keys, ``model.arch``
    among them), validated. A cell's arch takes its own width and SA lr unless ``values`` set them."""
    merged = {**values, **cell}
    if "model.arch" in cell and "model.width" not in values:
        merged["model.width"] = 0  # the arch's default width (ModelConfig resolves 0)
    try:
        return validate(with_values(RunConfig(), merged))
    except (TypeError, AttributeError):
        raise UsageError(f"--set: a key that is not a config field among {', '.join(sorted(values))}") from None


def instruments(cfg: RunConfig, paper: bool = False, make: bool = True) -> dict | None:
    """The fingerprints of the networks that score ``cfg``'s runs, for every cell's config: the evaluator (and with
    ``paper`` the paper protocol's classifier). ``make``: train what is missing first; else None when one is."""
    if make:
        get_evaluator(None, cfg.data_dir, limit=cfg.train.limit)
        if paper:
            get_paper_classifier(None, cfg.data_dir, limit=cfg.train.limit)
    out = {"evaluator": evaluator_fingerprint()}  # the packaged network: always there, whatever the limit
    if paper:
        there = paper_classifier_path(limit=cfg.train.limit).is_file()
        out["paper_classifier"] = paper_fingerprint(limit=cfg.train.limit) if there else None
    return out if all(out.values()) else None


def run_dir(work: Path, name: str, config: dict) -> Path:
    """The run directory of the cell ``name`` of ``config`` measured here: ``work/<cell>-<hash>``, the hash of the
    cell's key (its platform included, so a work folder shared by two CPU models never hands one's run to the
    other), the same name as the cell's file."""
    return Path(work) / cell_stem(name, config)


def ensure_run(cfg: RunConfig, path: Path, accelerator, checkpoint: str | None = None) -> tuple[dict, bool]:
    """results.json of the run in ``path`` and whether it had finished before (``reused``: its seconds were not
    measured in this cell, so they are not quoted); continued when it was interrupted (its ``state/``), else run
    now."""
    reused = (path / "results.json").is_file()
    if not reused:
        if (path / "state").is_dir():
            run_unlearn(load_config(path / "config.yaml"), str(path), checkpoint, accelerator, resume=True)
        else:
            if path.is_dir():  # killed before its first saved state: nothing in it to keep
                shutil.rmtree(path)
            run_unlearn(cfg, str(path), checkpoint, accelerator)
    return load_results(path), reused


def dry_run(table: Table, items: list[Item], known: bool = True, log=print) -> list[tuple[str, bool]]:
    """Log every cell of the plan and whether it is done; ``known`` False: an instrument that scores the cells is
    not trained yet, so no cell can be done. Returns ``(name, done)`` per cell."""
    status = [(item.name, known and table.get(item.name, item.config) is not None) for item in items]
    for (name, done), item in zip(status, items):
        where = table.path(item.name, item.config).name if done else "to measure"
        log(f"{name}: {'done (' + where + ')' if done else where}")
    note = "" if known else " (the evaluator or the paper classifier is not trained yet: every cell is to measure)"
    log(f"[{table.name}] {sum(d for _, d in status)} of {len(items)} cells done{note}")
    return status


def run_plan(table: Table, items: list[Item], log=print) -> list[dict]:
    """Every cell of the plan, in order: read from disk, or measured now (``before()`` first)."""
    out = []
    for item in items:
        if item.before is not None and table.get(item.name, item.config) is None:
            item.before()
        out.append(table.measure(item.name, item.config, item.fn, own_threads=item.own_threads, log=log))
    return out


def found(table: Table, items: list[Item]) -> dict[str, dict | None]:
    """The cell of each item of the plan from disk (None: not measured)."""
    return {item.name: table.get(item.name, item.config) for item in items}


def spread(values) -> dict | None:
    """Mean, min, max and count of the values that are not None; None when there are none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def show(s: dict | None, spec: str = ".4f", scale: float = 1.0, suffix: str = "") -> str:
    """A spread as a table shows it: ``mean [min, max]`` (just the value for one), "–" for none."""
    if s is None:
        return "–"
    f = lambda v: f"{scale * v:{spec}}{suffix}"  # noqa: E731
    return f(s["mean"]) if s["n"] == 1 else f"{f(s['mean'])} [{f(s['min'])}, {f(s['max'])}]"


def unquotable(cell: dict) -> bool:
    """A cell whose seconds are not quoted: it was loaded, or its run had finished before it (``run_reused``)."""
    return bool(cell.get("loaded") or cell["result"].get("run_reused"))


def quoted(cells: list[dict], value: Callable[[dict], float | None]) -> tuple[dict | None, int]:
    """The spread of ``value(cell)`` over the cells whose seconds count (``unquotable``), and how many were left
    out."""
    left_out = sum(unquotable(c) for c in cells)
    return spread(value(c) for c in cells if not unquotable(c)), left_out


def show_seconds(cells: list[dict], value: Callable[[dict], float | None]) -> str:
    """Seconds over the cells whose seconds count (``show``), "(not quoted)" when none does (``unquotable``)."""
    s, loaded = quoted(cells, value)
    if s is None:
        return "(not quoted)" if loaded else "–"
    return show(s, ".1f") + (f" ({loaded} loaded or reused left out)" if loaded else "")


def provenance(cells: list[dict], expected: int) -> str:
    """One line: how many cells of the plan are measured, which are loaded, their machines, commits and dates."""
    if not cells:
        return f"0 of {expected} cells measured."
    machines = sorted({f"{c['machine']['cpu']} ({c['machine']['cores']} cores, torch {c['machine']['torch']})"
                       for c in cells})
    commits = sorted({code_commit(commit)[:12] for commit in {c.get("commit") for c in cells}})
    dates = sorted(c["finished"][:10] for c in cells)
    loaded = sum(bool(c.get("loaded")) for c in cells)
    reused = sum(map(unquotable, cells)) - loaded  # the rest of the unquotable: read from runs made before
    marks = f"{loaded} loaded" + (f", {reused} read from runs made before the cell" if reused else "")
    ev = sorted({f"v{e['version']} {e['sha256'][:8]}" for c in cells if (e := c["config"].get("evaluator"))})
    return (f"{len(cells)} of {expected} cells measured ({marks}: their seconds are not quoted); "
            f"machine {'; '.join(machines)}; code at commit {', '.join(commits)}; {dates[0]} to {dates[-1]}; "
            f"evaluator {', '.join(ev) or '?'}.")
