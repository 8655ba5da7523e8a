"""Finished runs (results.json) side by side: one row per point (Markdown and JSON; the runs of a point that differ
only in their seed are one row, each number their mean +- sample standard deviation), an all-classes summary (mean
+- std over the classes and the worst digit per method), and the trade-off plot (forgotten P vs retained accuracy
over lambda, with error bars over seeds).

Runs scored by different evaluator versions (results.json ``evaluator.version``; runs written before versions
existed are version 1, ten digits without a reject class) are never averaged together: the version is part of a
point, of the all-classes summary's groups and of the original model's reference line, each table row names its
version, and ``aggregate``'s ``evaluator_versions`` lists them (the Markdown says so above the table when there
are several). P(reject) is "–" for version-1 runs.

Seconds of a point are what its method costs on top of the shared baseline: Fisher + SA for the SA family (the
Fisher's seconds are those it took when computed, also when it came from the cache), the training of the
retrained model for ``retrain``, the ascent for ``naive``; evaluation is not counted.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..analysis.plots import save_png, subplots
from ..methods import get_method, method_names
from ..surrogate import z_blind_nelbo
from ..utils import UserError, atomic_write_text, write_json


def find_runs(paths) -> list[Path]:
    """Run directories from ``paths``: a run directory, a folder of run directories, or a results.json."""
    runs = []
    for p in map(Path, paths):
        if p.name == "results.json" and p.is_file():
            runs.append(p.parent)
        elif (p / "results.json").is_file():
            runs.append(p)
        elif p.is_dir() and any(d.is_dir() and (d / "results.json").is_file() for d in p.iterdir()):
            runs += sorted(d for d in p.iterdir() if d.is_dir() and (d / "results.json").is_file())
        else:
            raise UserError(f"{p}: no results.json there or in its subfolders (not a finished run)")
    return runs


def _uses(method: str) -> set:
    """The SAConfig fields a method reads or fixes (a method this install lacks: lambda and gamma)."""
    m = get_method(method) if method in method_names() else None
    return set(m.uses) | set(m.overrides) if m else {"lam", "gamma"}


def _max_or_none(block: dict, key: str, classes: list[str]):
    vals = [(block.get(key) or {}).get(k) for k in classes]
    return None if any(v is None for v in vals) else max(vals)


def point_row(run_dir: Path) -> dict:
    """One point: method, arch, forget, lambda, gamma, evaluator version, forgotten P, P(reject) and entropy,
    retained accuracy and nELBO, seconds."""
    try:
        r = json.loads((Path(run_dir) / "results.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{run_dir}/results.json: cannot read it ({e})") from None
    cfg, s, t = r["config"], r["summary"], r["timing_s"]
    method = r.get("method", cfg["sa"].get("method", "sa"))
    fc, uses = [str(c) for c in r["forget_classes"]], _uses(method)
    b, a, sur = s["before"], s["after"], r["surrogate"]["nelbo"]
    return {"run": Path(run_dir).name, "method": method, "arch": cfg["model"]["arch"],
            "forget": [int(c) for c in fc], "seed": cfg["train"]["seed"],
            "lam": cfg["sa"]["lam"] if "lam" in uses else None,
            "gamma": cfg["sa"]["gamma"] if "gamma" in uses else None,
            "forgotten_p": max(a["forgotten_p_class"][k] for k in fc),
            "forgotten_p_before": max(b["forgotten_p_class"][k] for k in fc),
            "evaluator_version": int((r.get("evaluator") or {}).get("version", 1)),
            "forgotten_p_reject": _max_or_none(a, "forgotten_p_reject", fc),
            "forgotten_p_reject_before": _max_or_none(b, "forgotten_p_reject", fc),
            "forgotten_entropy": max(a["forgotten_entropy"][k] for k in fc),
            "surrogate_gap_pct": 100 * (sur["after"] / z_blind_nelbo(sur) - 1) if z_blind_nelbo(sur) else None,
            "retained_sample_acc": a["retained_sample_acc"], "retained_sample_acc_before": b["retained_sample_acc"],
            "retained_test_nelbo": a["retained_test_nelbo"], "retained_test_nelbo_before": b["retained_test_nelbo"],
            "seconds": (t.get("fisher") or 0.0) + t["unlearn"],
            "seconds_from_cache": bool(t.get("fisher_cached") or t.get("unlearn_cached")),
            "retained_acc_drop_pts": 100 * (b["retained_sample_acc"] - a["retained_sample_acc"]),
            "retained_nelbo_rise_pct": 100 * (a["retained_test_nelbo"] / b["retained_test_nelbo"] - 1),
            "baseline_seconds": t.get("baseline"), "method_info": r.get("method_info") or {}}


AVERAGED = ("forgotten_p", "forgotten_p_before", "forgotten_p_reject", "forgotten_p_reject_before", "forgotten_entropy", "surrogate_gap_pct", "retained_sample_acc",
            "retained_sample_acc_before", "retained_test_nelbo", "retained_test_nelbo_before", "retained_acc_drop_pts",
            "retained_nelbo_rise_pct", "seconds", "baseline_seconds")


def _spread(vals: list) -> float:
    return statistics.stdev(vals) if len(vals) > 1 else 0.0


def combine_seeds(runs: list[dict]) -> list[dict]:
    """One row per point (method, arch, classes, lambda, gamma, evaluator version): every number of ``AVERAGED`` the mean over the
    point's seeds, with ``<name>_std`` (sample standard deviation, 0 for one seed), ``seeds`` and ``runs``."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["method"], r["arch"], tuple(r["forget"]), r["lam"], r["gamma"], r["evaluator_version"]),
                          []).append(r)
    out = []
    for rs in groups.values():
        row = {**rs[0], "seeds": sorted(r["seed"] for r in rs), "runs": [r["run"] for r in rs],
               "seconds_from_cache": any(r["seconds_from_cache"] for r in rs)}
        row.pop("seed"), row.pop("run")
        for name in AVERAGED:
            vals = [r[name] for r in rs if r[name] is not None]
            row[name] = statistics.fmean(vals) if vals else None
            row[f"{name}_std"] = _spread(vals) if vals else None
        out.append(row)
    return out


