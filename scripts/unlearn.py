"""Make a trained cVAE forget classes with Selective Amnesia and say how well.

The program is sa_dist/cli/unlearn.py; it is also installed as the command sa-unlearn.
"""
from sa_dist.cli.unlearn import main

if __name__ == "__main__":
    main()
