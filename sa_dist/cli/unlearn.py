"""Make a trained cVAE forget classes with Selective Amnesia and say how well.

    accelerate launch scripts/unlearn.py --forget 2          # also: python ..., torchrun ...
"""
from ..pipeline import report_line, run_unlearn
from .flags import Parser, add_checkpoint_arg, add_config_args, add_run_args, command, config_from_args


@command
def main():
    p = Parser(description=__doc__.splitlines()[0])
    add_config_args(p)
    add_run_args(p)
    add_checkpoint_arg(p)
    args = p.parse_args()
    results, run_dir = run_unlearn(config_from_args(args), run_dir=args.resume or args.run_dir,
                                   checkpoint=args.checkpoint, resume=bool(args.resume))
    if results is not None:
        print(report_line(results, run_dir))

