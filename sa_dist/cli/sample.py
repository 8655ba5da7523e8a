"""Write N decoder means of one label as an (N, 28, 28) float32 .npy in [0, 1]: score a model with your own classifier.

    python scripts/sample.py --checkpoint FILE --label C -n N --seed S --out FILE.npy
"""
from ..sampling import write_samples
from .flags import Parser, command


@command
def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a sa_dist .safetensors checkpoint")
    p.add_argument("--label", type=int, required=True, help="class label to condition on")
    p.add_argument("-n", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent codes")
    p.add_argument("--out", required=True, help="output .npy path")
    args = p.parse_args()
    print(write_samples(args.checkpoint, args.label, args.n, args.seed, args.out))

