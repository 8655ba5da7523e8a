"""The table of ``benchmarks/sequential.py``, rendered from its cells alone: per request and model the forgotten
classes' P(y=c), retained quality against θ*, cumulative seconds and the bars; the issue's must-reach (every
forgotten class P ≤ 0.01 after the last request); a plot of the three against the request."""
from __future__ import annotations

import math

from celltables import BARS, found, provenance, unquotable
from sa_dist.analysis.plots import save_png, subplots

MODELS = ("sequential", "at_once", "retrain")


def tag(done: list[int]) -> str:
    return "_".join(map(str, done))


def cumulative(cells: list[dict | None]) -> float | str:
    """Seconds summed over ``cells`` (a sequential model's requests so far): "missing" when one is not measured,
    "not quoted" when one's seconds do not count (loaded, or read from a run made before: ``unquotable``)."""
    if any(c is None for c in cells):
        return "missing"
    if any(unquotable(c) for c in cells):
        return "not quoted"
    return sum(c["result"]["seconds"] for c in cells)


def steps(got: dict, requests: list[int]) -> list[dict]:
    """Per request: the forgotten set, each model's result (None: missing), loaded mark and cumulative seconds."""
    out = []
    for i in range(len(requests)):
        done = requests[:i + 1]
        step = {"request": i + 1, "forgotten": done}
        for model in MODELS:
            cell = got.get(f"{model}-{tag(done)}")
            mine = [got.get(f"sequential-{tag(requests[:j + 1])}") for j in range(i + 1)] \
                if model == "sequential" else [cell]
            step[model] = None if cell is None else {**cell["result"], "loaded": bool(cell.get("loaded")),
                                                     "cumulative_seconds": cumulative(mine)}
        out.append(step)
    return out


def must_reach(last: dict) -> dict:
    """Per model: every forgotten class at P ≤ the bar after the last request (None: not measured)."""
    return {m: None if last[m] is None else max(last[m]["forgotten_p"].values()) <= BARS["forgotten_p"]
            for m in MODELS}


def _row(step: dict, model: str) -> str:
    head = f"| {step['request']} | {tag(step['forgotten']).replace('_', ', ')} | {model} "
    m = step[model]
    if m is None:
        return head + "| missing | – | – | – | – | – |"
    ps = ", ".join(f"{c}: {p:.4f}" for c, p in m["forgotten_p"].items())
    secs = m["cumulative_seconds"]
    secs = f"{secs:.1f}" if isinstance(secs, float) else f"({secs})"
    return (head + f"| {ps} | {100 * m['retained_acc']:.2f}% | {0.0 - m['retained_acc_drop_pts']:+.2f} "
            f"| {m['retained_nelbo']:.2f} ({m['retained_nelbo_rise_pct']:+.2f}%) | {secs} "
            f"| {'yes' if m['meets_bars'] else 'no'} |")


def markdown(st: list[dict], original: dict | None, command: str, line: str) -> str:
    head = [f"```bash\n{command}\n```", "", line, "",
            f"Bars per row: P(y=c) ≤ {BARS['forgotten_p']} for every forgotten class; the never-forgotten classes' "
            f"sample accuracy within {BARS['retained_acc_drop_pts']} point and test nELBO within "
            f"{BARS['retained_nelbo_rise_pct']}% of θ*'s on the same classes. Seconds: Fisher + SA of every request "
            "so far (sequential), one Fisher + SA (at_once), the training (retrain); a loaded cell's, or one read "
            "from a run made before it, are not quoted.",
            ""]
    if original is not None:
        head += [f"θ*: baseline {original['result']['baseline_key']}.", ""]
    if st:
        reach = must_reach(st[-1])
        head += [f"Must reach, every forgotten class P ≤ {BARS['forgotten_p']} after request {len(st)}: "
                 + ", ".join(f"{m} {'–' if v is None else 'yes' if v else 'no'}" for m, v in reach.items()), ""]
    table = ["| after request | forgotten | model | P(y=c) per forgotten class | retained acc | acc change vs θ* "
             "(points) | retained nELBO (vs θ*) | cumulative seconds | bars |", "|" + " --- |" * 9]
    return "\n".join(head + table + [_row(s, m) for s in st for m in MODELS]) + "\n"


def plot(st: list[dict], path) -> None:
    """Max forgotten P(y=c), retained accuracy drop and nELBO rise against the request, one line per model."""
    fig, axes = subplots(1, 3, figsize=(13, 3.6))
    panels = (("max P(y=c), forgotten", lambda m: max(m["forgotten_p"].values()), BARS["forgotten_p"]),
              ("retained acc drop vs θ* (points)", lambda m: m["retained_acc_drop_pts"],
               BARS["retained_acc_drop_pts"]),
              ("retained nELBO rise vs θ* (%)", lambda m: m["retained_nelbo_rise_pct"],
               BARS["retained_nelbo_rise_pct"]))
    x = [s["request"] for s in st]
    for ax, (label, value, bar) in zip(axes, panels):
        for model in MODELS:
            ax.plot(x, [value(s[model]) if s[model] else math.nan for s in st], marker="o", label=model)
        ax.axhline(bar, ls="--", c="k", lw=1)
        ax.set_xlabel("after request")
        ax.set_title(label)
        ax.set_xticks(x, [tag(s["forgotten"]).replace("_", ",") for s in st], fontsize=7)
    axes[0].set_yscale("log")
    axes[0].legend()
    save_png(fig, path)


def render(table, items, requests: list[int], base, command: str) -> str:
    """Write ``sequential.md``, ``.json`` and ``.png`` from the cells of ``items`` on disk; returns the Markdown."""
    got = found(table, items)
    st = steps(got, requests)
    md = markdown(st, got.get("original"), command, provenance([c for c in got.values() if c], len(items)))
    plot(st, table.dir / f"{table.name}.png")
    table.write(table.name, {"command": command, "requests": requests, "arch": base.model.arch,
                             "seed": base.train.seed, "bars": BARS, "steps": st,
                             "must_reach": must_reach(st[-1]) if st else None,
                             "cells": {n: (c["hash"] if c else None) for n, c in got.items()}}, md)
    return md
