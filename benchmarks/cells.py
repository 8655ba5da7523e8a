"""Benchmark cells: a measurement that survives a session.

A table is a folder ``benchmarks/results/<table>/``; each of its results is a **cell**, one JSON file under
``cells/`` written the moment it finishes. A cell is keyed by the hash of its full config (every value that shapes
the result, the evaluator's version and file hash included), so a rerun skips every cell whose hash is on disk and
measures the rest, and any change of config measures a new cell instead of reusing a stale one. Besides the result a
cell records the commit, the evaluator, the machine, its wall seconds and the machine's load: the 1-minute load
average at start and end, and the other processes' load (runnable threads outside this process tree, sampled every
second while the cell ran). The 1-minute average counts the cell's own threads too (2 on a 2-core machine), so the
mark uses the other processes': a cell is ``loaded`` when they averaged more than ``LOADED`` cores, or when the
1-minute average was above ``LOAD_AVERAGE_BAR`` + the cell's own threads at its start, or when the sampler woke up
more than ``PAUSED`` seconds late (the process was stopped or starved); a loaded cell's seconds are never quoted. A table's ``.md``, ``.json`` and ``.png`` are rendered from its cells alone (``Table.cells``).

    table = Table("digits")                        # benchmarks/results/digits/
    cell = table.measure("conv-d2-s0", config, fn)  # fn() -> dict, run only if no cell has this config's hash
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LOAD_AVERAGE_BAR = 1.5  # the bar on the machine's load average, besides the cell's own threads
LOADED = 0.5  # cores used by other processes, on average while the cell ran, above which its seconds don't count
PAUSED = 10.0  # seconds the 1-second load sampler may wake up late before the cell counts as stopped or starved


CPU_ENV = "SA_DIST_CELLS_CPU"  # read (render, dry-run) the cells measured on this CPU model instead of this machine's
PRESENTATION = ("figures",)  # run-config fields that only draw: left out of a cell's key, so they never re-measure


# Run-config fields added after cells were measured, with the value that reproduces the runs made before them. A
# key leaves such a field out while it holds that value, so adding a field to the config re-measures nothing (a
# cell's key is the full run config: without this every committed cell would be orphaned by a new field).
NEUTRAL = {("sa", "sam_rho"): 0.0,  # SAM on the surrogate term (2026-12-06): 0 is the paper's SA
           ("sa", "dampen_mode"): "shrink",  # dampen's reinit mode (2026-12-06): shrink is SSD's, as before
           ("sa", "dampen_unit"): "weight",  # dampen's unit selection (2026-12-06): single weights, as before
           ("sa", "dampen_regulariser"): "ewc",  # dampen's repair term (2026-12-07): the paper's EWC, as before
           ("sa", "adversary_steps"): 2,  # the adversary method (2026-12-07): read by no other method
           ("sa", "adversary_lr"): 1e-2,
           ("sa", "adversary_weight"): 1.0,
           ("sa", "adversary_margin"): 0.5,
           ("sa", "tar_steps"): 16,  # the tar method (2026-12-07, fifth session): read by no other method
           ("sa", "tar_lr"): 1e-3,
           ("sa", "tar_k"): 32,
           ("sa", "tar_every"): 4,
           ("sa", "tar_weight"): 1.0,
           ("sa", "tar_margin"): 0.4,
           ("sa", "tar_start"): "both",
           ("sa", "tar_score"): "nelbo",  # tar's label score (2026-12-07, sixth session): nelbo as before
           ("sa", "tar_p"): 0.6,
           ("sa", "tar_epochs"): None}  # tar's repair tail (2026-12-07, seventh session): attacks in every epoch


def run_key(run: dict) -> dict:
    """A run config (``asdict(RunConfig)``) as a cell keys on it: without the fields that shape no number, and
    without the ``NEUTRAL`` fields at their neutral value."""
    out = {k: v for k, v in run.items() if k not in PRESENTATION}
    for (section, name), neutral in NEUTRAL.items():
        if isinstance(out.get(section), dict) and out[section].get(name, neutral) == neutral:
            out[section] = {k: v for k, v in out[section].items() if k != name}
    return out


def config_hash(config: dict) -> str:
    """16 hex digits of the SHA-256 of the config as sorted JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(root: Path = ROOT) -> str | None:
    """The checkout's HEAD, with ``-dirty`` when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def code_commit(commit: str | None, root: Path = ROOT) -> str:
    """The newest commit at or before ``commit`` that changed anything but measured results (``benchmarks/results``):
    the code a cell ran, since ``--commit`` moves HEAD with every cell. ``commit`` itself when git cannot tell."""
    if not commit:
        return "?"
    head, dirty = commit.removesuffix("-dirty"), commit.endswith("-dirty")
    try:
        code = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%H", head, "--", ".",
                               ":(exclude)benchmarks/results"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return commit
    return (code or head) + ("-dirty" if dirty else "")


def machine() -> dict:
    """The CPU model, the cores this process may use, and the versions that shape numbers."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def platform_key(cpu: str | None = None) -> dict:
    """What shapes a cell's numbers besides its config, so part of its key: the CPU model (the same seed trains
    different weights on an Intel Xeon and an AMD EPYC: θ*'s retained accuracy 0.9868 vs 0.9891, docs/results.md)
    and torch's version. ``cpu``: another CPU's cells, to read them (default ``$SA_DIST_CELLS_CPU``, else this
    machine's)."""
    m = machine()
    return {"cpu": cpu or os.environ.get(CPU_ENV) or m["cpu"], "torch": m["torch"]}


