"""Forgetting that survives attacks: every method against the same attacks, over seeds, as ratios to retraining.

    python benchmarks/robustness.py --work runs/robustness --arch linear --epochs 20 --lr 3e-3 --forget 2 \
        --seeds 1 2 --out benchmarks/results/robustness_linear_forget2

For each seed (the baseline's and the unlearning's seed) and method (original θ*, sa, retrain, dampen, noise): one
``scripts/unlearn.py`` run in ``--work`` (reused when finished), then the attacks of ``sa_dist.attacks`` on its model:
relearning on k real forgotten-class images at every lr of ``--lrs`` (steps to P >= 0.5 per lr, and at the
attacker's best lr), retain-only relearning (the largest P(c_f) while fine-tuning on the other classes),
condition and joint inversion, L2 / Fisher distance from θ* and the loss barrier on the line θ* -> θ (forgotten-class
test images). Quality bars: P(c_f), retained sample accuracy and retained test nELBO against θ*'s; cost: the method's
own seconds (Fisher + unlearning) over retraining's. Seeds are combined into mean and [min, max]; each seed's numbers
are kept in --work (robustness-ARCH-seedS.json; delete them to re-measure). Writes PREFIX.json,
PREFIX.md and PREFIX.png (the frontier: cost vs relearning ratio vs quality) and prints the table.
"""
import argparse
import json
import math
from pathlib import Path

import torch

from sa_dist.analysis.plots import save_png, subplots
from sa_dist.attacks.suite import AttackConfig, run_invert, run_relearn, run_retain, run_weights, summary
from sa_dist.cache import get_baseline, get_fisher
from sa_dist.checkpoint import load_checkpoint
from sa_dist.config import RunConfig, validate, with_values
from sa_dist.evaluation.evaluator import get_evaluator
from sa_dist.pipeline import run_unlearn
from sa_dist.runtime import make_accelerator
from sa_dist.utils import atomic_write_text, write_json

METHODS = ("original", "sa", "retrain", "dampen", "noise")


def unlearn(cfg: RunConfig, method: str, run_dir: Path, accelerator) -> dict:
    if not (run_dir / "results.json").is_file():
        run_unlearn(with_values(cfg, {"sa.method": method}), run_dir=str(run_dir), accelerator=accelerator)
    return json.loads((run_dir / "results.json").read_text())


def quality(res: dict, forget: list[int], when: str = "after") -> dict:
    s, b = res["summary"][when], res["summary"]["before"]
    return {"p_forgotten": max(s["forgotten_p_class"].values()), "retained_acc": s["retained_sample_acc"],
            "retained_acc_drop_pts": 100 * (b["retained_sample_acc"] - s["retained_sample_acc"]),
            "retained_nelbo_rise_pct": 100 * (s["retained_test_nelbo"] / b["retained_test_nelbo"] - 1),
            "p_ideal": max(res["surrogate"]["ideal"]["p_class"].values())}


def one_seed(args, seed: int, accelerator, evaluator) -> dict:
    cfg = validate(with_values(RunConfig(), {"model.arch": args.arch, "train.epochs": args.epochs,
                                             "train.seed": seed, "sa.forget": args.forget,
                                             **({"train.lr": args.lr} if args.lr else {})}))
    models, rows = {}, {}
    for m in args.methods:
        if m == "original":
            continue
        res = unlearn(cfg, m, args.work / f"{args.arch}-{m}-seed{seed}", accelerator)
        models[m] = (load_checkpoint(args.work / f"{args.arch}-{m}-seed{seed}" / "unlearned.safetensors")[0], m)
        t = res["timing_s"]
        rows[m] = {**quality(res, args.forget), "seconds": (t["fisher"] or 0) + t["unlearn"]}
        rows.setdefault("original", {**quality(res, args.forget, "before"), "seconds": 0.0})
    original, info = get_baseline(cfg, accelerator)
    models = {"original": (original, "baseline"), **models} if "original" in args.methods else models
    fisher = get_fisher(cfg, original, info["key"], accelerator)[0]
    a = AttackConfig(relearn_k=args.k, relearn_lr=args.lrs, relearn_steps=args.relearn_steps,
                     retain_steps=args.retain_steps, invert_restarts=args.restarts, invert_steps=args.invert_steps,
                     relearn_samples=args.samples, seed=seed)
    target, dev = args.forget[0], accelerator.device
    attacks = {"relearn": run_relearn(models, evaluator, cfg, a, target, dev),
               "retain": run_retain(models, evaluator, cfg, a, target, dev),
               "invert": run_invert(models, evaluator, a, target, dev, None),
               "weights": run_weights(models, original, fisher, cfg, a, target)}
    table = summary(attacks)
    for m, row in rows.items():
        row.update({k: v for k, v in table.get(m, {}).items() if k != "vs_retrain"})
        for k in args.k:
            for lr, r in attacks["relearn"]["models"][m][f"k{k}"]["by_lr"].items():
                row[f"relearn_steps_k{k}_lr{lr}"] = r["steps_to_threshold"]
    ref = rows.get("retrain", {}).get("seconds")
    for row in rows.values():
        row["cost_vs_retrain"] = row["seconds"] / ref if ref else None
    return {"rows": rows, "attacks": attacks, "baseline_key": info["key"]}


