"""One `scripts/unlearn.py` command under each launcher, timed from the same cache state; prints JSON.

    python benchmarks/launchers.py --repeats 3 --launchers python accelerate torchrun -- --quick
    python benchmarks/launchers.py --repeats 3 -- --forget 2          # the cached default run

Launchers: `python` (plain), `accelerate` (`accelerate launch --config_file accelerate_config.yaml`, one process)
and `torchrun` (`torchrun --nproc_per_node 1`). One untimed `python` run first fills the cache (evaluator,
baseline, Fisher) so every timed run finds the same entries; the repeats then go round the launchers in turn, so a
change of load on the machine falls on all of them alike. The timed runs see neither $OMP_NUM_THREADS nor
$SA_DIST_THREADS (each launcher's own setting and sa_dist's thread rule decide, as for a user). Reported per
launcher: every wall time, the median, and the median's ratio to python's; the 1-minute load average at start and
end (a loaded machine's seconds are not a quiet machine's).
"""
import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ("python", "accelerate", "torchrun")
THREAD_ENV = ("OMP_NUM_THREADS", "SA_DIST_THREADS")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Our flags before ``--``, the script's arguments after it (``args.script_args``)."""
    ours, script_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                usage="%(prog)s [--repeats N] [--launchers L ...] [--script S] -- [SCRIPT ARGS]")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per launcher (default 3)")
    p.add_argument("--launchers", nargs="+", choices=LAUNCHERS, default=list(LAUNCHERS),
                   help="launchers to time (default all)")
    p.add_argument("--script", default="scripts/unlearn.py", help="the script to launch (default scripts/unlearn.py)")
    args = p.parse_args(ours)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if any(a == "--run-dir" or a.startswith("--run-dir=") or a == "--resume" for a in script_args):
        p.error("--run-dir/--resume: every timed run gets its own run directory")
    if len(set(args.launchers)) != len(args.launchers):
        p.error(f"--launchers: a launcher named twice: {' '.join(args.launchers)}")
    args.script_args = script_args
    return args


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


def summary(walls: dict[str, list[float]]) -> dict:
    """``{launcher: {walls_s, median_s, ratio_to_python}}`` (the ratio is None without a python row)."""
    medians = {name: statistics.median(w) for name, w in walls.items()}
    base = medians.get("python")
    return {name: {"walls_s": [round(x, 2) for x in walls[name]], "median_s": round(medians[name], 2),
                   "ratio_to_python": round(medians[name] / base, 3) if base else None} for name in walls}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    work = Path(tempfile.mkdtemp(prefix="sa_dist_launchers_"))
    try:
        load = [os.getloadavg()[0]]
        timed(command("python", args.script, args.script_args, work / "warm"), clean)  # fills the cache
        walls = {name: [] for name in args.launchers}
        for i in range(args.repeats):
            for name in args.launchers:
                walls[name].append(timed(command(name, args.script, args.script_args, work / f"{name}-{i}"), clean))
        load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"command": [args.script, *args.script_args], "repeats": args.repeats,
                      "launchers": summary(walls), "load_1min_start_end": load, "cpus": len(os.sched_getaffinity(0)),
                      "machine": platform.processor() or platform.machine()}, indent=1))


if __name__ == "__main__":
    main()
