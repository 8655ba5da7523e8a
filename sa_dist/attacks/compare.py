"""Relearning compared with the retrained model's: the area under a relearning curve, and the ratios to ``retrain``
under the identical attack, per lr and k, with their minimum over the grid (the attacker's best case).

Both ratios read the same way: above 1 the model is harder to relearn than ``retrain``, 1 as hard, below 1 easier.

* **steps**: the model's steps to the threshold over retrain's. A run that never got there counts as the steps it
  ran (its budget), so the ratio is then a bound: ``>=`` when only the model never got there, ``<=`` when only
  retrain never did; None when neither did (both held out for the whole budget, nothing to compare).
* **AUC**: retrain's area under the P curve over the model's (a larger area is faster relearning); None when the
  model's area is 0.

The minimum over a grid is the smallest ratio of its points (None ones left out), with its bound and where it is. A
**bar** (say steps ratio >= 0.9 at every lr for k = 10 and 100) is met, fails, or stays open where a bound cannot decide
it (``bar_verdict``)."""
from __future__ import annotations

EQUAL, AT_LEAST, AT_MOST = "=", ">=", "<="


def curve_auc(step: list, p: list, window: int) -> float:
    """Area under the curve ``p`` over steps [0, ``window``] by the trapezoid rule over the scored steps ``step``
    (which start at 0), divided by ``window``: in [0, 1] for P in [0, 1]. A curve that ends before ``window`` (a
    run stopped at the threshold) is held at its last value to the end; one that goes past it is cut there
    (linearly interpolated). ``window`` 0: P at step 0."""
    if not step or step[0] != 0:
        raise ValueError(f"a relearning curve starts at step 0, got steps {step[:3]}")
    if window <= 0:
        return float(p[0])
    s, q = list(step), list(p)
    if s[-1] < window:  # stopped early: the last P held to the end of the window
        s, q = s + [window], q + [q[-1]]
    area = 0.0
    for s0, p0, s1, p1 in zip(s, q, s[1:], q[1:]):
        if s0 >= window:
            break
        if s1 > window:  # the segment that crosses the window's end, cut there
            p1, s1 = p0 + (p1 - p0) * (window - s0) / (s1 - s0), window
        area += (s1 - s0) * (p0 + p1) / 2
    return area / window


def steps_ratio(r: dict, ref: dict) -> dict | None:
    """``{"ratio", "bound"}``: the relearn result ``r``'s steps to the threshold over ``ref``'s (retrain's under the
    same attack); a run that never got there counts as its ``steps_run`` and makes the ratio a bound."""
    a, b = r["steps_to_threshold"], ref["steps_to_threshold"]
    if a is None and b is None:
        return None
    num, den = (r["steps_run"] if a is None else a), (ref["steps_run"] if b is None else b)
    if den == 0:
        return None
    bound = EQUAL if a is not None and b is not None else (AT_LEAST if a is None else AT_MOST)
    return {"ratio": num / den, "bound": bound}


def auc_ratio(r: dict, ref: dict) -> float | None:
    """Retrain's AUC over the model's (``r``): above 1 the model relearns more slowly."""
    return ref["auc"] / r["auc"] if r["auc"] > 0 else None


def lr_ratios(by_lr: dict, ref_by_lr: dict) -> dict:
    """``{lr: {"steps": steps_ratio, "auc": auc_ratio}}`` for every lr both grids ran."""
    return {lr: {"steps": steps_ratio(r, ref_by_lr[lr]), "auc": auc_ratio(r, ref_by_lr[lr])}
            for lr, r in by_lr.items() if lr in ref_by_lr}


def grid_min(points: dict) -> dict:
    """``{"min_steps", "min_auc"}`` over ``{(k, lr): lr_ratios entry}``: the smallest ratio with its ``k`` and
    ``lr`` (and the steps ratio's bound); None where no point has one."""
    steps = [({"ratio": e["steps"]["ratio"], "bound": e["steps"]["bound"]}, at) for at, e in points.items()
             if e["steps"] is not None]
    aucs = [({"ratio": e["auc"]}, at) for at, e in points.items() if e["auc"] is not None]
    out = {}
    for name, have in (("min_steps", steps), ("min_auc", aucs)):
        best = min(have, key=lambda h: h[0]["ratio"], default=None)
        out[name] = None if best is None else {**best[0], "k": best[1][0], "lr": best[1][1]}
    return out


def grid_ratios(block: dict, ref: dict) -> dict:
    """A model's relearning ``block`` (``{"k10": {"by_lr": {lr: result}}, ...}``) against retrain's ``ref``:
    ``{"by_k": {k: {"by_lr": lr_ratios, "min_steps", "min_auc"}}, "min_steps", "min_auc"}``, the last two the
    minimum over every (k, lr) point both ran."""
    by_k, points = {}, {}
    for k, g in block.items():
        if k not in ref:
            continue
        per_lr = lr_ratios(g["by_lr"], ref[k]["by_lr"])
        at = {(k, lr): e for lr, e in per_lr.items()}
        by_k[k] = {"by_lr": per_lr, **grid_min(at)}
        points.update(at)
    return {"by_k": by_k, **grid_min(points)}


def ratio_verdict(ratio: float | None, bound: str | None, bar: float) -> str:
    """One steps ratio against ``bar``: ``met``, ``fails`` or ``open``. A bound decides only on its own side (``<=``:
    retrain never got there within the budget, the true ratio is lower; ``>=``: the model never did, it is higher;
    anything else, e.g. a mean over bounds of both kinds, decides nothing); no ratio (neither got there) is met."""
    if ratio is None:
        return "met"
    if ratio >= bar:
        return "met" if bound in (EQUAL, AT_LEAST, None) else "open"
    return "fails" if bound in (EQUAL, AT_MOST, None) else "open"


def bar_verdict(points: dict, bar: float, ks) -> dict:
    """``bar`` over the steps ratios ``{(k, lr): (ratio, bound)}`` at every k of ``ks``: ``{"verdict", "worst"}``.
    The verdict is ``fails`` if a point fails, else ``open`` if one is open, else ``met``; ``unmeasured`` when a k
    of ``ks`` has no point. ``worst``: the lowest ratio among the deciding points (the failing, else the open, else
    all), with its k, lr and bound."""
    if not all(any(k == want for k, _ in points) for want in ks):
        return {"verdict": "unmeasured", "worst": None}
    judged = [(ratio_verdict(r, bound, bar), r, at, bound) for at, (r, bound) in points.items() if at[0] in ks]
    verdict = next((v for v in ("fails", "open") if any(j[0] == v for j in judged)), "met")
    deciding = [j for j in judged if j[0] == verdict and j[1] is not None]
    if not deciding:
        return {"verdict": verdict, "worst": None}
    _, ratio, (k, lr), bound = min(deciding, key=lambda j: j[1])
    return {"verdict": verdict, "worst": {"k": k, "lr": lr, "ratio": ratio, "bound": bound}}
