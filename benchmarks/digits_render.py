"""The tables of ``benchmarks/digits.py``, rendered from its cells alone: ``digits`` (every digit x arch, mean and
[min, max] over seeds, the bars per row, the cells that miss one, a bar plot with min/max whiskers) and
``paper_default`` (the paper protocol beside the official README's example)."""
from __future__ import annotations

from celltables import BARS, found, provenance, quoted, show, show_seconds, spread
from sa_dist.analysis.plots import save_png, subplots
from sa_dist.evaluation.paper import OFFICIAL_EXAMPLE

SECONDS = ("fisher_s", "sa_s", "evaluate_s", "baseline_s")  # never quoted from a loaded cell
BAR_TEXT = (f"Bars per row, on the mean over the seeds: P(y=c_f) ≤ {BARS['forgotten_p']}, retained sample accuracy "
            f"within {BARS['retained_acc_drop_pts']} point and retained test nELBO within "
            f"{BARS['retained_nelbo_rise_pct']}% of the baseline's. Each number: mean [min, max] over the seeds "
            "(before: the mean; every spread is in the .json).")


def cell_name(arch: str, digit: int, seed: int) -> str:
    return f"{arch}-d{digit}-s{seed}"


def misses(res: dict) -> list[str]:
    """The bars a result (one cell's, or a row's means) misses."""
    out = ["P(c_f)"] if res["p_after"] > BARS["forgotten_p"] else []
    out += ["acc"] if res["retained_acc_drop_pts"] > BARS["retained_acc_drop_pts"] else []
    return out + (["nELBO"] if res["retained_nelbo_rise_pct"] > BARS["retained_nelbo_rise_pct"] else [])


