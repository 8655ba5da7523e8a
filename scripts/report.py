"""Rebuild DIR/report.html and DIR/report.md from a run directory's files (no model, no training).

The program is sa_dist/cli/report.py; it is also installed as the command sa-report.
"""
from sa_dist.cli.report import main

if __name__ == "__main__":
    main()
