"""Benchmark the diagonal Fisher: the per-sample loop vs the fast path vs one plain batched forward+backward.

    python benchmarks/fisher.py [--arch conv linear] [--n-samples 50000] [--loop-samples 500] [--checkpoint F]

Prints one JSON object per architecture. Costs per sample are measured as the best of a few interleaved sweeps
(robust to other processes on a shared machine) and scaled to --n-samples; the loop is timed on --loop-samples.
"fast_s" and "plain_fwd_bwd_s" are the gradient work alone on the same pre-drawn samples; "diag_fisher_s_by_batch"
adds drawing the samples, per batch size; "diag_fisher_s_measured" is one real diag_fisher call at the best batch.
"""
import argparse
import json
import os
import time

import torch

from sa_dist.checkpoint import load_checkpoint
from sa_dist.data import load_mnist
from sa_dist.fisher import diag_fisher, fisher_batch, sum_sq_grads, sum_sq_grads_loop
from sa_dist.models import ModelConfig, build_model, negative_elbo


def warmed_up_model(arch: str, steps: int = 30, seed: int = 0):
    """A default-width model after a few Adam steps on MNIST in train mode, so batch-norm stats are real."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch))
    x, y = load_mnist(train=True, limit=128 * steps)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for xb, yb in zip(x.split(128), y.split(128)):
        loss = negative_elbo(model, xb, yb).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def plain_pass(model, batches):
    """One ordinary batched forward+backward of sum_b nelbo_b per batch: the floor for any Fisher method."""
    for x, c, eps in batches:
        model.zero_grad(set_to_none=True)
        negative_elbo(model, x, c, eps).sum().backward()


def fast_pass(model, batches):
    for x, c, eps in batches:
        sum_sq_grads(model, x, c, eps)


def draw_pass(model, batches, seed):
    start = 0
    for x, _, _ in batches:
        fisher_batch(model, seed, start, len(x))
        start += len(x)


def per_sample_seconds(model, samples, sizes, seed, repeats):
    """Seconds per sample of each method and batch size: the best of ``repeats`` interleaved sweeps over
    ``samples``, so a burst of load from other processes on a shared machine does not skew one method."""
    best = {}
    for _ in range(repeats):
        for b in sizes:
            batches = list(zip(*(t.split(b) for t in samples)))
            for name, fn in (("plain", plain_pass), ("fast", fast_pass)):
                _, s = timed(lambda: fn(model, batches))
                best[name, b] = min(best.get((name, b), s), s)
            _, s = timed(lambda: draw_pass(model, batches, seed))
            best["draw", b] = min(best.get(("draw", b), s), s)
    return {k: v / len(samples[0]) for k, v in best.items()}


def loop_seconds_per_sample(model, samples, chunk: int = 50):
    """The loop's best time per sample over chunks of ``chunk`` samples."""
    times = [timed(lambda: sum_sq_grads_loop(model, *(t[s:s + chunk] for t in samples)))[1] / chunk
             for s in range(0, len(samples[0]) - chunk + 1, chunk)]
    return min(times)


def bench(model, arch: str, args) -> dict:
    model = model.float().eval()
    n = args.n_samples
    sub = fisher_batch(model, args.seed, 0, args.loop_samples)
    loop_ps = loop_seconds_per_sample(model, sub)
    loop, fast_sub = sum_sq_grads_loop(model, *sub), sum_sq_grads(model, *sub)
    rel = max(((fast_sub[k] - loop[k]).abs().max() / loop[k].abs().max()).item() for k in loop)

    samples = fisher_batch(model, args.seed, 0, args.measure_samples)
    ps = per_sample_seconds(model, samples, args.batches, args.seed, args.repeats)
    best = min(args.batches, key=lambda b: ps["fast", b] + ps["draw", b])
    fast_s, plain_s, loop_s = ps["fast", best] * n, ps["plain", best] * n, loop_ps * n
    _, e2e = timed(lambda: diag_fisher(model, n, args.seed, batch=best, progress=False))
    return {
        "arch": arch, "width": model.cfg.width, "z_dim": model.cfg.z_dim,
        "n_params": sum(p.numel() for p in model.parameters()), "n_samples": n,
        "threads": torch.get_num_threads(), "load_avg_1min": round(os.getloadavg()[0], 2),
        "loop_s": round(loop_s, 2), "fast_s": round(fast_s, 2), "plain_fwd_bwd_s": round(plain_s, 2),
        "speedup_loop_over_fast": round(loop_s / fast_s, 1), "fast_over_plain": round(fast_s / plain_s, 2),
        "batch": best,
        "diag_fisher_s_by_batch": {str(b): round((ps["fast", b] + ps["draw", b]) * n, 2) for b in args.batches},
        "diag_fisher_s_measured": round(e2e, 2),
        "max_rel_diff_fast_vs_loop": float(f"{rel:.2e}"),
        "note": (f"per-sample costs are the best of {args.repeats} interleaved sweeps over {args.measure_samples} "
                 f"samples (the loop: best 50-sample chunk of {args.loop_samples}), scaled to n_samples; "
                 "fast/plain/loop exclude drawing the samples, diag_fisher_s_by_batch includes it; "
                 "diag_fisher_s_measured is one real diag_fisher call; max_rel_diff is, over tensors, "
                 "max|fast - loop| / max|loop| in float32 on the loop's samples"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["conv", "linear"])
    p.add_argument("--checkpoint", help="benchmark this model instead (its arch only)")
    p.add_argument("--n-samples", type=int, default=50000)
    p.add_argument("--loop-samples", type=int, default=500)
    p.add_argument("--measure-samples", type=int, default=5000, help="samples per timing sweep")
    p.add_argument("--repeats", type=int, default=3, help="timing sweeps; the best counts")
    p.add_argument("--batches", type=int, nargs="+", default=[250, 500, 1000], help="diag_fisher batch sizes to try")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
        print(json.dumps(bench(model, model.cfg.arch, args)), flush=True)
        return
    for arch in args.arch:
        print(json.dumps(bench(warmed_up_model(arch), arch, args)), flush=True)


if __name__ == "__main__":
    main()
