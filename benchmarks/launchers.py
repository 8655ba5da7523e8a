"""One `scripts/unlearn.py` command under each launcher, timed from the same cache state, one cell per timed run.

    python benchmarks/launchers.py -- --forget 2                    # the default run, baseline and Fisher cached
    python benchmarks/launchers.py --repeats 3 --launchers python accelerate torchrun -- --quick
    python benchmarks/launchers.py --dry-run -- --forget 2          # the cells, and which are done

Launchers: `python` (plain), `accelerate` (`accelerate launch --config_file accelerate_config.yaml`, one process)
and `torchrun` (`torchrun --nproc_per_node 1`). Each (launcher, repeat) is a cell of ``--out`` (default
benchmarks/results/launchers) keyed by the command, its resolved config and the evaluator; its run directory is
``--work/<cell>-<hash>``. Before the first cell still to measure, one untimed `python` run fills the cache (evaluator,
baseline, Fisher), so every timed run finds the same entries; the repeats go round the launchers in turn, so a change
of load falls on all of them alike. The timed runs see neither $OMP_NUM_THREADS nor $SA_DIST_THREADS (each
launcher's own setting and sa_dist's thread rule decide, as for a user). Every cell records the machine's load; a
loaded cell is marked and left out of the medians. The table (``launchers.md``, ``.json``, ``.png``): per launcher
every wall time, the median of the unloaded ones and its ratio to python's; the bar: each within 10% of python.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

from cells import run_key
from celltables import (Item, add_table_args, dry_run, found, instruments, once, provenance, run_dir, run_plan,
                        table_for, work_dir)
from sa_dist.analysis.plots import save_png, subplots
from sa_dist.cli.flags import Parser, add_checkpoint_arg, add_config_args, add_run_args, config_from_args, run_main
from sa_dist.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ("python", "accelerate", "torchrun")
THREAD_ENV = ("OMP_NUM_THREADS", "SA_DIST_THREADS")
BAR = 1.10  # each launcher's median within 10% of python's
SHOWN = {"python": "python", "accelerate": "accelerate launch --config_file accelerate_config.yaml",
         "torchrun": "torchrun --nproc_per_node 1"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Our flags before ``--``, the script's arguments after it (``args.script_args``)."""
    ours, script_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = Parser(description=__doc__.splitlines()[0],
               usage="%(prog)s [--repeats N] [--launchers L ...] [--script S] [--out DIR] [--work DIR] [--commit] "
                     "[--dry-run] -- [SCRIPT ARGS]")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per launcher (default 3)")
    p.add_argument("--launchers", nargs="+", choices=LAUNCHERS, default=list(LAUNCHERS),
                   help="launchers to time (default all)")
    p.add_argument("--script", default="scripts/unlearn.py", help="the script to launch (default scripts/unlearn.py)")
    add_table_args(p, "launchers", settable=False)
    args = p.parse_args(ours)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if any(a == "--run-dir" or a.startswith("--run-dir=") or a == "--resume" for a in script_args):
        p.error("--run-dir/--resume: every timed run gets its own run directory")
    if len(set(args.launchers)) != len(args.launchers):
        p.error(f"--launchers: a launcher named twice: {' '.join(args.launchers)}")
    args.script_args = script_args
    return args


def unlearn_config(script: str, script_args: list[str]) -> RunConfig | None:
    """The resolved config of a ``scripts/unlearn.py`` command (part of every cell's config); None for another
    script."""
    if Path(script).name != "unlearn.py":
        return None
    p = Parser(prog=f"{script} (via launchers.py)")
    add_config_args(p)
    add_run_args(p)
    add_checkpoint_arg(p)
    return config_from_args(p.parse_args(script_args))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_exe() -> list[str]:
    """The ``accelerate`` command of this Python (beside it), else the one on PATH."""
    beside = Path(sys.executable).parent / "accelerate"
    return [str(beside)] if beside.is_file() else [shutil.which("accelerate") or "accelerate"]


def command(launcher: str, script: str, script_args: list[str], run_dir: Path) -> list[str]:
    """The command line a user would type for ``launcher``."""
    tail = [script, *script_args, "--run-dir", str(run_dir)]
    if launcher == "python":
        return [sys.executable, *tail]
    if launcher == "accelerate":
        return [*accelerate_exe(), "launch", "--config_file", str(ROOT / "accelerate_config.yaml"), *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
            str(free_port()), *tail]


def timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of ``cmd``; a failure ends the benchmark with its stderr's tail."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return wall


def time_one(launcher: str, args, path: Path, env: dict) -> dict:
    """One timed run of the cell's launcher in a fresh run directory ``path``."""
    shutil.rmtree(path, ignore_errors=True)
    wall = timed(command(launcher, args.script, args.script_args, path), env)
    return {"wall_s": round(wall, 2), "command": " ".join([SHOWN[launcher], args.script, *args.script_args])}


def warm_up(args, work: Path, env: dict) -> None:
    """The untimed python run that fills the cache before the first timed one."""
    shutil.rmtree(work / "warm", ignore_errors=True)
    timed(command("python", args.script, args.script_args, work / "warm"), env)


