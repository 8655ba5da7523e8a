"""Gather finished runs into one table (Markdown + JSON), an all-classes summary and a trade-off plot.

    python scripts/aggregate.py RUN_DIR_OR_FOLDER [...] --out runs/sweep/summary
writes PREFIX.md, PREFIX.json and PREFIX.png (forgotten P vs retained accuracy over lambda) and prints the Markdown.
Without --out it only prints. Columns: forgotten P(y=c_f) and entropy, retained mean sample accuracy and test
nELBO, the method's seconds, and seconds relative to `retrain` (of the same arch and classes; ≈ when only another
class's retrain is there).
"""
from ..sweeps.aggregate import aggregate, markdown, write_summary
from .flags import Parser, command


@command
def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories, folders of them, or results.json files")
    p.add_argument("--out", help="output prefix: writes PREFIX.md, PREFIX.json, PREFIX.png")
    p.add_argument("--title", default="", help="title of the trade-off plot")
    args = p.parse_args()
    if args.out:
        print(write_summary(args.runs, args.out, args.title), end="")
    else:
        table = aggregate(args.runs)
        print(markdown(table["points"], table["classes"]), end="")

