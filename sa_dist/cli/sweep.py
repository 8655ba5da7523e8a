"""Run a grid of unlearning runs (method x forgotten classes x lambda x gamma x seed) and aggregate them.

    python scripts/sweep.py --out-dir runs/sweep --forget 0 1 2 --lam 0 1 10 --method sa no_ewc [UNLEARN FLAGS]
    python scripts/sweep.py --out-dir runs/seeds --forget 2 --seeds 49 50 51     # mean +- spread over 3 seeds
Any other flag goes to every point's scripts/unlearn.py (e.g. --arch linear). Each point is a run directory
OUT_DIR/<arch>-<method>-forget<c>[-lam<l>][-gamma<g>][-seed<s>]; finished points are kept, so a sweep resumes. After the
points, OUT_DIR/summary.md, summary.json and summary.png hold the table and the trade-off plot (scripts/aggregate.py).
slurm/sweep.sh runs the same grid as a job array with --count, --prepare and --task-args.
"""
import sys

from ..config import with_values
from ..methods import get_method, method_names
from ..pipeline import prepare_cache, run_many
from ..sweeps.aggregate import write_summary
from ..sweeps.grid import make_grid, parse_forget, point_dir, task_args
from ..utils import UsageError
from .flags import Parser, add_checkpoint_arg, add_config_args, add_run_args, command, config_from_args


def parse():
    p = Parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--out-dir", required=True, help="folder of the run directories (and the summary)")
    p.add_argument("--forget", nargs="+", default=["2"], help="grid: classes, one point each; 2,7 = both at once")
    p.add_argument("--lam", nargs="+", type=float, help="grid: lambda values (default: the config's)")
    p.add_argument("--gamma", nargs="+", type=float, help="grid: gamma values (default: the config's)")
    p.add_argument("--method", nargs="+", default=["sa"], choices=method_names(), help="grid: methods (default sa)")
    p.add_argument("--seeds", nargs="+", type=int, help="grid: seeds, each the baseline's and the unlearning's "
                   "(default: the config's seed, one point)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--count", action="store_true", help="print the number of points and exit")
    mode.add_argument("--list", action="store_true", help="print each point's index and run directory, and exit")
    mode.add_argument("--task-args", type=int, metavar="I", help="print point I's unlearn.py arguments and exit "
                      "(nothing if it finished); for slurm/sweep.sh")
    mode.add_argument("--prepare", action="store_true", help="fill the shared cache (evaluator, baseline, Fisher)")
    p.add_argument("--no-aggregate", action="store_true", help="do not write the summary after the points")
    args, extra = p.parse_known_args()
    unlearn = Parser(prog="scripts/unlearn.py (via sweep.py)")
    add_config_args(unlearn)
    add_run_args(unlearn)
    add_checkpoint_arg(unlearn)
    given = unlearn.parse_args(extra)
    if given.run_dir or given.resume:
        raise UsageError("--run-dir and --resume are chosen per point by sweep.py; use --out-dir")
    return args, extra, given


@command
def main():
    args, extra, given = parse()
    base = config_from_args(given)
    arch = base.model.arch
    points = make_grid(args.method, parse_forget(args.forget), args.lam or [base.sa.lam], args.gamma or [base.sa.gamma],
                       args.seeds or [None])
    for pt in points:
        pt.config(base)  # every point validated before anything runs
    if args.count:
        return print(len(points))
    if args.list:
        return print("\n".join(f"{i} {point_dir(args.out_dir, pt, arch)}" for i, pt in enumerate(points)))
    if args.task_args is not None:
        if not 0 <= args.task_args < len(points):
            raise UsageError(f"--task-args {args.task_args}: the grid has points 0-{len(points) - 1}")
        return print(task_args(points[args.task_args], args.out_dir, arch, extra))
    if args.prepare:  # one baseline (and Fisher) per seed
        fisher = any(get_method(m).needs_fisher for m in args.method)
        seeds = dict.fromkeys(pt.config(base).train.seed for pt in points)
        return print([prepare_cache(with_values(base, {"train.seed": s}), fisher, given.checkpoint) for s in seeds])
    jobs = [(pt.config(base), point_dir(args.out_dir, pt, arch)) for pt in points]
    failures = run_many(jobs, given.checkpoint)
    if not args.no_aggregate:
        print(write_summary([args.out_dir], f"{args.out_dir}/summary"), end="")
    if failures:
        sys.stderr.write(f"error: {len(failures)} of {len(points)} points failed: "
                         + "; ".join(f"{d.name}: {e}" for d, e in failures) + "\n")
        sys.exit(1)