def add_retrain_ratio(rows: list[dict]) -> None:
    """``seconds_vs_retrain``: against ``retrain`` of the same arch and classes, else of the same arch (noted)."""
    retrain = [r for r in rows if r["method"] == "retrain"]
    for r in rows:
        same = [x for x in retrain if x["arch"] == r["arch"] and x["forget"] == r["forget"]]
        ref = same or [x for x in retrain if x["arch"] == r["arch"]]
        r["retrain_ref"] = f"{ref[0]['arch']} forget {','.join(map(str, ref[0]['forget']))}" if ref else None
        r["retrain_ref_same_classes"] = bool(same)
        r["seconds_vs_retrain"] = r["seconds"] / ref[0]["seconds"] if ref and ref[0]["seconds"] else None


def _sort_key(r: dict):
    names = method_names()
    order = names.index(r["method"]) if r["method"] in names else len(names)
    return (r["evaluator_version"], r["arch"], r["forget"], order, r["lam"] if r["lam"] is not None else -1,
            r["gamma"] or 0)


def class_summary(rows: list[dict]) -> list[dict]:
    """Per (method, arch, lambda, gamma, evaluator version) over single-class points of several classes:
    mean +- std, worst class."""
    groups: dict = {}
    for r in rows:
        if len(r["forget"]) == 1:
            groups.setdefault((r["method"], r["arch"], r["lam"], r["gamma"], r["evaluator_version"]), []).append(r)
    out = []
    for (method, arch, lam, gamma, version), rs in groups.items():
        if len({r["forget"][0] for r in rs}) < 2:
            continue
        stats = {}
        for name in ("forgotten_p", "retained_acc_drop_pts", "retained_nelbo_rise_pct", "seconds"):
            vals = [r[name] for r in rs]
            worst = max(range(len(rs)), key=lambda i: vals[i])
            stats[name] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals), "max": vals[worst],
                           "worst_class": rs[worst]["forget"][0]}
        ratios = [r["seconds_vs_retrain"] for r in rs if r["seconds_vs_retrain"] is not None]
        out.append({"method": method, "arch": arch, "lam": lam, "gamma": gamma, "evaluator_version": version,
                    "classes": sorted(r["forget"][0] for r in rs), **stats,
                    "seconds_vs_retrain_mean": statistics.fmean(ratios) if ratios else None})
    return out


