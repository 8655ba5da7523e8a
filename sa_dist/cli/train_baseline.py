"""Train a conditional VAE on MNIST under Accelerate; writes RUN_DIR/baseline.safetensors.

    accelerate launch scripts/train_baseline.py --arch conv --epochs 50 --batch 256 --lr 5e-4 --seed 49 --z-dim 8 --run-dir DIR
"""
from ..pipeline import run_baseline
from .flags import MODEL_TRAIN, Parser, add_config_args, add_run_args, command, config_from_args


@command
def main():
    p = Parser(description=__doc__.splitlines()[0])
    add_config_args(p, MODEL_TRAIN)
    add_run_args(p)
    args = p.parse_args()
    run_baseline(config_from_args(args), args.resume or args.run_dir, resume=bool(args.resume))

