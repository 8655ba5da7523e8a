"""Is it really forgotten? Relearning, condition-inversion and latent-probe attacks on a finished unlearning run.

    python scripts/attack.py runs/conv-forget2-... --kind all
"""
import json

from sa_dist.cli import Parser, run_main

def main():
    from sa_dist.attacks import KINDS, MODELS, AttackConfig

    d = AttackConfig()
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a finished scripts/unlearn.py run directory")
    p.add_argument("--kind", nargs="+", choices=(*KINDS, "all"), default=["all"], help="attacks to run (default all)")
    p.add_argument("--models", nargs="+", choices=MODELS,
                   default=list(MODELS), help="models to attack (default all three)")
    p.add_argument("--original", help="the baseline the run unlearned (needed for a --checkpoint run)")
    p.add_argument("--retrain", help="a retrain checkpoint (default: the cached one, trained if missing)")
    p.add_argument("--target", type=int, help="forgotten class to attack (default: the run's first)")
    p.add_argument("--relearn-k", type=int, nargs="+", default=d.relearn_k, help="real images per fine-tune (10 100)")
    p.add_argument("--relearn-steps", type=int, default=d.relearn_steps, help="most fine-tuning steps (500)")
    p.add_argument("--relearn-samples", type=int, default=d.relearn_samples, help="samples scored per step (1000)")
    p.add_argument("--restarts", type=int, default=d.invert_restarts, help="inversion random starts (64)")
    p.add_argument("--invert-steps", type=int, default=d.invert_steps, help="Adam steps per start (200)")
    p.add_argument("--penalty", type=float, default=d.invert_penalty,
                   help="weight per nat of negative ELBO, 'plausible' inversion (0.01)")
    p.add_argument("--probe-n", type=int, help="test images for the probe (default all)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of images, latents and starts (0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: the batches are small; 2 threads were 3-6x slower on shared cores)")
    args = p.parse_args()
    for flag in ("relearn_steps", "relearn_samples", "restarts", "invert_steps", "probe_n", "threads"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    if min(args.relearn_k) < 1 or args.penalty < 0:
        p.error("--relearn-k must be >= 1 and --penalty >= 0")
    kinds = KINDS if "all" in args.kind else tuple(dict.fromkeys(args.kind))
    acfg = AttackConfig(target=args.target, relearn_k=args.relearn_k, relearn_steps=args.relearn_steps,
                        relearn_samples=args.relearn_samples, invert_restarts=args.restarts,
                        invert_steps=args.invert_steps, invert_penalty=args.penalty, probe_n=args.probe_n,
                        seed=args.seed)
    import torch

    from sa_dist.attack_run import run_attacks

    torch.set_num_threads(args.threads)
    attacks = run_attacks(args.run_dir, kinds, acfg, tuple(args.models), args.original, args.retrain)
    if attacks is not None:
        print(json.dumps(attacks["summary"], indent=1))
        print(f"results: {args.run_dir}/results.json (attacks), figures: {args.run_dir}/attacks/")


if __name__ == "__main__":
    run_main(main)
