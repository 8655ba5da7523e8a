"""Compute the diagonal Fisher of a trained cVAE checkpoint and save it as safetensors (keys: parameter names).

    python scripts/compute_fisher.py --checkpoint baseline.safetensors --n-samples 50000 --seed 0 --out fisher.safetensors
    accelerate launch --num_processes 2 scripts/compute_fisher.py ...   (or torchrun --nproc_per_node 2 ...)

Every process computes a share of the samples; the main process writes the file. The result does not depend on
the number of processes or on --batch (up to float32 rounding).
"""
import time

import torch

from sa_dist.cli import Parser, run_main
from sa_dist.fisher import DEFAULT_BATCH, diag_fisher, save_fisher
from sa_dist.utils import UsageError


def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.safetensors) written by sa_dist")
    p.add_argument("--n-samples", type=int, default=50000, help="samples the model draws for the Fisher (50000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (0)")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"samples per backward ({DEFAULT_BATCH})")
    args = p.parse_args()
    if args.n_samples < 1 or args.batch < 1 or args.seed < 0:
        raise UsageError("--n-samples and --batch must be positive, --seed non-negative")

    from accelerate import Accelerator
    from sa_dist.checkpoint import load_checkpoint

    model, meta = load_checkpoint(args.checkpoint)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    t0 = time.perf_counter()
    fisher = diag_fisher(model.to(accelerator.device), args.n_samples, seed=args.seed, batch=args.batch,
                         accelerator=accelerator)
    seconds = time.perf_counter() - t0
    if accelerator.is_main_process:
        save_fisher(args.out, fisher, {"n_samples": args.n_samples, "seed": args.seed,
                                       "checkpoint": str(args.checkpoint), "model_config": meta["model_config"]})
        n_params = sum(f.numel() for f in fisher.values())
        print(f"fisher: {args.n_samples} samples on {accelerator.num_processes} process(es) in {seconds:.1f} s, "
              f"{n_params} params -> {args.out}")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    run_main(main)
