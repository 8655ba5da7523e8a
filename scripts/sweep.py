"""Run a grid of unlearning runs (forgotten classes x lambda x gamma x method) and aggregate them.

    python scripts/sweep.py --out-dir runs/sweep --forget 0 1 2 --lam 0 1 10 --method sa no_ewc [UNLEARN FLAGS]
Any other flag goes to every point's scripts/unlearn.py (e.g. --arch linear). Each point is a run directory
OUT_DIR/<arch>-<method>-forget<c>[-lam<l>][-gamma<g>]; finished points are kept, so a sweep resumes. After the
points, OUT_DIR/summary.md, summary.json and summary.png hold the table and the trade-off plot (scripts/aggregate.py).
slurm/sweep.sh runs the same grid as a job array with --count, --prepare and --task-args.
"""
import sys

from sa_dist.cli import Parser, add_sa_args, add_train_args, config_from_args, run_main
from sa_dist.config import METHODS
from sa_dist.utils import UsageError


def parse():
    p = Parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--out-dir", required=True, help="folder of the run directories (and the summary)")
    p.add_argument("--forget", nargs="+", default=["2"], help="grid: classes, one point each; 2,7 = both at once")
    p.add_argument("--lam", nargs="+", type=float, help="grid: lambda values (default: the config's)")
    p.add_argument("--gamma", nargs="+", type=float, help="grid: gamma values (default: the config's)")
    p.add_argument("--method", nargs="+", default=["sa"], choices=METHODS, help="grid: methods (default sa)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--count", action="store_true", help="print the number of points and exit")
    mode.add_argument("--list", action="store_true", help="print each point's index and run directory, and exit")
    mode.add_argument("--task-args", type=int, metavar="I", help="print point I's unlearn.py arguments and exit "
                      "(nothing if it finished); for slurm/sweep.sh")
    mode.add_argument("--prepare", action="store_true", help="fill the shared cache (evaluator, baseline, Fisher)")
    p.add_argument("--no-aggregate", action="store_true", help="do not write the summary after the points")
    args, extra = p.parse_known_args()
    unlearn = Parser(prog="scripts/unlearn.py (via sweep.py)")
    add_train_args(unlearn)
    add_sa_args(unlearn)
    given = unlearn.parse_args(extra)
    if given.run_dir:
        raise UsageError("--run-dir is chosen per point by sweep.py; use --out-dir")
    return args, extra, unlearn, given


def main():
    from sa_dist.sweep import make_grid, parse_forget, point_dir, prepare, run_points, task_args

    args, extra, unlearn, given = parse()
    base_cfg = config_from_args(given)
    arch = base_cfg.model.arch
    points = make_grid(args.method, parse_forget(args.forget), args.lam or [base_cfg.sa.lam],
                       args.gamma or [base_cfg.sa.gamma])
    config_of = lambda pt: config_from_args(unlearn.parse_args([*extra, *pt.args()]))  # noqa: E731
    for pt in points:
        config_of(pt)  # every point validated before anything runs
    if args.count:
        return print(len(points))
    if args.list:
        return print("\n".join(f"{i} {point_dir(args.out_dir, pt, arch)}" for i, pt in enumerate(points)))
    if args.task_args is not None:
        if not 0 <= args.task_args < len(points):
            raise UsageError(f"--task-args {args.task_args}: the grid has points 0-{len(points) - 1}")
        return print(task_args(points[args.task_args], args.out_dir, arch, extra))
    if args.prepare:
        return print(prepare(base_cfg, args.method, given.checkpoint))
    failures = run_points(points, config_of, args.out_dir, given.checkpoint)
    if not args.no_aggregate:
        from sa_dist.aggregate import write_summary

        print(write_summary([args.out_dir], f"{args.out_dir}/summary"), end="")
    if failures:
        sys.stderr.write(f"error: {len(failures)} of {len(points)} points failed: "
                         + "; ".join(f"{p.name(arch)}: {e}" for p, e in failures) + "\n")
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
