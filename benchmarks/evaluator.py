"""Train the evaluator (ten digits + REJECT, temperature-scaled, trained under photometric changes) and print its
quality against its bars as JSON; with --ship, write it into the package as the evaluator every run scores with.

    python benchmarks/evaluator.py --ship              # retrain the packaged evaluator (seed 0, all of MNIST)
    python benchmarks/evaluator.py --epochs 3 --limit 20000 --out /tmp/ev.safetensors   # a trial, nothing shipped

Prints: MNIST test accuracy (argmax over all 11 outputs), the share of fresh test non-digits called REJECT (clean and
under a random photometric change), ECE before and after temperature scaling, the temperature, mean P(reject) on flat
grey, black, white, noise, non-digits and real digits, and per photometric test transform the mean P(true digit);
``bars`` says which of the issue's bars are met (test accuracy >= 0.99, non-digits rejected >= 0.99, P(true digit)
>= 0.9 under each transform). --ship writes sa_dist/evaluation/weights/evaluator-v<VERSION>.safetensors and puts its
SHA-256 into sa_dist/evaluation/evaluator.py (WEIGHTS_SHA256); commit both. "seconds" is the training time, to be
read with the load average printed beside it.
"""
import argparse
import hashlib
import json
import os
import platform
import re
from pathlib import Path

import torch

from sa_dist.checkpoint import save_tensors
from sa_dist.evaluation import evaluator as ev
from sa_dist.evaluation.photometric import TRANSFORM_BAR


def bars(info: dict) -> dict:
    """Which of the evaluator's bars ``info`` meets."""
    return {"test_acc>=0.99": info["test_acc"] >= 0.99, "reject_acc>=0.99": info["reject_acc"] >= 0.99,
            "reject_acc_changed>=0.99": info["photometric"]["reject_acc_changed"] >= 0.99,
            f"p_true>={TRANSFORM_BAR}_each_transform": info["photometric"]["min_p_true"] >= TRANSFORM_BAR}


def ship(net, info: dict, source: Path = Path(ev.__file__)) -> str:
    """Write the packaged weights and their SHA-256 into the evaluator module; returns the SHA-256."""
    save_tensors(ev.WEIGHTS, net.state_dict(), {"kind": "evaluator", **info})
    digest = hashlib.sha256(ev.WEIGHTS.read_bytes()).hexdigest()
    text = source.read_text()
    new = re.sub(r'^WEIGHTS_SHA256 = "[0-9a-f]*"', f'WEIGHTS_SHA256 = "{digest}"', text, count=1, flags=re.M)
    if new == text and digest not in text:
        raise SystemExit(f"WEIGHTS_SHA256 not found in {source}")
    source.write_text(new)
    return digest


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=ev.SHIPPED_SEED)
    p.add_argument("--epochs", type=int, default=ev.EPOCHS)
    p.add_argument("--limit", type=int, help="train on the first N images only (a trial; never shipped)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--ship", action="store_true", help="write the packaged evaluator and its SHA-256")
    p.add_argument("--out", type=Path, help="also save the trained network here (a trial)")
    args = p.parse_args()
    if args.ship and (args.limit or args.seed != ev.SHIPPED_SEED):
        p.error("--ship trains seed 0 on all of MNIST: drop --limit and --seed")
    torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    net, info = ev.train_evaluator(seed=args.seed, epochs=args.epochs, limit=args.limit)
    load.append(os.getloadavg()[0])
    out = {**info, "bars": bars(info), "threads": args.threads, "load_1min_start_end": load,
           "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    if args.out:
        save_tensors(args.out, net.state_dict(), {"kind": "evaluator", **info})
    if args.ship:
        out["sha256"] = ship(net, info)
        out["weights"] = str(ev.WEIGHTS)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
