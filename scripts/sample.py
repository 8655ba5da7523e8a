"""Write N decoder means of one label as an (N, 28, 28) float32 .npy in [0, 1]: score a model with your own classifier.

The program is sa_dist/cli/sample.py; it is also installed as the command sa-sample.
"""
from sa_dist.cli.sample import main

if __name__ == "__main__":
    main()