def row(arch: str, digit: int, seeds: list[int], cells: dict) -> dict:
    """One (arch, digit) row from its cells (``cells``: seed -> cell or None)."""
    present = {s: c for s, c in cells.items() if c is not None}
    results = [c["result"] for c in present.values()]
    keys = [k for k, v in (results[0] if results else {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in SECONDS]
    stats = {k: spread(r[k] for r in results) for k in keys}
    out = {"arch": arch, "digit": digit, "seeds": [s for s in seeds if s in present],
           "missing": [s for s in seeds if s not in present], "loaded": [s for s, c in present.items()
                                                                       if c.get("loaded")],
           "stats": stats, "seconds": {k: quoted(list(present.values()), lambda c, k=k: c["result"][k])[0]
                                       for k in SECONDS},
           "baseline_keys": sorted({r["baseline_key"] for r in results}),
           "cells_missing_a_bar": {str(s): m for s, c in present.items() if (m := misses(c["result"]))}}
    out["bars_missed"] = misses({k: v["mean"] for k, v in stats.items()}) if results else None
    out["meets_bars"] = None if out["missing"] else not out["bars_missed"]
    return out


def bars_text(r: dict) -> str:
    if r["bars_missed"] is None:
        return "– (no cell)"
    verdict = "met" if not r["bars_missed"] else "missed: " + ", ".join(r["bars_missed"])
    return verdict + (f" (incomplete: {len(r['seeds'])} of {len(r['seeds']) + len(r['missing'])} seeds)"
                      if r["missing"] else "")


def cell_marks(r: dict) -> str:
    marks = [f"s{s}: {', '.join(m)}" for s, m in r["cells_missing_a_bar"].items()]
    marks += [f"s{s}: missing" for s in r["missing"]]
    return "; ".join(marks) or "none"


def digits_markdown(rows: list[dict], cells: dict, command: str, expected: int) -> str:
    st = lambda r, k, *a, **kw: show(r["stats"].get(k), *a, **kw)  # noqa: E731
    mean = lambda r, k, *a, **kw: show(r["stats"].get(k) and {**r["stats"][k], "n": 1}, *a, **kw)  # noqa: E731
    first = ["| arch | digit | seeds | P(y=c_f) before → after | P(reject) after | H after (nats) "
             "| retained acc before → after | acc drop (points) | retained nELBO before → after | nELBO rise "
             "| bars (mean over seeds) | cells missing a bar |", "|" + " --- |" * 12]
    second = ["| arch | digit | paper protocol: H before → after | paper protocol: P(y=c_f) before → after "
              "| surrogate nELBO gap to z-blind | ideal output P(reject) | Fisher s | SA s | evaluate s |",
              "|" + " --- |" * 9]
    for r in rows:
        first.append(f"| {r['arch']} | {r['digit']} | {len(r['seeds'])} | {mean(r, 'p_before', '.3f')} → "
                     f"{st(r, 'p_after')} | {st(r, 'p_reject_after', '.3f')} | {st(r, 'entropy_after', '.2f')} "
                     f"| {mean(r, 'retained_acc_before', '.2f', 100, '%')} → "
                     f"{st(r, 'retained_acc_after', '.2f', 100, '%')} "
                     f"| {st(r, 'retained_acc_drop_pts', '+.2f')} | {mean(r, 'retained_nelbo_before', '.2f')} → "
                     f"{st(r, 'retained_nelbo_after', '.2f')} | {st(r, 'retained_nelbo_rise_pct', '+.2f', suffix='%')} "
                     f"| {bars_text(r)} | {cell_marks(r)} |")
        mine = [c for c in cells[(r["arch"], r["digit"])].values() if c is not None]
        secs = " | ".join(show_seconds(mine, lambda c, k=k: c["result"][k]) for k in ("fisher_s", "sa_s", "evaluate_s"))
        second.append(f"| {r['arch']} | {r['digit']} | {mean(r, 'paper_entropy_before', '.3f')} → "
                      f"{st(r, 'paper_entropy_after', '.3f')} | {mean(r, 'paper_p_before', '.4f')} → "
                      f"{st(r, 'paper_p_after', '.4f')} | {st(r, 'surrogate_gap_pct', '.2f', suffix='%')} "
                      f"| {st(r, 'surrogate_ideal_p_reject', '.4f')} | {secs} |")
    summary = [f"* {arch}: {sum(r['meets_bars'] is True for r in rows if r['arch'] == arch)} of "
               f"{sum(r['arch'] == arch for r in rows)} digits meet every bar"
               for arch in dict.fromkeys(r["arch"] for r in rows)]
    return "\n".join([f"```bash\n{command}\n```", "", provenance([c for d in cells.values() for c in d.values() if c],
                                                                 expected), "", BAR_TEXT, "", *summary, "",
                      *first, "", *second]) + "\n"


def paper_markdown(rows: list[dict], command: str, cells: list[dict], expected: int) -> str:
    ex = OFFICIAL_EXAMPLE
    out = [f"```bash\n{command}\n```", "", provenance(cells, expected), "",
           "| run | paper protocol: H before → after (nats) | paper protocol: P(y=c_f) before → after "
           "| sa_dist evaluator: P(y=c_f) after | P(reject) after |", "|" + " --- |" * 5,
           f"| official README example, digit {ex['forget']} (their model, their classifier) "
           f"| – → {ex['entropy']:.2f} "
           f"| – → {ex['p_forgotten']:.3f} | – | – |"]
    for r in rows:
        st = lambda k, spec: show(r["stats"].get(k), spec)  # noqa: E731
        seeds = ", ".join(map(str, r["seeds"] + r["missing"]))
        out.append(f"| {r['arch']}, forget {r['digit']}, seed {seeds}"
                   + (f" (missing: {', '.join(map(str, r['missing']))})" if r["missing"] else "")
                   + f" | {st('paper_entropy_before', '.3f')} → {st('paper_entropy_after', '.3f')} "
                   f"| {st('paper_p_before', '.4f')} → {st('paper_p_after', '.4f')} | {st('p_after', '.4f')} "
                   f"| {st('p_reject_after', '.3f')} |")
    return "\n".join(out) + "\n"


def _whiskers(stats: list[dict | None], floor: float = 0.0):
    means = [max(s["mean"], floor) if s else 0.0 for s in stats]
    low = [m - max(s["min"], floor) if s else 0.0 for m, s in zip(means, stats)]
    high = [max(s["max"], floor) - m if s else 0.0 for m, s in zip(means, stats)]
    return means, [low, high]


def digits_plot(rows: list[dict], path) -> None:
    """Per digit, a bar per arch (mean over seeds) with min/max whiskers: P(y=c_f) after, retained acc drop,
    retained nELBO rise, each with its bar as a dashed line."""
    archs, digits = list(dict.fromkeys(r["arch"] for r in rows)), sorted({r["digit"] for r in rows})
    panels = (("p_after", "P(y=c_f) after", BARS["forgotten_p"]),
              ("retained_acc_drop_pts", "retained acc drop (points)", BARS["retained_acc_drop_pts"]),
              ("retained_nelbo_rise_pct", "retained nELBO rise (%)", BARS["retained_nelbo_rise_pct"]))
    fig, axes = subplots(3, 1, figsize=(max(6.0, 0.7 * len(digits) * len(archs)), 9), sharex=True)
    width = 0.8 / len(archs)
    for ax, (key, label, bar) in zip(axes, panels):
        floor = 1e-5 if key == "p_after" else 0.0
        for i, arch in enumerate(archs):
            by = {r["digit"]: r["stats"].get(key) for r in rows if r["arch"] == arch}
            means, err = _whiskers([by.get(d) for d in digits], floor)
            ax.bar([d + (i - (len(archs) - 1) / 2) * width for d in range(len(digits))], means, width, yerr=err,
                   capsize=3, label=arch)
        ax.axhline(bar, ls="--", c="k", lw=1)
        ax.set_ylabel(label)
        if key == "p_after":
            ax.set_yscale("log")
    axes[0].legend()
    axes[-1].set_xticks(range(len(digits)), [str(d) for d in digits])
    axes[-1].set_xlabel("forgotten digit (bars: mean over seeds; whiskers: min, max; dashed: the bar)")
    save_png(fig, path)


def paper_plot(rows: list[dict], path) -> None:
    """The paper protocol's entropy and P(y=c_f) after, ours (mean, min/max whiskers) beside the official example."""
    fig, axes = subplots(1, 2, figsize=(8, 3.5))
    labels = [f"official, digit {OFFICIAL_EXAMPLE['forget']}"] + [f"{r['arch']}, digit {r['digit']}" for r in rows]
    for ax, key, ref, title in ((axes[0], "paper_entropy_after", OFFICIAL_EXAMPLE["entropy"], "entropy after (nats)"),
                                (axes[1], "paper_p_after", OFFICIAL_EXAMPLE["p_forgotten"], "P(y=c_f) after")):
        means, err = _whiskers([r["stats"].get(key) for r in rows])
        ax.bar(range(len(labels)), [ref] + means, yerr=[[0] + err[0], [0] + err[1]], capsize=3,
               color=["grey"] + ["C0"] * len(rows))
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_title(title)
    save_png(fig, path)


def render(table, items, args, command: str) -> str:
    """Write ``<table>.md``, ``.json`` and ``.png`` from the cells of ``items`` on disk; returns the Markdown."""
    got = found(table, items)
    cells = {(a, d): {s: got.get(cell_name(a, d, s)) for s in args.seeds} for a in args.archs for d in args.digits}
    rows = [row(a, d, args.seeds, cells[(a, d)]) for a in args.archs for d in args.digits]
    measured = [c for c in got.values() if c is not None]
    if args.table == "paper_default":
        md = paper_markdown(rows, command, measured, len(items))
        paper_plot(rows, table.dir / f"{table.name}.png")
    else:
        md = digits_markdown(rows, cells, command, len(items))
        digits_plot(rows, table.dir / f"{table.name}.png")
    table.write(table.name, {"table": args.table, "command": command, "bars": BARS, "rows": rows,
                             "official_readme_example": OFFICIAL_EXAMPLE if args.table == "paper_default" else None,
                             "cells": {n: (c["hash"] if c else None) for n, c in got.items()}}, md)
    return md
