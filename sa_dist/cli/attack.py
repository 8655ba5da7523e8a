"""Is it really forgotten? Relearning, retain-only relearning, inversion, probe and weight-space attacks on a run.

Relearning fine-tunes on k real images of the class (k = 0: the retained classes only) at every lr of a grid, each
compared with the retrained model's under the identical attack (steps to P >= 0.5, area under the P curve).

    python scripts/attack.py runs/conv-forget2-... --kind all
"""
import json

import torch

from ..attacks.suite import KINDS, MODELS, AttackConfig, run_attacks
from .flags import Parser, add_flags, command, dataclass_from_args, flagged_fields


@command
def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a finished scripts/unlearn.py run directory")
    p.add_argument("--kind", nargs="+", choices=(*KINDS, "all"), default=["all"], help="attacks to run (default all)")
    p.add_argument("--models", nargs="+", choices=MODELS,
                   default=list(MODELS), help="models to attack (default all three)")
    p.add_argument("--original", help="the baseline the run unlearned (needed for a --checkpoint run)")
    p.add_argument("--retrain", help="a retrain checkpoint (default: the cached one, trained if missing)")
    add_flags(p, flagged_fields(AttackConfig))
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: the batches are small; 2 threads were 3-6x slower on shared cores)")
    args = p.parse_args()
    for flag in ("relearn_steps", "relearn_samples", "invert_restarts", "invert_steps", "probe_n", "threads",
                 "retain_steps", "retain_batch", "auc_steps"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('invert_restarts', 'restarts').replace('_', '-')} must be >= 1, got {v}")
    if (args.relearn_k and min(args.relearn_k) < 0) or (args.invert_penalty is not None and args.invert_penalty < 0):
        p.error("--relearn-k must be >= 0 (0: retained classes only) and --penalty >= 0")
    if (args.relearn_lr and min(args.relearn_lr) <= 0) or (args.retain_lr is not None and args.retain_lr <= 0):
        p.error("--relearn-lr and --retain-lr must be > 0")
    if args.weights_points is not None and args.weights_points < 2:
        p.error(f"--weights-points must be >= 2, got {args.weights_points}")
    kinds = KINDS if "all" in args.kind else tuple(dict.fromkeys(args.kind))
    torch.set_num_threads(args.threads)
    attacks = run_attacks(args.run_dir, kinds, dataclass_from_args(AttackConfig, args), tuple(args.models),
                          args.original, args.retrain)
    if attacks is not None:
        print(json.dumps(attacks["summary"], indent=1))
        print(f"results: {args.run_dir}/results.json (attacks), figures: {args.run_dir}/attacks/")

