"""Sweep lambda (the EWC weight) with everything else at its default; prints JSON rows (see sa_table.py).

    python benchmarks/lam_sweep.py --arch linear --forget 2 --lams 0 1 10 100 --out-dir runs/lam_sweep
Every point is one `scripts/unlearn.py` run on the cached baseline and Fisher.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sa_table import markdown, row  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="conv")
    p.add_argument("--forget", default="2")
    p.add_argument("--lams", nargs="+", default=["0", "1", "10", "100"])
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--md", action="store_true")
    args = p.parse_args()
    rows = []
    for lam in args.lams:
        run_dir = args.out_dir / f"{args.arch}-forget{args.forget}-lam{lam}"
        if not (run_dir / "results.json").exists():
            subprocess.run([sys.executable, "scripts/unlearn.py", "--arch", args.arch, "--forget", args.forget,
                            "--lam", lam, "--run-dir", str(run_dir)], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[1])
        rows.append(row(run_dir))
    print(markdown(rows) if args.md else json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
