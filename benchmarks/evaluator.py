"""Train the default evaluator (ten digits + REJECT, temperature-scaled) and print its quality as JSON.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/evaluator.py [--seed 0] [--epochs 3] [--threads 1]

Prints: MNIST test accuracy (argmax over all 11 outputs), share of fresh test non-digits called REJECT, expected
calibration error (15 bins) before and after temperature scaling, the temperature, and mean P(reject) on flat 0.5
grey, black, white, uniform noise, fresh non-digits of every kind and the real test digits; "seconds" is the
training time (on a shared machine: under load). The trained network is stored in the cache (where runs find it)
when no evaluator of this seed is cached yet.
"""
import argparse
import json
import platform

import torch

from sa_dist.checkpoint import save_tensors
from sa_dist.evaluation.evaluator import evaluator_path, train_evaluator


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net, info = train_evaluator(seed=args.seed, epochs=args.epochs)
    path = evaluator_path(args.seed)
    if args.epochs == 3 and not path.is_file():
        save_tensors(path, net.state_dict(), {"kind": "evaluator", **info})
    print(json.dumps({**info, "epochs": args.epochs, "threads": args.threads, "torch": torch.__version__,
                      "machine": platform.processor() or platform.machine()}, indent=2))


if __name__ == "__main__":
    main()
