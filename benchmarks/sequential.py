"""Deletion requests that arrive one after another: forget 2, then 7 from the model that forgot 2, and so on.

    python benchmarks/sequential.py [--requests 2 7 4 9 0] [--arch conv] [--seed 49] [--work DIR] [--out DIR]
                                    [--commit] [--dry-run]

After each request i, three models that should have forgotten the same set {r_1..r_i} are compared, each against the
original model θ* with the same evaluator: ``sequential`` (request i applied with ``--checkpoint`` to the model of
request i-1), ``at_once`` (SA forgetting the whole set from θ* in one run) and ``retrain`` (trained from scratch
without the set). Each is one cell (and one run directory in ``--work``) keyed by the hash of its whole config: the
requests so far in their order, the arch, the seed, the method, every other config value and the evaluator, so a
rerun with other ``--requests``, ``--seed`` or ``--arch`` measures new runs instead of comparing old ones. A first
cell scores θ* itself. Reported per model: P(y=c) of every forgotten class, the retained (never forgotten) classes'
sample accuracy and test nELBO against θ*'s, and the cumulative seconds (Fisher + SA of every request so far for
``sequential``; one Fisher + SA for ``at_once``; the training for ``retrain``). The table (``sequential.md``,
``.json``, ``.png`` in ``--out``) is rendered from the cells alone.
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from functools import partial

from cells import run_key
from celltables import (BARS, Item, add_table_args, dry_run, ensure_run, instruments, once, parse_set, run_config,
                        run_dir, run_plan, table_for, work_dir)
from sa_dist.cache import get_baseline
from sa_dist.checkpoint import load_checkpoint
from sa_dist.cli.flags import Parser, run_main
from sa_dist.config import RunConfig, validate, with_values
from sa_dist.data import load_mnist
from sa_dist.evaluation.evaluator import get_evaluator
from sa_dist.evaluation.metrics import class_metrics
from sa_dist.models import ARCHS
from sa_dist.runtime import make_accelerator
from sa_dist.utils import UsageError
from sequential_render import MODELS, render

REQUESTS = [2, 7, 4, 9, 0]


class Shared:
    """What every cell of one table reads: the accelerator, the evaluator and the test set, made on first use."""

    def __init__(self, base: RunConfig):
        self.base = base
        self.accelerator = once(lambda: make_accelerator(mixed_precision=base.mixed_precision))
        self.evaluator = once(lambda: get_evaluator(None, base.data_dir, limit=base.train.limit)[0])
        self.data = once(lambda: load_mnist(False, base.data_dir, base.train.limit))


def against_original(model, forgotten: list[int], original: dict, shared: Shared) -> dict:
    """P(y=c) of each forgotten class, and the never-forgotten classes' accuracy and nELBO against θ*'s."""
    cfg = shared.base
    pc = class_metrics(model, shared.evaluator(), *shared.data(), cfg.eval_samples, cfg.train.seed)["per_class"]
    kept = [str(c) for c in range(cfg.model.n_classes) if c not in forgotten]
    mean = lambda per, key: sum(per[c][key] for c in kept) / len(kept)  # noqa: E731
    return {"forgotten_p": {str(c): pc[str(c)]["p_class"] for c in forgotten},
            "retained_acc": mean(pc, "sample_acc"), "retained_nelbo": mean(pc, "test_nelbo"),
            "retained_acc_drop_pts": 100 * (mean(original, "sample_acc") - mean(pc, "sample_acc")),
            "retained_nelbo_rise_pct": 100 * (mean(pc, "test_nelbo") / mean(original, "test_nelbo") - 1)}


def meets_bars(row: dict) -> bool:
    return (max(row["forgotten_p"].values()) <= BARS["forgotten_p"]
            and row["retained_acc_drop_pts"] <= BARS["retained_acc_drop_pts"]
            and row["retained_nelbo_rise_pct"] <= BARS["retained_nelbo_rise_pct"])


def measure_original(shared: Shared) -> dict:
    model, info = get_baseline(shared.base, shared.accelerator())
    pc = class_metrics(model, shared.evaluator(), *shared.data(), shared.base.eval_samples, shared.base.train.seed)
    return {"per_class": pc["per_class"], "baseline_key": info["key"], "baseline_s": info["seconds"]}


def measure_model(kind: str, chain: list, done: list[int], original, shared: Shared) -> dict:
    """One model after request len(done): its run (``chain``: the runs it needs, in order, each ``(config,
    run directory)``; a sequential model's earlier requests come first), scored against θ*."""
    checkpoint, reused = None, False
    for cfg, path in chain:
        results, reused = ensure_run(cfg, path, shared.accelerator(), checkpoint)
        checkpoint = str(path / "unlearned.safetensors") if kind == "sequential" else None
    model, _ = load_checkpoint(chain[-1][1] / "unlearned.safetensors", expect=shared.base.model)
    t = results["timing_s"]
    own = t["unlearn"] + ((t["fisher"] or 0.0) if kind != "retrain" else 0.0)
    row = against_original(model, done, original()["result"]["per_class"], shared)
    return {**row, "meets_bars": meets_bars(row), "seconds": own, "run_reused": reused,
            "cached": bool(t.get("unlearn_cached") or (kind != "retrain" and t.get("fisher_cached"))),
            "forget_classes": results["forget_classes"], "run": chain[-1][1].name}


def cell_config(model: str, done: list[int], base: RunConfig, inst: dict) -> dict:
    method = {"original": None, "retrain": "retrain"}.get(model, "sa")
    return {"model": model, "requests": list(done), "arch": base.model.arch, "seed": base.train.seed,
            "method": method, "base": run_key(asdict(base)), **inst}


def plan(base: RunConfig, requests: list[int], inst: dict, table, work) -> list[Item]:
    """θ*'s cell, then per request: sequential, at_once, retrain."""
    shared = Shared(base)
    original = Item("original", cell_config("original", [], base, inst), partial(measure_original, shared))
    items, seq_chain = [original], []
    load_original = partial(table.get, original.name, original.config)
    for i, c in enumerate(requests):
        done = requests[:i + 1]
        tag = "_".join(map(str, done))
        for model in MODELS:
            name, config = f"{model}-{tag}", cell_config(model, done, base, inst)
            values = {"sa.forget": [c] if model == "sequential" else done,
                      **({"sa.method": "retrain"} if model == "retrain" else {})}
            link = (validate(with_values(base, values)), run_dir(work, name, config))
            if model == "sequential":
                seq_chain = seq_chain + [link]  # request i runs on the model of request i-1
            chain = seq_chain if model == "sequential" else [link]
            items.append(Item(name, config, partial(measure_model, model, chain, done, load_original, shared)))
    return items


def parse_args(argv: list[str]):
    p = Parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--requests", type=int, nargs="+", default=REQUESTS,
                   help=f"classes, in request order (default {' '.join(map(str, REQUESTS))})")
    p.add_argument("--arch", choices=ARCHS, default=RunConfig().model.arch, help="default conv")
    p.add_argument("--seed", type=int, default=RunConfig().train.seed,
                   help=f"the baseline's seed and SA's (default {RunConfig().train.seed})")
    add_table_args(p, "sequential")
    args = p.parse_args(argv)
    n = RunConfig().model.n_classes
    if len(set(args.requests)) != len(args.requests) or any(not 0 <= c < n for c in args.requests) \
            or len(args.requests) >= n:
        raise UsageError(f"--requests takes distinct classes in 0-{n - 1}, fewer than {n}; got {args.requests}")
    args.values = parse_set(args.set)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    table = table_for(args.out, "sequential", args.commit)
    work = work_dir(args.work, table)
    base = run_config(args.values, **{"model.arch": args.arch, "train.seed": args.seed})
    inst = instruments(base, make=not args.dry_run)
    items = plan(base, args.requests, inst or {}, table, work)
    if args.dry_run:
        dry_run(table, items, known=inst is not None)
        return
    run_plan(table, items)
    command = (f"python benchmarks/sequential.py --requests {' '.join(map(str, args.requests))} --arch {args.arch} "
               f"--seed {args.seed}" + (f" --set {' '.join(args.set)}" if args.set else ""))
    print(render(table, items, args.requests, base, command), end="")


if __name__ == "__main__":
    run_main(main)
