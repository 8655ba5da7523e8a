"""Deletion requests that arrive one after another: forget 2, then 7 from the model that forgot 2, and so on.

    python benchmarks/sequential.py --out-dir runs/sequential [--arch conv] [--requests 2 7 4 9 0] [--out PREFIX]

After each request i, three models that should have forgotten the same set {r_1..r_i} are compared, each against the
original model theta* with the same evaluator: `sequential` (request i applied with `scripts/unlearn.py --checkpoint`
to the model of request i-1), `at_once` (SA forgetting the whole set from theta* in one run) and `retrain` (trained
from scratch without the set). Reported per model: P(y=c) of every forgotten class, the retained classes' (never
forgotten) sample accuracy and test nELBO against theta*'s on the same classes, and the cumulative cost in seconds
(Fisher + SA of every request so far for `sequential`; one Fisher + SA for `at_once`; the training for `retrain`).
Prints JSON; with --out, also writes PREFIX.json and PREFIX.md. Finished runs in --out-dir are reused.
"""
import argparse
import json
from pathlib import Path

from sa_dist.cache import baseline_key, baseline_path, get_baseline
from sa_dist.checkpoint import load_checkpoint
from sa_dist.config import RunConfig, validate, with_values
from sa_dist.data import load_mnist
from sa_dist.evaluation.evaluator import get_evaluator
from sa_dist.evaluation.metrics import class_metrics
from sa_dist.models import ModelConfig
from sa_dist.pipeline import run_unlearn
from sa_dist.runtime import make_accelerator
from sa_dist.utils import atomic_write_text, write_json

BARS = {"forgotten_p": 0.01, "retained_acc_drop_pts": 2.0, "retained_nelbo_rise_pct": 4.0}


def run(cfg, run_dir: Path, checkpoint=None, accelerator=None) -> dict:
    """results.json of ``run_dir``, running ``scripts/unlearn.py``'s job first if it has not finished."""
    if not (run_dir / "results.json").is_file():
        run_unlearn(cfg, run_dir=str(run_dir), checkpoint=checkpoint, accelerator=accelerator)
    return json.loads((run_dir / "results.json").read_text())


def against_original(model, forgotten: list[int], original: dict, evaluator, data, cfg) -> dict:
    """P(y=c) of each forgotten class, and the never-forgotten classes' accuracy and nELBO against theta*'s."""
    pc = class_metrics(model, evaluator, *data, cfg.eval_samples, cfg.train.seed)["per_class"]
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


def benchmark(base: RunConfig, requests: list[int], out_dir: Path) -> dict:
    accelerator = make_accelerator(mixed_precision=base.mixed_precision)
    original, info = get_baseline(base, accelerator)
    evaluator, _ = get_evaluator(accelerator, base.data_dir, limit=base.train.limit)
    data = load_mnist(False, base.data_dir, base.train.limit)
    theta = class_metrics(original, evaluator, *data, base.eval_samples, base.train.seed)["per_class"]
    checkpoint, seq_cost, steps = str(baseline_path(baseline_key(base))), 0.0, []
    for i, c in enumerate(requests):
        done = requests[:i + 1]
        seq_dir = out_dir / f"sequential-{i + 1}-forget{c}"
        r = run(validate(with_values(base, {"sa.forget": [c]})), seq_dir, checkpoint, accelerator)
        seq_cost += r["timing_s"]["fisher"] + r["timing_s"]["unlearn"]
        checkpoint = str(seq_dir / "unlearned.safetensors")
        once = run(validate(with_values(base, {"sa.forget": done})), out_dir / f"at_once-{i + 1}", None, accelerator)
        again = run(validate(with_values(base, {"sa.forget": done, "sa.method": "retrain"})),
                    out_dir / f"retrain-{i + 1}", None, accelerator)
        models = {"sequential": (seq_dir, seq_cost),
                  "at_once": (out_dir / f"at_once-{i + 1}", once["timing_s"]["fisher"] + once["timing_s"]["unlearn"]),
                  "retrain": (out_dir / f"retrain-{i + 1}", again["timing_s"]["unlearn"])}
        row = {"request": i + 1, "forgotten": done}
        for name, (run_dir, cost) in models.items():
            model, _ = load_checkpoint(run_dir / "unlearned.safetensors", expect=base.model)
            row[name] = {**against_original(model, done, theta, evaluator, data, base), "seconds": cost}
            row[name]["meets_bars"] = meets_bars(row[name])
        steps.append(row)
    return {"requests": requests, "arch": base.model.arch, "seed": base.train.seed, "bars": BARS,
            "baseline_seconds": info["seconds"], "steps": steps}


def markdown(result: dict) -> str:
    out = ["| after request | forgotten | model | max P(y=c_f) over forgotten | retained acc drop (points) "
           "| retained nELBO rise | cumulative seconds | bars met |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["steps"]:
        for name in ("sequential", "at_once", "retrain"):
            m = row[name]
            worst = max(m["forgotten_p"], key=m["forgotten_p"].get)
            out.append(f"| {row['request']} | {','.join(map(str, row['forgotten']))} | {name} "
                       f"| {m['forgotten_p'][worst]:.4f} (digit {worst}) | {m['retained_acc_drop_pts']:+.2f} "
                       f"| {m['retained_nelbo_rise_pct']:+.2f}% | {m['seconds']:.1f} | {'yes' if m['meets_bars'] else 'no'} |")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, required=True, help="folder of the runs (reused when finished)")
    p.add_argument("--arch", default="conv", help="conv | linear (default conv)")
    p.add_argument("--requests", type=int, nargs="+", default=[2, 7, 4, 9, 0], help="classes, in request order")
    p.add_argument("--seed", type=int, default=RunConfig().train.seed, help="the baseline's seed")
    p.add_argument("--out", help="also write PREFIX.json and PREFIX.md")
    args = p.parse_args()
    base = validate(RunConfig(model=ModelConfig(arch=args.arch)))
    base = validate(with_values(base, {"train.seed": args.seed}))
    result = benchmark(base, args.requests, args.out_dir)
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(f"{args.out}.json", result)
        atomic_write_text(f"{args.out}.md", markdown(result))


if __name__ == "__main__":
    main()
