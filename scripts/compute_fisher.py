"""Compute the diagonal Fisher of a trained cVAE checkpoint and save it as safetensors (keys: parameter names).

The program is sa_dist/cli/compute_fisher.py; it is also installed as the command sa-compute-fisher.
"""
from sa_dist.cli.compute_fisher import main

if __name__ == "__main__":
    main()
