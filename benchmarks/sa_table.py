"""Summarise finished runs against the acceptance bars (docs/results.md); prints JSON, or Markdown with --md.
The surrogate's gap is to its z-blind nELBO (results.json ``surrogate.nelbo.z_blind``, ``floor`` in older runs;
"–" for a surrogate without one).

    python benchmarks/sa_table.py RUN_DIR [RUN_DIR ...] [--md]
"""
import argparse
import json
from pathlib import Path

from sa_dist.surrogate import z_blind_nelbo


def row(run_dir: Path) -> dict:
    r = json.loads((run_dir / "results.json").read_text())
    s, t, sur = r["summary"], r["timing_s"], r["surrogate"]
    fc = [str(c) for c in r["forget_classes"]]
    b, a = s["before"], s["after"]
    p_after = max(a["forgotten_p_class"][k] for k in fc)
    ideal = max(sur["ideal"]["p_class"][k] for k in fc)
    z_blind = z_blind_nelbo(sur["nelbo"])  # None for a surrogate without a closed form (a user's .npy)
    gap = (sur["nelbo"]["after"] - z_blind) / z_blind if z_blind else None
    acc_drop = 100 * (b["retained_sample_acc"] - a["retained_sample_acc"])
    nelbo_rise = 100 * (a["retained_test_nelbo"] / b["retained_test_nelbo"] - 1)
    cost = (t["fisher"] + t["unlearn"]) / t["baseline"] if t["baseline"] else None
    return {"run": run_dir.name, "arch": r["config"]["model"]["arch"], "forget": fc, "lam": r["config"]["sa"]["lam"],
            "p_before": max(b["forgotten_p_class"][k] for k in fc), "p_after": p_after,
            "entropy_after": max(a["forgotten_entropy"][k] for k in fc), "ideal_p": ideal,
            "ideal_entropy": sur["ideal"]["entropy"], "raw_surrogate_entropy": sur["samples"]["entropy"],
            "surrogate_nelbo_after": sur["nelbo"]["after"], "surrogate_z_blind": z_blind,
            "surrogate_gap_pct": None if gap is None else 100 * gap,
            "retained_acc_before": b["retained_sample_acc"], "retained_acc_after": a["retained_sample_acc"],
            "retained_acc_drop_pts": acc_drop, "retained_nelbo_before": b["retained_test_nelbo"],
            "retained_nelbo_after": a["retained_test_nelbo"], "retained_nelbo_rise_pct": nelbo_rise,
            "seconds": t, "fisher_plus_sa_over_baseline": cost,
            "bars": {"forgotten_p": p_after <= max(0.01, ideal), "surrogate_nelbo": gap is not None and gap <= 0.005,
                     "retained_acc": acc_drop <= 1.0, "retained_nelbo": nelbo_rise <= 2.0,
                     "cost": cost is not None and cost <= 0.10}}


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2f}%"


def markdown(rows: list) -> str:
    out = ["| arch | forget | λ | P(y=c_f) before → after (bar ≤ 0.01) | H after (ideal, raw) "
           "| surrogate nELBO (gap to z-blind) | retained acc before → after | retained test nELBO before → after | Fisher + SA / baseline |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s = r["seconds"]
        out.append(f"| {r['arch']} | {','.join(r['forget'])} | {r['lam']:g} | {r['p_before']:.3f} → {r['p_after']:.4f} "
                   f"| {r['entropy_after']:.2f} ({r['ideal_entropy']:.2f}, {r['raw_surrogate_entropy']:.2f}) "
                   f"| {r['surrogate_nelbo_after']:.1f} ({_pct(r['surrogate_gap_pct'])}) "
                   f"| {100 * r['retained_acc_before']:.2f}% → {100 * r['retained_acc_after']:.2f}% "
                   f"| {r['retained_nelbo_before']:.2f} → {r['retained_nelbo_after']:.2f} "
                   f"(+{r['retained_nelbo_rise_pct']:.2f}%) "
                   f"| ({s['fisher']:.0f} + {s['unlearn']:.0f}) / {s['baseline']:.0f} s = "
                   f"{100 * r['fisher_plus_sa_over_baseline']:.1f}% |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--md", action="store_true", help="a Markdown table instead of JSON")
    args = p.parse_args()
    rows = [row(d) for d in args.runs]
    print(markdown(rows) if args.md else json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
