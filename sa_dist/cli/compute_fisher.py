"""Compute the diagonal Fisher of a trained cVAE checkpoint and save it as safetensors (keys: parameter names).

    python scripts/compute_fisher.py --checkpoint baseline.safetensors --out fisher.safetensors
    accelerate launch --num_processes 2 scripts/compute_fisher.py ...   (or torchrun --nproc_per_node 2 ...)

Every process computes a share of the samples; the main process writes the file. The result does not depend on
the number of processes or on --batch (up to float32 rounding). The defaults are those of scripts/unlearn.py.
"""
import time

from ..checkpoint import load_checkpoint, save_fisher
from ..config import SAConfig, TrainConfig
from ..fisher import diag_fisher
from ..runtime import make_accelerator
from ..utils import UsageError
from .flags import Parser, command


def parser() -> Parser:
    """The flags; the Fisher's defaults are unlearn's (``SAConfig``, ``TrainConfig``)."""
    sa, train = SAConfig(), TrainConfig()
    p = Parser(prog="compute_fisher.py", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.safetensors) written by sa_dist")
    p.add_argument("--n-samples", type=int, default=sa.n_fisher,
                   help=f"samples the model draws for the Fisher (default {sa.n_fisher}, as --n-fisher)")
    p.add_argument("--seed", type=int, default=train.seed, help=f"seed of the samples (default {train.seed}, as --seed)")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--batch", type=int, default=sa.fisher_batch,
                   help=f"samples per backward (default {sa.fisher_batch})")
    return p


@command
def main():
    args = parser().parse_args()
    if args.n_samples < 1 or args.batch < 1 or args.seed < 0:
        raise UsageError("--n-samples and --batch must be positive, --seed non-negative")
    model, meta = load_checkpoint(args.checkpoint)
    accelerator = make_accelerator()
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

