"""Make a trained cVAE forget classes with Selective Amnesia and say how well.

    accelerate launch scripts/unlearn.py --forget 2          # also: python ..., torchrun ...
"""
from sa_dist.cli import Parser, add_sa_args, add_train_args, config_from_args, run_main


def main():
    p = Parser(description=__doc__.splitlines()[0])
    add_train_args(p)
    add_sa_args(p)
    args = p.parse_args()
    cfg = config_from_args(args)
    from sa_dist.pipeline import run_unlearn, report_line

    results, run_dir = run_unlearn(cfg, run_dir=args.resume or args.run_dir, checkpoint=args.checkpoint,
                                   resume=bool(args.resume))
    if results is not None:
        print(report_line(results, run_dir))


if __name__ == "__main__":
    run_main(main)
