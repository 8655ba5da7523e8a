"""Rescore finished runs with the current evaluator (ten digits + REJECT) and print old vs new as JSON.

    python benchmarks/rescore.py RUN_DIR [RUN_DIR ...] [--baseline FILE] [--samples 1000] [--threads 1]

Each run needs its unlearned.safetensors and its baseline (``--baseline``, else the cached one of results.json's
``baseline.key``). results.json is left as it is; one JSON object per run is printed: the forgotten P(y=c_f), its
P(reject) and entropy, retained sample accuracy, the surrogate's ideal output, under the evaluator the run was
scored with ("old", from results.json) and under the current one ("new").
"""
import argparse
import json
from pathlib import Path

import torch

from sa_dist.cache import baseline_path
from sa_dist.checkpoint import load_checkpoint
from sa_dist.data import load_mnist
from sa_dist.evaluation.evaluator import get_evaluator
from sa_dist.evaluation.metrics import compare
from sa_dist.runs import load_results


def headline(r: dict) -> dict:
    s, ideal = r["summary"], r["surrogate"]["ideal"]
    return {"evaluator_version": (r.get("evaluator") or {}).get("version", 1),
            "forgotten_p": s["after"]["forgotten_p_class"], "forgotten_p_reject": s["after"].get("forgotten_p_reject"),
            "forgotten_entropy": s["after"]["forgotten_entropy"],
            "retained_sample_acc": [s["before"]["retained_sample_acc"], s["after"]["retained_sample_acc"]],
            "ideal_p_class": ideal["p_class"], "ideal_p_reject": ideal.get("p_reject"), "bar": s.get("bar")}


def rescore(run_dir: Path, baseline: str | None, samples: int) -> dict:
    r = load_results(run_dir)
    cfg = r["config"]
    base = Path(baseline) if baseline else baseline_path(str((r.get("baseline") or {}).get("key")))
    before, _ = load_checkpoint(base)
    after, _ = load_checkpoint(run_dir / "unlearned.safetensors", expect=before.cfg)
    limit = cfg["train"].get("limit")
    evaluator, info = get_evaluator(None, cfg.get("data_dir"), limit=limit)
    x, y = load_mnist(False, cfg.get("data_dir"), limit)
    new = compare(before, after, evaluator, x, y, r["forget_classes"], cfg["sa"]["surrogate"], samples,
                  cfg["train"]["seed"])
    return {"run": str(run_dir), "old": headline(r), "new": headline({**new, "evaluator": info})}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--baseline")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for d in args.runs:
        print(json.dumps(rescore(Path(d), args.baseline, args.samples), indent=2))


if __name__ == "__main__":
    main()