def _f(v, spec):
    return "–" if v is None else format(v, spec)


def _nelbo(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 1e5 else f"{v:.2g}"  # naive ascent reaches 1e18


def _pm(r: dict, name: str, fmt, scale: float = 1.0, unit: str = "") -> str:
    """``mean ± std`` of a combined row's number (the mean alone over one seed)."""
    mean, std = r[name], r.get(f"{name}_std")
    text = fmt(scale * mean) + unit
    return text if len(r["seeds"]) < 2 or std is None else f"{text} ± {fmt(scale * std)}{unit}"


def mixed_versions_note(versions: list[int]) -> str:
    return (f"Runs scored by evaluator versions {', '.join(map(str, versions))}: rows of different versions are "
            "kept apart (never averaged together); compare P, P(reject) and entropy only between rows of one version.")


def markdown(rows: list[dict], summary: list[dict]) -> str:
    head = ("| method | arch | forget | λ | γ | seeds | P(y=c_f) after | P(reject) after | H after | retained sample acc "
            "| retained test nELBO | seconds | / retrain | evaluator |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    versions = sorted({r["evaluator_version"] for r in rows})
    out, seen = ([mixed_versions_note(versions), ""] if len(versions) > 1 else []) + [head], set()
    p4, p2, pct = (lambda v: f"{v:.4f}"), (lambda v: f"{v:.2f}"), (lambda v: f"{v:.2f}")
    for r in rows:
        group, n = (r["arch"], tuple(r["forget"]), r["evaluator_version"]), len(r["seeds"])
        rej, ev = (lambda key: "–" if r[key] is None else _pm(r, key, p4)), f"v{r['evaluator_version']}"
        if group not in seen:  # the original model theta* as the reference line of each group
            seen.add(group)
            out.append(f"| original θ* | {r['arch']} | {','.join(map(str, r['forget']))} | – | – | {n} "
                       f"| {_pm(r, 'forgotten_p_before', p4)} | {rej('forgotten_p_reject_before')} | – "
                       f"| {_pm(r, 'retained_sample_acc_before', pct, 100, '%')} "
                       f"| {_pm(r, 'retained_test_nelbo_before', _nelbo)} | – | – | {ev} |")
        ratio = _f(r["seconds_vs_retrain"], ".3f")
        if r["seconds_vs_retrain"] is not None and not r["retrain_ref_same_classes"]:
            ratio = f"≈{ratio}"
        out.append(f"| {r['method']} | {r['arch']} | {','.join(map(str, r['forget']))} | {_f(r['lam'], 'g')} "
                   f"| {_f(r['gamma'], 'g')} | {n} | {_pm(r, 'forgotten_p', p4)} | {rej('forgotten_p_reject')} "
                   f"| {_pm(r, 'forgotten_entropy', p2)} "
                   f"| {_pm(r, 'retained_sample_acc', pct, 100, '%')} | {_pm(r, 'retained_test_nelbo', _nelbo)} "
                   f"| {_pm(r, 'seconds', lambda v: f'{v:.1f}')} | {ratio} | {ev} |")
    if summary:
        out += ["", "| method | arch | λ | classes | P(y=c_f) after: mean ± std (worst) | retained acc drop, points "
                "(worst) | retained test nELBO rise (worst) | seconds, mean | / retrain | evaluator |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in summary:
            p, a, n = s["forgotten_p"], s["retained_acc_drop_pts"], s["retained_nelbo_rise_pct"]
            out.append(f"| {s['method']} | {s['arch']} | {_f(s['lam'], 'g')} | {len(s['classes'])} "
                       f"| {p['mean']:.4f} ± {p['std']:.4f} ({p['max']:.4f}, digit {p['worst_class']}) "
                       f"| {a['mean']:.2f} ± {a['std']:.2f} ({a['max']:.2f}, digit {a['worst_class']}) "
                       f"| {n['mean']:.2f}% ± {n['std']:.2f} ({n['max']:.2f}%, digit {n['worst_class']}) "
                       f"| {s['seconds']['mean']:.1f} | {_f(s['seconds_vs_retrain_mean'], '.3f')} "
                       f"| v{s['evaluator_version']} |")
    return "\n".join(out) + "\n"


def aggregate(paths) -> dict:
    """``{"runs": [...], "points": [...], "classes": [...], "evaluator_versions": [...]}`` for the runs found under
    ``paths``: every run, the points (runs that differ only in their seed combined; never runs of different
    evaluator versions), the all-classes summary of the points, the evaluator versions seen (with ``note`` when
    there are several)."""
    runs = sorted((point_row(d) for d in find_runs(paths)), key=lambda r: (_sort_key(r), r["seed"]))
    rows = sorted(combine_seeds(runs), key=_sort_key)
    add_retrain_ratio(rows)
    versions = sorted({r["evaluator_version"] for r in runs})
    out = {"runs": runs, "points": rows, "classes": class_summary(rows), "evaluator_versions": versions}
    if len(versions) > 1:
        out["note"] = mixed_versions_note(versions)
    return out


def write_summary(paths, prefix: str | Path, title: str = "") -> str:
    """PREFIX.md, PREFIX.json and PREFIX.png (the trade-off plot) from the runs under ``paths``; returns the Markdown."""
    table = aggregate(paths)
    md = markdown(table["points"], table["classes"])
    atomic_write_text(f"{prefix}.md", md)
    write_json(f"{prefix}.json", table)
    tradeoff_plot(table["points"], f"{prefix}.png", title)
    return md


def tradeoff_plot(rows: list[dict], path, title: str = "") -> None:
    """Forgotten P(y=c_f) (log) against retained sample accuracy: a line over lambda for each series of one
    method/arch/classes with several lambdas, one marker for every other point, a star for the original."""
    fig, ax = subplots(figsize=(7, 4.8))
    series: dict = {}
    for r in rows:
        series.setdefault((r["method"], r["arch"], tuple(r["forget"]), r["gamma"], r["evaluator_version"]), []).append(r)
    mixed = len({r["evaluator_version"] for r in rows}) > 1
    originals = {}
    for (method, arch, forget, gamma, version), rs in series.items():
        label = f"{method} ({arch}, forget {','.join(map(str, forget))}{f', evaluator v{version}' if mixed else ''})"
        pts = sorted(rs, key=lambda r: r["lam"] if r["lam"] is not None else -1)
        xs, ys = [100 * r["retained_sample_acc"] for r in pts], [max(r["forgotten_p"], 1e-4) for r in pts]
        xerr = [100 * (r.get("retained_sample_acc_std") or 0) for r in pts]
        yerr = [min(r.get("forgotten_p_std") or 0, y - 1e-4 * 0.99) for r, y in zip(pts, ys)]  # stays above the axis
        marker = get_method(method).marker if method in method_names() else "o"
        line = ax.errorbar(xs, ys, xerr=xerr, yerr=[yerr, [r.get("forgotten_p_std") or 0 for r in pts]],
                           marker=marker, ls="-" if len(pts) > 1 else "none", capsize=2, label=label).lines[0]
        if len(pts) > 1 or method == "sa":
            for x, y, r in zip(xs, ys, pts):
                if r["lam"] is not None:
                    ax.annotate(f"λ={r['lam']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color=line.get_color())
        for r in rs:
            originals[(arch, forget, version)] = (100 * r["retained_sample_acc_before"], r["forgotten_p_before"])
    for i, (x, y) in enumerate(originals.values()):
        ax.plot([x], [y], marker="*", ms=12, color="black", ls="none",
                label="original θ*" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("retained classes: mean sample accuracy after (%)")
    ax.set_ylabel("forgotten class: P(y=c_f) after (log; below 1e-4 drawn at 1e-4)")
    ax.text(0.01, 0.01, "bars: ± one standard deviation over seeds", transform=ax.transAxes, fontsize=7)
    ax.set_title(title or "forgetting vs retention (better: down and right)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    save_png(fig, path)
