"""The robustness table, rendered from its cells alone (benchmarks/robustness.py measures them).

Per (architecture, forget set) and method spec, over seeds (mean and [min, max]): P(c_f), retained sample accuracy and
test nELBO against θ*, cost, relearning steps and AUC per lr and k with their ratio to retrain under the identical
attack (``sa_dist.attacks.compare``; above 1: harder to relearn than retrain), the minimum ratio over the grid (the
attacker's best case), L2 / Fisher distance from θ*, the loss barrier and inversion; the best point: the spec
that meets the quality bars with the highest minimum relearning ratio; and, for every spec that meets them, whether it
reaches the relearning bar (steps ratio >= 0.9 at every lr for k = 10 and 100) on every seed and on the seed means.

Cost = (Fisher + the method's own seconds) / retraining's seconds of the same seed; not quotable (``*``) when either
cell was loaded, ran on another CPU, took its seconds from an unlearning run made before the cell, or when the
retrained model came from the cache (trained outside any cell). The Fisher of θ* is computed once, by the first cell
that needs it; the others are charged the seconds it took then."""
from __future__ import annotations

from pathlib import Path

from sa_dist.analysis.plots import save_png, subplots
from sa_dist.attacks.compare import bar_verdict, grid_ratios

BARS = {"p_forgotten": 0.01, "retained_acc_drop_pts": 1.0, "retained_nelbo_rise_pct": 2.0, "cost": 0.25}
BARS_TEXT = "P(c_f) ≤ 0.01, retained accuracy within 1 point and test nELBO within 2% of θ*'s, cost ≤ 25% of retraining"
RELEARNING_BAR = {"ratio": 0.9, "k": ("k10", "k100")}  # the must-reach: relearning steps >= 0.9x retrain's
# at every lr of the grid, for k = 10 and 100 real images
REFERENCES = ("original", "retrain")  # measured beside the methods, never the best point
BOUND_MARK = {">=": "≥", "<=": "≤"}
OVERRIDDEN = ("target", "relearn_k", "relearn_lr", "retain_lr", "probe_folds", "probe_n", "seed")  # AttackConfig
# fields the benchmark does not take from it (--k, --lrs, the seeds) or does not use


def collect(records) -> dict:
    """``[(Cell, record or None)]`` -> ``{(arch, forget): {spec: {seed: {kind: record, "relearn": {k: record}}}}}``;
    cells not measured yet are left out."""
    out: dict = {}
    for cell, rec in records:
        u = cell.unit
        seed = out.setdefault((u.arch, u.forget), {}).setdefault(u.spec, {}).setdefault(u.seed, {"relearn": {}})
        if rec is None:
            continue
        if cell.kind == "relearn":
            seed["relearn"][f"k{cell.k}"] = rec
        else:
            seed[cell.kind] = rec
    return out


def cost(mine: dict | None, ref: dict | None) -> tuple[float | None, bool]:
    """(cost / retraining, quotable) from two unlearn cells."""
    if mine is None or ref is None or not ref["result"]["seconds"]["method"] or mine["config"]["spec"] == "original":
        return None, False
    s = mine["result"]["seconds"]
    quotable = not (mine["loaded"] or ref["loaded"] or mine["machine"]["cpu"] != ref["machine"]["cpu"]
                    or mine["result"].get("run_made_before") or ref["result"].get("run_made_before")
                    or ref["result"].get("cached", {}).get("method"))  # retraining timed outside any cell
    return (s["fisher"] + s["method"]) / ref["result"]["seconds"]["method"], quotable