def plan(args, cfg: RunConfig | None, inst: dict, work: Path, env: dict) -> list[Item]:
    """One cell per (repeat, launcher), the launchers in turn within a repeat."""
    cores, items = len(os.sched_getaffinity(0)), []
    warm = once(partial(warm_up, args, work, env))
    for i in range(args.repeats):
        for name in args.launchers:
            config = {"launcher": name, "repeat": i + 1, "script": args.script, "script_args": args.script_args,
                      "run": run_key(asdict(cfg)) if cfg else None, **inst}
            cell = f"{name}-r{i + 1}"
            items.append(Item(cell, config, partial(time_one, name, args, run_dir(work, cell, config), env), warm,
                              own_threads=cores))
    return items


def summary(walls: dict[str, list[float]]) -> dict:
    """``{launcher: {walls_s, median_s, ratio_to_python}}`` (the ratio is None without a python row)."""
    medians = {name: statistics.median(w) for name, w in walls.items()}
    base = medians.get("python")
    return {name: {"walls_s": [round(x, 2) for x in walls[name]], "median_s": round(medians[name], 2),
                   "ratio_to_python": round(medians[name] / base, 3) if base else None} for name in walls}


def rows(got: dict, launchers: list[str], repeats: int) -> dict:
    """Per launcher: every measured wall (loaded ones marked), the missing repeats, and the summary of the
    unloaded walls (median, ratio to python's, within the bar)."""
    out = {}
    for name in launchers:
        cells = [got.get(f"{name}-r{i + 1}") for i in range(repeats)]
        out[name] = {"walls": [None if c is None else {"wall_s": c["result"]["wall_s"], "loaded": bool(c["loaded"])}
                               for c in cells],
                     "command": next((c["result"]["command"] for c in cells if c), None)}
    unloaded = {n: [w["wall_s"] for w in r["walls"] if w and not w["loaded"]] for n, r in out.items()}
    for name, s in summary({n: w for n, w in unloaded.items() if w}).items():
        ratio = s["ratio_to_python"]
        out[name].update(median_s=s["median_s"], ratio_to_python=ratio,
                         within_bar=None if ratio is None else ratio <= BAR)
    return out


def markdown(table: dict, command_text: str, line: str) -> str:
    out = [f"```bash\n{command_text}\n```", "", line, "",
           f"The bar: each launcher's median within {100 * (BAR - 1):.0f}% of python's. Medians over the unloaded "
           "runs; a loaded run is marked and left out.", "",
           "| launcher | command | wall times (s) | median (s) | vs python | within the bar |", "|" + " --- |" * 6]
    for name, r in table.items():
        walls = ", ".join("missing" if w is None else f"{w['wall_s']:.1f}" + (" (loaded)" if w["loaded"] else "")
                          for w in r["walls"])
        ratio, ok = r.get("ratio_to_python"), r.get("within_bar")
        ratio, ok = "–" if ratio is None else f"{ratio:.2f}", "–" if ok is None else "yes" if ok else "no"
        out.append(f"| {name} | `{r['command'] or '–'}` | {walls} | {r.get('median_s', '–')} | {ratio} | {ok} |")
    return "\n".join(out) + "\n"


def plot(table: dict, path: Path) -> None:
    """Every wall time per launcher (hollow: loaded), the median of the unloaded ones as a bar."""
    fig, ax = subplots(figsize=(6, 3.5))
    for i, (name, r) in enumerate(table.items()):
        if r.get("median_s") is not None:
            ax.bar(i, r["median_s"], 0.6, color="lightgrey")
        for w in (w for w in r["walls"] if w):
            ax.plot(i, w["wall_s"], "o", mfc="none" if w["loaded"] else "C0", mec="C0")
    ax.set_xticks(range(len(table)), list(table))
    ax.set_ylabel("wall seconds (bar: median, hollow: loaded)")
    save_png(fig, path)


def render(tab, items, args) -> str:
    got = found(tab, items)
    table = rows(got, args.launchers, args.repeats)
    command_text = " ".join(["python benchmarks/launchers.py", "--repeats", str(args.repeats), "--launchers",
                             *args.launchers, *(["--", *args.script_args] if args.script_args else [])])
    md = markdown(table, command_text, provenance([c for c in got.values() if c], len(items)))
    plot(table, tab.dir / f"{tab.name}.png")
    tab.write(tab.name, {"command": command_text, "bar": BAR, "launchers": table,
                         "cells": {n: (c["hash"] if c else None) for n, c in got.items()}}, md)
    return md


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    table = table_for(args.out, "launchers", args.commit)
    work = work_dir(args.work, table)
    cfg = unlearn_config(args.script, args.script_args)
    inst = instruments(cfg or RunConfig(), make=not args.dry_run)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    items = plan(args, cfg, inst or {}, work, env)
    if args.dry_run:
        dry_run(table, items, known=inst is not None)
        return
    run_plan(table, items)
    print(render(table, items, args), end="")


if __name__ == "__main__":
    run_main(main)