def cell_key(config: dict, platform: dict | None = None) -> dict:
    """The config a cell (and the run it measures) is keyed on: ``config`` with its platform (default this
    machine's, ``platform_key()``)."""
    return {**config, "platform": platform or platform_key()}


def cell_stem(cell: str, config: dict, platform: dict | None = None) -> str:
    """``<cell>-<hash of its key>``: the name of a cell's file and of the run folder it measures."""
    return f"{cell}-{config_hash(cell_key(config, platform))}"


def _tree(pid: int) -> set[int]:
    """``pid`` and every process descended from it, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo.extend(children.get(p, []))
    return out


def runnable_threads(exclude: set[int]) -> int:
    """Threads in state R (running or runnable) of every process not in ``exclude``."""
    n = 0
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*/stat"):
        if int(task.parent.parent.parent.name) in exclude:
            continue
        try:
            state = task.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        n += state == "R"
    return n


def runnable_elsewhere() -> int:
    """Threads in state R outside this process and its descendants: the load other jobs put on the machine."""
    return runnable_threads(_tree(os.getpid()))


class LoadSampler:
    """Samples ``runnable_elsewhere`` every ``every`` seconds in a daemon thread between ``start`` and ``stop``;
    ``longest_gap``: the longest wait between two samples (a process stopped, say by SIGSTOP, or starved of CPU
    wakes up late, and its wall seconds are not the cell's own)."""

    def __init__(self, every: float = 1.0, probe: Callable[[], float] = runnable_elsewhere):
        self.every, self.probe, self.samples, self.longest_gap = every, probe, [], 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last = time.monotonic()
        while not self._stop.wait(self.every):
            self.samples.append(self.probe())
            now = time.monotonic()
            self.longest_gap, last = max(self.longest_gap, now - last), now

    def __enter__(self):
        self.samples.append(self.probe())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)


def load_record(start: float, end: float, other: float, own_threads: int, gap: float = 0.0) -> dict:
    """The cell's load fields and its ``loaded`` mark (see the module docstring): ``gap``, the sampler's longest
    wait, above ``PAUSED`` seconds marks it too (the process was stopped or starved meanwhile)."""
    return {"load_1min_start": round(start, 2), "load_1min_end": round(end, 2), "other_load": round(other, 2),
            "longest_gap_s": round(gap, 2),
            "loaded": other > LOADED or start > LOAD_AVERAGE_BAR + own_threads or gap > PAUSED}


