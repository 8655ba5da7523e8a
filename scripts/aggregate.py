"""Gather finished runs into one table (Markdown + JSON), an all-classes summary and a trade-off plot.

The program is sa_dist/cli/aggregate.py; it is also installed as the command sa-aggregate.
"""
from sa_dist.cli.aggregate import main

if __name__ == "__main__":
    main()