def seed_numbers(mine: dict, ref: dict) -> tuple[dict, dict, bool]:
    """(numbers, bounds of the steps ratios that are bounds, cost quotable) of one spec and seed against retrain's
    cells of the same seed; ``numbers["relearning_bar"]``: the relearning bar's verdict on this seed."""
    nums, bounds = {}, {}
    if "unlearn" in mine:
        nums.update(mine["unlearn"]["result"]["quality"])
    nums["cost"], quotable = cost(mine.get("unlearn"), ref.get("unlearn"))
    if "weights" in mine:
        w = mine["weights"]["result"]
        nums.update({"l2": w["l2"], "fisher_distance": w["fisher"], "barrier": w["barrier"]})
    if "invert" in mine:
        nums.update({f"invert_{v}_best_p": mine["invert"]["result"][v]["best_p"] for v in ("free", "onehot")})
    block = {k: rec["result"] for k, rec in mine["relearn"].items()}
    for k, r in block.items():
        for lr, v in r["by_lr"].items():
            nums.update({f"steps {k} {lr}": v["steps_to_threshold"], f"auc {k} {lr}": v["auc"]})
    g = grid_ratios(block, {k: rec["result"] for k, rec in ref["relearn"].items()})
    for k, gk in g["by_k"].items():
        for lr, e in gk["by_lr"].items():
            nums[f"steps_ratio {k} {lr}"] = e["steps"] and e["steps"]["ratio"]
            nums[f"auc_ratio {k} {lr}"] = e["auc"]
            if e["steps"] and e["steps"]["bound"] != "=":
                bounds[f"steps_ratio {k} {lr}"] = e["steps"]["bound"]
    nums["relearning_bar"] = relearning_bar(
        {(k, lr): (e["steps"] and e["steps"]["ratio"], e["steps"] and e["steps"]["bound"])
         for k, gk in g["by_k"].items() for lr, e in gk["by_lr"].items()})
    if not g["by_k"]:  # no k relearned by both (--kinds unlearn): the minimum is unmeasured, not "never"
        return nums, bounds, quotable
    nums["min_steps_ratio"] = g["min_steps"] and g["min_steps"]["ratio"]
    nums["min_auc_ratio"] = g["min_auc"] and g["min_auc"]["ratio"]
    if g["min_steps"] and g["min_steps"]["bound"] != "=":
        bounds["min_steps_ratio"] = g["min_steps"]["bound"]
    return nums, bounds, quotable


def relearning_bar(points: dict) -> dict:
    """``compare.bar_verdict`` at the issue's relearning bar."""
    return bar_verdict(points, RELEARNING_BAR["ratio"], RELEARNING_BAR["k"])


def stats(values: list, missing: int = 0) -> dict:
    """Mean, min and max of the numbers among ``values``; ``none``: how many were None (never relearned, or not
    comparable); ``missing``: seeds without the number at all (not measured yet); ``n``: how many seeds."""
    nums = [v for v in values if v is not None]
    return {"mean": sum(nums) / len(nums) if nums else None, "min": min(nums, default=None),
            "max": max(nums, default=None), "none": len(values) - len(nums), "missing": missing,
            "n": len(values) + missing, "values": values}


def combine(seeds: dict, ref_seeds: dict) -> dict:
    """One spec over its seeds: ``{"stats": {number: stats}, "bounds": {number: marks}, "cost_quotable", "seeds",
    "relearning_bar": {"seeds": {seed: verdict}, "every_seed", "seed_means"}}``."""
    per = {s: seed_numbers(cells, ref_seeds.get(s, {"relearn": {}})) for s, cells in sorted(seeds.items())}
    verdicts = {s: nums.pop("relearning_bar") for s, (nums, _, _) in per.items()}
    keys = list(dict.fromkeys(k for nums, _, _ in per.values() for k in nums))
    row = {"stats": {k: stats([nums[k] for nums, _, _ in per.values() if k in nums],
                               sum(k not in nums for nums, _, _ in per.values())) for k in keys},
           "bounds": {k: sorted({b[k] for _, b, _ in per.values() if k in b}) for k in keys
                      if any(k in b for _, b, _ in per.values())},
           "cost_quotable": all(q for _, _, q in per.values()), "seeds": list(per)}
    return row | {"relearning_bar": {"seeds": verdicts, "every_seed": every_seed(verdicts),
                                     "seed_means": seed_means_verdict(row)}}