class Table:
    """The cells of one table: ``benchmarks/results/<name>/cells/<cell>-<hash>.json``."""

    def __init__(self, name: str, results: Path = RESULTS, commit: bool = False, cpu: str | None = None):
        self.name, self.dir = name, Path(results) / name
        self.cells_dir = self.dir / "cells"
        self.commit = commit  # git-commit each cell as it is written (a long benchmark keeps what it measured)
        self.platform = platform_key(cpu)  # every key carries it: a cell is looked up on the CPU it was measured on

    def key(self, config: dict) -> dict:
        """The config a cell of ``config`` is keyed on and records: with this table's ``platform``."""
        return cell_key(config, self.platform)

    def path(self, cell: str, config: dict) -> Path:
        return self.cells_dir / f"{cell_stem(cell, config, self.platform)}.json"

    def get(self, cell: str, config: dict) -> dict | None:
        """The finished cell of this config, or None."""
        path = self.path(cell, config)
        return json.loads(path.read_text()) if path.is_file() else None

    def measure(self, cell: str, config: dict, fn: Callable[[], dict], *, evaluator: dict | None = None,
                own_threads: int | None = None, log=print) -> dict:
        """The cell ``cell`` of ``config``: read from disk when measured before, else ``fn()`` measured now and
        written (atomically) with its record. ``evaluator``: ``{"version", "sha256"}`` of the scoring network,
        part of the hash. ``own_threads``: the threads the cell itself runs (default torch's)."""
        config = {**config, **({"evaluator": evaluator} if evaluator else {})}
        done = self.get(cell, config)
        if done is not None:
            log(f"[{self.name}] {cell}: measured before ({self.path(cell, config).name}), skipped")
            return done
        info = machine()
        if self.platform["cpu"] != info["cpu"]:
            raise RuntimeError(f"{cell} is not measured on {self.platform['cpu']}; this machine's CPU is "
                               f"{info['cpu']} (unset {CPU_ENV} to measure here)")
        start = os.getloadavg()[0]
        log(f"[{self.name}] {cell}: measuring (load average {start:.2f})")
        t0 = time.perf_counter()
        with LoadSampler() as sampler:
            result = fn()
        wall = time.perf_counter() - t0
        record = {"table": self.name, "cell": cell, "hash": config_hash(self.key(config)), "config": self.key(config),
                  "result": result, "wall_s": round(wall, 2), "commit": git_commit(),
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": info,
                  **load_record(start, os.getloadavg()[0], sampler.mean, own_threads or info["threads"],
                                sampler.longest_gap)}
        self._write(self.path(cell, config), record)
        log(f"[{self.name}] {cell}: done in {wall:.0f} s" + (" (loaded: seconds not quoted)" if record["loaded"]
                                                            else ""))
        return record

    def _write(self, path: Path, record: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
        os.replace(tmp, path)
        if self.commit:
            root = str(ROOT)
            subprocess.run(["git", "-C", root, "add", str(path)], check=False, capture_output=True)
            subprocess.run(["git", "-C", root, "commit", "-q", "-m", f"cell {self.name}/{path.stem}", "--",
                            str(path)], check=False, capture_output=True)

    def cells(self) -> list[dict]:
        """Every cell of the table, by file name; a table is rendered from these alone."""
        return [json.loads(p.read_text()) for p in sorted(self.cells_dir.glob("*.json"))]

    def rekey(self, old: str, new: str, why: str) -> int:
        """Every cell whose config names the fingerprint ``old`` (any ``sha256`` value, nested or not) is keyed on
        ``new`` instead: config and hash rewritten, file renamed, the change recorded in the cell's ``rekeyed``
        list. Only for an instrument shown to score identically under both digests (``why`` says how). Returns
        the count."""
        n = 0
        for path in sorted(self.cells_dir.glob("*.json")):
            record = json.loads(path.read_text())
            config = _swap_sha(record["config"], old, new)
            if config == record["config"]:
                continue
            record.update(config=config, hash=config_hash(config),
                          rekeyed=[*record.get("rekeyed", []), {"from": old, "to": new, "why": why}])
            self._write(self.cells_dir / f"{record['cell']}-{record['hash']}.json", record)
            path.unlink()
            n += 1
        return n

    def key_by_platform(self) -> int:
        """Every cell keyed before the platform was part of the key gets the one its record names (``machine``'s
        CPU and torch): config, hash and file name rewritten, nothing else. Returns the count."""
        n = 0
        for path in sorted(self.cells_dir.glob("*.json")):
            record = json.loads(path.read_text())
            if "platform" in record["config"]:
                continue
            m = record["machine"]
            config = {**record["config"], "platform": {"cpu": m["cpu"], "torch": m["torch"]}}
            record.update(config=config, hash=config_hash(config))
            self._write(self.cells_dir / f"{record['cell']}-{record['hash']}.json", record)
            path.unlink()
            n += 1
        return n

    def write(self, stem: str, data: dict, markdown: str) -> None:
        """The rendered table: ``<stem>.json`` and ``<stem>.md`` beside the cells (atomically)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".json", json.dumps(data, indent=1, default=str) + "\n"), (".md", markdown)):
            tmp = self.dir / f".{stem}{suffix}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.dir / f"{stem}{suffix}")


def _swap_sha(value, old: str, new: str):
    """``value`` (a cell config) with every ``"sha256": old`` replaced by ``new``."""
    if isinstance(value, dict):
        return {k: new if k == "sha256" and v == old else _swap_sha(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap_sha(v, old, new) for v in value]
    return value


def seconds(cell: dict, value: float | None) -> str:
    """``value`` seconds as a table shows them: a loaded cell's seconds are never quoted."""
    if value is None:
        return "–"
    return "(loaded)" if cell.get("loaded") else f"{value:.1f}"


USAGE = """usage: python benchmarks/cells.py rekey OLD_SHA256 NEW_SHA256 "why" TABLE [TABLE ...]
       python benchmarks/cells.py platform TABLE [TABLE ...]   (key old cells on the platform they record)"""

if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "rekey":
        for table in sys.argv[5:]:
            print(f"{table}: {Table(table).rekey(sys.argv[2], sys.argv[3], sys.argv[4])} cells rekeyed")
    elif len(sys.argv) >= 3 and sys.argv[1] == "platform":
        for table in sys.argv[2:]:
            print(f"{table}: {Table(table).key_by_platform()} cells keyed on their platform")
    else:
        sys.exit(USAGE)
