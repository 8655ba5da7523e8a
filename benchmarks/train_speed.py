"""Seconds per baseline step and per epoch for each architecture, and the data pipeline's share of a step.

    python benchmarks/train_speed.py [--steps 60]      # prints JSON
"""
import argparse
import json
import platform
import time

import torch

from sa_dist.data import loaders
from sa_dist.models import ModelConfig, build_model, negative_elbo
from sa_dist.runtime import make_accelerator


def measure(arch: str, steps: int, accelerator) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch))
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    tr, _ = loaders(256, seed=0)
    model, opt, tr = accelerator.prepare(model, opt, tr)
    it = iter(tr)
    data_s = step_s = 0.0
    for i in range(steps + 5):
        t0 = time.perf_counter()
        x, c = next(it)  # the data pipeline: one fancy index into in-memory tensors
        t1 = time.perf_counter()
        loss = negative_elbo(model, x, c).mean()
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        t2 = time.perf_counter()
        if i >= 5:  # warm-up excluded
            data_s, step_s = data_s + (t1 - t0), step_s + (t2 - t1)
    per_step = (data_s + step_s) / steps
    return {"arch": arch, "steps": steps, "seconds_per_step": per_step, "data_seconds_per_step": data_s / steps,
            "data_share": data_s / (data_s + step_s), "seconds_per_epoch_est": per_step * len(tr)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    acc = make_accelerator()
    out = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
           "torch": torch.__version__, "results": [measure(a, args.steps, acc) for a in ("conv", "linear")]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