def every_seed(verdicts: dict) -> dict:
    """The relearning bar on every seed: the worst seed's verdict (fails > open > unmeasured > met), with where."""
    order = ("fails", "open", "unmeasured", "met")
    seed, v = min(verdicts.items(), key=lambda sv: (order.index(sv[1]["verdict"]),
                                                    sv[1]["worst"]["ratio"] if sv[1]["worst"] else 0.0))
    return {"verdict": v["verdict"], "worst": v["worst"] and v["worst"] | {"seed": seed}}


def seed_means_verdict(row: dict) -> dict:
    """The relearning bar on the seed means of each (k, lr) steps ratio (a mean over bounds of both kinds is
    ``mixed``: open); a point where some seeds have no ratio (neither relearned) takes the others' mean."""
    points = {}
    for key, st in row["stats"].items():
        if key.startswith("steps_ratio "):
            _, k, lr = key.split(" ")
            marks = row["bounds"].get(key, [])
            points[(k, lr)] = (st["mean"], marks[0] if len(marks) == 1 else ("mixed" if marks else "="))
    return relearning_bar(points)


def meets_bars(row: dict) -> bool:
    means = {k: row["stats"].get(k, {}).get("mean") for k in BARS}
    return all(v is not None and v <= BARS[k] for k, v in means.items())


def must_reach(methods: dict) -> list[str]:
    """The specs (not references) that meet the bars (seed means) and the relearning bar on every seed."""
    return [spec for spec, row in methods.items() if spec not in REFERENCES and meets_bars(row)
            and row["relearning_bar"]["every_seed"]["verdict"] == "met"]


def best_point(methods: dict) -> str | None:
    """The spec (not a reference) that meets the bars (seed means) with the highest mean minimum steps ratio over
    the grid, ties to the higher AUC ratio; None if none meets them."""
    def key(item):
        s = item[1]["stats"]
        return tuple(s.get(k, {}).get("mean") or float("-inf") for k in ("min_steps_ratio", "min_auc_ratio"))
    fit = [(spec, row) for spec, row in methods.items() if spec not in REFERENCES and meets_bars(row)]
    return max(fit, key=key)[0] if fit else None


def fmt(st: dict | None, form: str, marks=(), none: str = "–", unit: str = "") -> str:
    """``mean [min, max]`` (one seed: the value) with ``unit``, bound marks in front, ``none`` for the seeds
    whose value is None (``+N none`` when some have one) and ``+N –`` for the seeds not measured yet."""
    if st is None:
        return "–"
    missing = f" +{st['missing']} –" if st["missing"] else ""
    if st["mean"] is None:
        return none + missing if st["none"] else "–"
    mark = "".join(BOUND_MARK[m] for m in marks)
    cell = mark + format(st["mean"], form) + unit
    if st["n"] - st["none"] - st["missing"] > 1:
        cell += f" [{format(st['min'], form)}, {format(st['max'], form)}]"
    return cell + (f" +{st['none']} {none}" if st["none"] else "") + missing


NO_STEPS_RATIO = "both never"  # neither model reached the threshold within the budget
NO_AUC_RATIO = "n/a"  # the model's AUC is 0

MAIN = [("p_forgotten", "P(c_f)", ".3g", None), ("retained_acc", "retained acc", ".3f", None),
        ("retained_nelbo_rise_pct", "retained nELBO vs θ* (%)", "+.2f", None), ("cost", "cost / retrain", ".2f", None),
        ("min_steps_ratio", "min steps ratio (grid)", ".2f", NO_STEPS_RATIO),
        ("min_auc_ratio", "min AUC ratio (grid)", ".2f", NO_AUC_RATIO), ("l2", "L2 from θ*", ".3g", None),
        ("fisher_distance", "Fisher dist.", ".3g", None), ("barrier", "barrier (nats)", ".3g", None),
        ("invert_free_best_p", "inversion best P free", ".2f", None), ("invert_onehot_best_p", "onehot", ".2f", None)]
# (number, column title, format, None as a ratio means: None for a plain number)


