"""Run a grid of unlearning runs (forgotten classes x lambda x gamma x method) and aggregate them.

The program is sa_dist/cli/sweep.py; it is also installed as the command sa-sweep.
"""
from sa_dist.cli.sweep import main

if __name__ == "__main__":
    main()
