"""Train a conditional VAE on MNIST under Accelerate; writes RUN_DIR/baseline.safetensors.

The program is sa_dist/cli/train_baseline.py; it is also installed as the command sa-train-baseline.
"""
from sa_dist.cli.train_baseline import main

if __name__ == "__main__":
    main()
