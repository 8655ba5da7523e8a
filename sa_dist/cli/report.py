"""Rebuild DIR/report.html and DIR/report.md from a run directory's files (no model, no training).

    python scripts/report.py runs/conv-forget2-20261126-181500
    python scripts/report.py DIR --figures    # first redraw the figures from the run's models (a few seconds)
"""
from ..analysis.report import build_report
from ..pipeline import redraw_run
from .flags import Parser, command


@command
def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory written by scripts/unlearn.py (holds results.json)")
    p.add_argument("--figures", action="store_true",
                   help="redraw the figures and results.json's latent block from unlearned.safetensors and the "
                        "baseline (cached, or --baseline)")
    p.add_argument("--baseline", help="with --figures: the original model's .safetensors (default: from the cache)")
    args = p.parse_args()
    if args.figures:
        redraw_run(args.run_dir, args.baseline)
    html_path, md_path = build_report(args.run_dir)
    print(f"report: {html_path}\nmarkdown: {md_path}")