def row_cells(row: dict, columns) -> list[str]:
    out = []
    for key, _, form, ratio in columns:
        cell = fmt(row["stats"].get(key), form, row["bounds"].get(key, ()), ratio or "–", "×" if ratio else "")
        out.append(cell + ("*" if key == "cost" and not row["cost_quotable"] and cell != "–" else ""))
    return out


def table_lines(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def lr_label(lr: str) -> str:
    return f"lr {float(lr):.2g}"


def grid_cell(row: dict, what: str, k: int, lr: str, none: str) -> str:
    """``value (ratio×)`` of ``what`` (steps | auc) at (k, lr)."""
    key, ratio = f"{what} k{k} {lr}", f"{what}_ratio k{k} {lr}"
    value = fmt(row["stats"].get(key), ".3g", none="never" if what == "steps" else "–")
    return f"{value} ({fmt(row['stats'].get(ratio), '.2f', row['bounds'].get(ratio, ()), none, '×')})"


def grid_tables(methods: dict, ks: list[int], lrs: list[str], window: int) -> list[str]:
    """Per k: steps to P >= 0.5 and AUC per lr, each with its ratio to retrain."""
    lines = []
    for k in ks:
        data = "retained classes only" if k == 0 else f"k = {k} real images"
        for what, title, none in (("steps", "steps to P ≥ 0.5", NO_STEPS_RATIO),
                                  ("auc", f"AUC over the first {window} steps", NO_AUC_RATIO)):
            rows = [[spec] + [grid_cell(row, what, k, lr, none) for lr in lrs] for spec, row in methods.items()]
            lines += ["", f"{title}, {data} (ratio to retrain):", ""]
            lines += table_lines(["method"] + [lr_label(lr) for lr in lrs], rows)
    return lines


def group_markdown(name: str, group: dict, ks: list[int], lrs: list[str], window: int) -> list[str]:
    best = group["best"]
    lines = ["", f"## {name} (seeds {', '.join(map(str, group['seeds']))})", "",
             f"Best point meeting the bars ({BARS_TEXT}): " + (f"**{best}**" if best else "none") + ".", ""]
    lines += table_lines(["method"] + [t for _, t, _, _ in MAIN],
                         [[spec] + row_cells(row, MAIN) for spec, row in group["methods"].items()])
    return lines + bar_lines(group) + grid_tables(group["methods"], ks, lrs, window)


def verdict_text(v: dict) -> str:
    """``fails: 0.46× (seed 1, k10, lr 0.00046)``; open ratios carry their bound mark."""
    w = v["worst"]
    if w is None:
        return v["verdict"]
    where = ", ".join(([f"seed {w['seed']}"] if "seed" in w else []) + [w["k"], lr_label(w["lr"])])
    mark = BOUND_MARK.get(w["bound"], "")
    return f"{v['verdict']}: {'lowest ' if v['verdict'] == 'met' else ''}{mark}{w['ratio']:.2f}× ({where})"


def bar_lines(group: dict) -> list[str]:
    """The issue's must-reach for the specs that meet the bars: the relearning bar on every seed and on the means."""
    fit = {spec: row for spec, row in group["methods"].items() if spec not in REFERENCES and meets_bars(row)}
    if not fit:
        return []
    met = group["must_reach"]
    bar = f"steps ratio ≥ {RELEARNING_BAR['ratio']}× at every lr for {' and '.join(RELEARNING_BAR['k'])}"
    lines = ["", f"Must reach (the bars, and {bar} on every seed): "
             + (", ".join(f"**{s}**" for s in met) if met else "met by none") + ". For the specs that meet the bars "
             "(open: only a bound stands in the way, e.g. ≤1.20× where retrain never relearned within the budget):",
             ""]
    rows = [[spec, verdict_text(row["relearning_bar"]["every_seed"]), verdict_text(row["relearning_bar"]["seed_means"])]
            for spec, row in fit.items()]
    return lines + table_lines(["method", "relearning bar, every seed", "on the seed means"], rows)


def render(records, b, fps: dict) -> tuple[dict, str]:
    """(the table's JSON, its markdown) from ``[(Cell, record or None)]``."""
    lrs, ks = [f"{lr:g}" for lr in b.lrs], list(b.k) if "relearn" in b.kinds else []  # a screen: no grids
    groups = {}
    for (arch, forget), specs in collect(records).items():
        ref = specs.get("retrain", {})
        methods = {spec: combine(seeds, ref) for spec, seeds in specs.items()}
        name = f"{arch}, forget {','.join(map(str, forget))}"
        groups[name] = {"methods": methods, "best": best_point(methods), "seeds": sorted({s for v in specs.values()
                                                                                         for s in v}),
                        "must_reach": must_reach(methods)}
    window = min(b.attack.auc_steps, b.attack.relearn_steps)
    done = sum(rec is not None for _, rec in records)
    md = ["# Robustness: every method against the same attacks, as ratios to retraining", "",
          f"{done} of {len(records)} cells measured. Ratios above 1: harder to relearn than retrain (steps: the "
          "method's over retrain's; AUC: retrain's over the method's); ≥ / ≤: a bound (one model never reached "
          "P ≥ 0.5 within the budget); the minimum is over every lr and k. Mean [min, max] over seeds. "
          "*: cost not quotable (a loaded cell, another CPU, seconds from a run made before its cell, or a "
          "retrained model from the cache)."]
    if b.attack.relearn_params != "all":
        md += ["", f"Relearning moves only the weights `{b.attack.relearn_params}` names (`--relearn-params`, a "
               "diagnostic; `sa_dist.attacks.relearn.trainable`), every other weight frozen."]
    if b.attack.relearn_start != "model":
        md += ["", f"Relearning starts from `{b.attack.relearn_start}` (`--relearn-start`; "
               "`sa_dist.attacks.relearn.start_copy`): every model, retrain's included, has the forgotten label's "
               "input weights reset to the retained labels' mean before the fine-tune."]
    if b.attack.relearn_draw is not None:
        md += ["", f"**A control, not the attack** (`--relearn-draw {b.attack.relearn_draw}`): every model's forgotten "
               f"label is taught real images of class {b.attack.relearn_draw}, judged by P(y={b.attack.relearn_draw}); "
               "the steps measure how fast a model re-points a label (its plasticity), not what it kept of the "
               "forgotten class. The bars' verdicts below judge this control, not the forgetting."]
    for name, group in groups.items():
        md += group_markdown(name, group, ks, lrs, window)
    cells = [{"name": c.name, "hash": rec["hash"], "loaded": rec["loaded"], "wall_s": rec["wall_s"],
              "commit": rec["commit"]} for c, rec in records if rec is not None]
    attack = {k: v for k, v in vars(b.attack).items() if k not in OVERRIDDEN}
    settings = {k: v for k, v in vars(b).items() if k != "attack"} | {"attack": attack}
    return {"settings": settings, "fingerprints": fps, "groups": groups, "cells": cells,
            "missing": [c.name for c, rec in records if rec is None]}, "\n".join(md) + "\n"


def frontier(data: dict, path: Path) -> None:
    """One panel per group: cost against the minimum steps ratio, one point per spec (seed means)."""
    groups = data["groups"]
    fig, axes = subplots(1, max(len(groups), 1), figsize=(5 * max(len(groups), 1), 4), squeeze=False)
    for ax, (name, group) in zip(axes[0], groups.items()):
        for spec, row in group["methods"].items():
            x, y = (row["stats"].get(k, {}).get("mean") for k in ("cost", "min_steps_ratio"))
            if x is not None and y is not None:
                ax.scatter([x], [y], marker="*" if spec == group["best"] else "o")
                ax.annotate(spec, (x, y), fontsize=7)
        ax.axhline(1.0, color="grey", ls="--", lw=1)
        ax.axvline(BARS["cost"], color="grey", ls=":", lw=1)
        ax.set(title=name, xlabel="cost / retraining", ylabel="min relearning steps ratio to retrain (grid)")
    fig.tight_layout()
    save_png(fig, path)