def combine(per_seed: list[dict], methods) -> dict:
    """Per method and number: mean, min, max over seeds (None values, e.g. never relearned, are counted apart), and
    each mean over retrain's mean (``ratio``)."""
    out = {}
    for m in methods:
        keys = [k for k in per_seed[0]["rows"][m]]
        out[m] = {}
        for k in keys:
            vals = [s["rows"][m].get(k) for s in per_seed]
            nums = [v for v in vals if isinstance(v, (int, float))]
            out[m][k] = {"mean": sum(nums) / len(nums) if nums else None, "min": min(nums, default=None),
                         "max": max(nums, default=None), "missing": len(vals) - len(nums), "values": vals}
    for m in methods:
        for k, v in out[m].items():
            ref = out.get("retrain", {}).get(k, {}).get("mean")
            v["ratio"] = v["mean"] / ref if v["mean"] is not None and ref else None
    return out


COLUMNS = [("relearn_steps_k10", "k=10 steps (best lr)"), ("relearn_steps_k100", "k=100 steps (best lr)"),
           ("retain_max_p", "retain-only max P"), ("invert_onehot_best_p", "onehot inversion best P"),
           ("invert_free_best_p", "free inversion best P"), ("l2", "L2 from θ*"), ("fisher_distance", "Fisher dist."),
           ("barrier", "barrier (nats)"), ("p_forgotten", "P(c_f)"), ("retained_acc", "retained acc"),
           ("retained_nelbo_rise_pct", "retained nELBO vs θ* (%)"), ("cost_vs_retrain", "cost / retrain")]


def fmt(v: dict, ratio: bool) -> str:
    if v is None or v["mean"] is None:
        return "never" if v and v["missing"] else "-"
    cell = f"{v['mean']:.3g} [{v['min']:.3g}, {v['max']:.3g}]" + (f" +{v['missing']} never" if v["missing"] else "")
    return cell + (f" ({v['ratio']:.2f}×)" if ratio and v.get("ratio") is not None else "")


def markdown(comb: dict, args) -> str:
    head = "| method | " + " | ".join(t for _, t in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    for m, row in comb.items():
        cells = [fmt(row.get(k), k.startswith(("relearn", "l2", "fisher", "barrier"))) for k, _ in COLUMNS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Steps to relearn, per lr (mean over seeds; k=10 / k=100):", "",
              "| method | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |", "|" + " --- |" * (len(args.lrs) + 1)]
    for m, row in comb.items():
        cells = [" / ".join(fmt(row.get(f"relearn_steps_k{k}_lr{lr:g}"), False) for k in args.k) for lr in args.lrs]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def frontier(comb: dict, path: Path):
    fig, axes = subplots(1, 2, figsize=(10, 4))
    for m, row in comb.items():
        y = (row["relearn_steps_k10"]["ratio"] or 0, row["relearn_steps_k100"]["ratio"] or 0)
        for ax, xkey in zip(axes, ("cost_vs_retrain", "retained_nelbo_rise_pct")):
            x = row[xkey]["mean"]
            ax.scatter([x, x], y, marker="o", label=m)
            ax.annotate(m, (x, y[0]), fontsize=8)
    axes[0].set(xlabel="cost / retraining", ylabel="relearning steps / retrain's (k=10, k=100; best lr)")
    axes[1].set(xlabel="retained test nELBO vs θ* (%)", ylabel="relearning steps / retrain's")
    for ax in axes:
        ax.axhline(1.0, color="grey", ls="--", lw=1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder of the unlearning runs (reused when finished)")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--arch", default="conv")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--lr", type=float, help="baseline training lr (default TrainConfig's)")
    p.add_argument("--forget", nargs="+", type=int, default=[2])
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    p.add_argument("--k", nargs="+", type=int, default=[10, 100])
    p.add_argument("--relearn-steps", type=int, default=500)
    p.add_argument("--retain-steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=64)
    p.add_argument("--invert-steps", type=int, default=200)
    p.add_argument("--samples", type=int, default=1000, help="samples scored per relearning step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="PREFIX of PREFIX.json, .md, .png")
    args = p.parse_args()
    if "retrain" not in args.methods:
        p.error("--methods needs retrain (every number is a ratio to it)")
    torch.set_num_threads(args.threads)
    accelerator = make_accelerator(cpu=True, mixed_precision="no")
    evaluator, _ = get_evaluator(accelerator)
    per_seed = []
    for seed in args.seeds:  # each seed's numbers are kept in --work, so an interrupted benchmark resumes
        path = args.work / f"robustness-{args.arch}-seed{seed}.json"
        if not path.is_file():
            write_json(path, one_seed(args, seed, accelerator, evaluator))
        per_seed.append(json.loads(path.read_text()))
    comb = combine(per_seed, args.methods)
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "combined": comb, "per_seed": {str(s): r["rows"] for s, r in zip(args.seeds, per_seed)},
              "attacks": {str(s): r["attacks"] for s, r in zip(args.seeds, per_seed)}}
    md = markdown(comb, args)
    if args.out:
        write_json(f"{args.out}.json", result)
        atomic_write_text(f"{args.out}.md", md)
        frontier(comb, Path(f"{args.out}.png"))
    print(md)


if __name__ == "__main__":
    main()
