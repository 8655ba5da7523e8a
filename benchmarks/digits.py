"""Selective Amnesia on every digit, both architectures, over seeds, scored by the paper protocol too: one cell per run.

    python benchmarks/digits.py                              # digits 0-9 x conv, linear x seeds 0 1 2
    python benchmarks/digits.py --table paper_default        # conv, seed 49, forget 0 and 2, beside the official README
    python benchmarks/digits.py --dry-run                    # the cells, and which are done

Each cell is one ``scripts/unlearn.py --protocol paper --forget D --arch A --seed S`` run (the baseline's seed and
SA's; every other value the default) in ``--work/<cell>-<hash>``, kept with: P(c_f), P(reject) and the entropy of
the forgotten class, retained sample accuracy and test nELBO, before and after; the paper protocol's entropy and
P(y=c_f); the surrogate block's headline; the Fisher, SA and evaluation seconds and the baseline's key. The cells
run baseline by baseline (arch, then seed): the first cell of a baseline trains it (and its Fisher) before its own
timing starts, its digits follow. The table (``digits.md``, ``.json``, ``.png`` in ``--out``) shows per arch and
digit the mean and [min, max] over the seeds, the bars met per row (mean over the seeds) and the cells that miss one;
``paper_default`` shows the paper protocol beside the official README's example (digit 0: H 2.19, P 0.058).
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from functools import partial

from cells import run_key
from celltables import (Item, add_table_args, dry_run, ensure_run, instruments, once, parse_set, run_config,
                        run_dir, run_plan, table_for, work_dir)
from digits_render import cell_name, render
from sa_dist.cli.flags import Parser, run_main
from sa_dist.config import RunConfig
from sa_dist.models import ARCHS
from sa_dist.pipeline import prepare_cache
from sa_dist.runtime import make_accelerator
from sa_dist.surrogate import z_blind_nelbo
from sa_dist.utils import UsageError

TABLES = {"digits": {"archs": list(ARCHS), "digits": list(range(10)), "seeds": [0, 1, 2]},
          "paper_default": {"archs": ["conv"], "digits": [0, 2], "seeds": [RunConfig().train.seed]}}


def digit_result(r: dict) -> dict:
    """What a cell keeps of one run's results.json (one forgotten class)."""
    c = str(r["forget_classes"][0])
    b, a = r["summary"]["before"], r["summary"]["after"]
    paper, sur, t = r["paper_protocol"]["per_class"][c], r["surrogate"], r["timing_s"]
    z_blind = z_blind_nelbo(sur["nelbo"])
    out = {f"{key}_{when}": side[src][c] for when, side in (("before", b), ("after", a))
           for key, src in (("p", "forgotten_p_class"), ("p_reject", "forgotten_p_reject"),
                            ("entropy", "forgotten_entropy"))}
    out.update({f"retained_{key}_{when}": side[src] for when, side in (("before", b), ("after", a))
                for key, src in (("acc", "retained_sample_acc"), ("nelbo", "retained_test_nelbo"))})
    out.update({f"paper_{key}_{when}": paper[when][src] for when in ("before", "after")
                for key, src in (("entropy", "entropy"), ("p", "p_forgotten"))})
    return {**out, "retained_acc_drop_pts": 100 * (out["retained_acc_before"] - out["retained_acc_after"]),
            "retained_nelbo_rise_pct": 100 * (out["retained_nelbo_after"] / out["retained_nelbo_before"] - 1),
            "surrogate_kind": sur["kind"], "surrogate_ideal_p": sur["ideal"]["p_class"][c],
            "surrogate_ideal_p_reject": sur["ideal"].get("p_reject"), "surrogate_nelbo_after": sur["nelbo"]["after"],
            "surrogate_z_blind": z_blind,
            "surrogate_gap_pct": 100 * (sur["nelbo"]["after"] / z_blind - 1) if z_blind else None,
            "fisher_s": t["fisher"], "fisher_cached": t["fisher_cached"], "sa_s": t["unlearn"],
            "evaluate_s": t["evaluate"], "baseline_s": t["baseline"], "baseline_key": r["baseline"]["key"],
            "baseline_cached": r["baseline"]["cached"]}


def measure(cfg: RunConfig, path, accelerator) -> dict:
    """One cell: the run in ``path`` (run now unless it finished), what the cell keeps of it."""
    results, reused = ensure_run(cfg, path, accelerator())
    return {**digit_result(results), "run_reused": reused}


def plan(args, inst: dict, work) -> list[Item]:
    """The cells in the order they run: per arch, per seed (one baseline each), every digit."""
    items, accelerator = [], once(lambda: make_accelerator(mixed_precision=run_config(args.values).mixed_precision))
    for arch in args.archs:
        for seed in args.seeds:
            group = run_config(args.values, **{"model.arch": arch, "train.seed": seed, "protocol": "paper"})
            before = once(lambda g=group: prepare_cache(g, needs_fisher=True, accelerator=accelerator()))
            for digit in args.digits:
                cfg = run_config(args.values, **{"model.arch": arch, "train.seed": seed, "protocol": "paper",
                                                 "sa.forget": [digit]})
                config = {"arch": arch, "seed": seed, "forget": [digit], "method": cfg.sa.method,
                          "protocol": cfg.protocol, "run": run_key(asdict(cfg)), **inst}
                name = cell_name(arch, digit, seed)
                items.append(Item(name, config, partial(measure, cfg, run_dir(work, name, config), accelerator),
                                  before))
    return items


def command_line(args) -> str:
    """The command that measures (and renders) this table."""
    out = ["python benchmarks/digits.py", "--table", args.table, "--archs", *args.archs,
           "--digits", *map(str, args.digits), "--seeds", *map(str, args.seeds)]
    return " ".join(out + (["--set", *args.set] if args.set else []))


def parse_args(argv: list[str]):
    p = Parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--table", choices=list(TABLES), default="digits",
                   help="digits: the every-digit table; paper_default: the paper protocol beside the official "
                        "README's example (default digits)")
    p.add_argument("--archs", nargs="+", choices=ARCHS, help="default: the table's (digits: conv linear)")
    p.add_argument("--digits", nargs="+", type=int, help="default: the table's (digits: 0-9)")
    p.add_argument("--seeds", nargs="+", type=int, help="each the baseline's and SA's seed (digits: 0 1 2)")
    add_table_args(p)
    args = p.parse_args(argv)
    for key, default in TABLES[args.table].items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    for key in ("archs", "digits", "seeds"):
        if len(set(getattr(args, key))) != len(getattr(args, key)):
            raise UsageError(f"--{key}: a value named twice: {' '.join(map(str, getattr(args, key)))}")
    if any(not 0 <= d <= 9 for d in args.digits) or any(s < 0 for s in args.seeds):
        raise UsageError(f"--digits takes 0-9 and --seeds integers >= 0; got {args.digits} and {args.seeds}")
    args.values = parse_set(args.set)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    table = table_for(args.out, args.table, args.commit)
    work = work_dir(args.work, table)
    inst = instruments(run_config(args.values, protocol="paper"), paper=True, make=not args.dry_run)
    items = plan(args, inst or {}, work)
    if args.dry_run:
        dry_run(table, items, known=inst is not None)
        return
    run_plan(table, items)
    print(render(table, items, args, command_line(args)), end="")


if __name__ == "__main__":
    run_main(main)
