"""Train a conditional VAE on MNIST under Accelerate; writes RUN_DIR/baseline.safetensors.

    accelerate launch scripts/train_baseline.py --arch conv --epochs 50 --batch 256 --lr 5e-4 --seed 49 --z-dim 8 --run-dir DIR
"""
from sa_dist.cli import Parser, add_train_args, config_from_args, run_main


def main():
    p = Parser(description=__doc__.splitlines()[0])
    add_train_args(p)
    args = p.parse_args()
    cfg = config_from_args(args)
    from sa_dist.baseline import run_baseline

    run_baseline(cfg, args.resume or args.run_dir, resume=bool(args.resume))


if __name__ == "__main__":
    run_main(main)
