"""Is it really forgotten? Relearning, condition-inversion and latent-probe attacks on a finished unlearning run.

The program is sa_dist/cli/attack.py; it is also installed as the command sa-attack.
"""
from sa_dist.cli.attack import main

if __name__ == "__main__":
    main()
