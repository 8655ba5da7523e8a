"""`scripts/unlearn.py --quick` on 1 and on 2 CPU processes: wall time and the bars of each; prints JSON.

    python benchmarks/procs.py [--arch conv] [--out-dir runs/procs] [more unlearn.py flags, e.g. --forget 0]

Each run starts from its own cache holding only the evaluator and the laid-out MNIST (copied from
$SA_DIST_CACHE), so baseline, Fisher and SA are all computed by that many processes. Every process gets
--threads threads (default 1: on a shared machine, 2 threads per process thrash when the cores are busy), so the
2-process run uses twice the cores of the 1-process run. Reported: wall
seconds, CPU seconds of all processes (user + system; less sensitive to other load on the machine), the 1-minute
load average at start and end, and the run's bars (benchmarks/sa_table.py).
"""
import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from sa_table import row  # noqa: E402

from sa_dist.utils import cache_root  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_cache() -> str:
    src, dst = cache_root(), Path(tempfile.mkdtemp(prefix="sa_dist_procs_"))
    for sub in ("evaluator", "mnist"):
        if (src / sub).is_dir():
            shutil.copytree(src / sub, dst / sub)
    return str(dst)


def run(n: int, arch: str, run_dir: Path, threads: int, extra: list) -> dict:
    launcher = ([sys.executable] if n == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
                 "--master_port", str(free_port())])
    cache = fresh_cache()
    env = {**os.environ, "SA_DIST_CACHE": cache, "OMP_NUM_THREADS": str(threads), "SA_DIST_THREADS": str(threads)}
    load = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([*launcher, "scripts/unlearn.py", "--quick", "--arch", arch, "--run-dir", str(run_dir),
                        *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    shutil.rmtree(cache, ignore_errors=True)
    if r.returncode != 0:
        sys.exit(f"{n} processes failed:\n{r.stderr[-2000:]}")
    return {"processes": n, "threads_per_process": env["OMP_NUM_THREADS"], "wall_s": wall, "cpu_s": cpu,
            "load_1min_at_start": load, "load_1min_at_end": os.getloadavg()[0], **row(run_dir)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="conv")
    p.add_argument("--out-dir", default="runs/procs")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    a, extra = p.parse_known_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = [run(n, a.arch, Path(a.out_dir) / f"{a.arch}-p{n}-{stamp}", a.threads, extra) for n in (1, 2)]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
