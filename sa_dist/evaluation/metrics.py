"""Metrics of a cVAE through the evaluator: per-class sample accuracy, P(y=c), entropy, test negative ELBO, the
label -> seen-class matrix and where the forgotten mass went (collateral damage), and how close the forgotten
classes came to their surrogate (the ``results.json`` schema, docs/outputs.md)."""
from __future__ import annotations

import torch

from ..models import CVAE, negative_elbo
from ..surrogate import get_surrogate
from .evaluator import entropy, p_reject, score


@torch.no_grad()
def test_nelbo(model: CVAE, x: torch.Tensor, c: torch.Tensor, seed: int = 0, batch: int = 1000) -> torch.Tensor:
    """Per-image negative ELBO ``(N,)`` (one posterior sample, seeded noise)."""
    gen = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        eps = torch.randn(len(x[i:i + batch]), model.z_dim, generator=gen)
        out.append(negative_elbo(model, x[i:i + batch].to(dev), c[i:i + batch].to(dev), eps.to(dev)).cpu())
    return torch.cat(out)


def _mean_reject(probs: torch.Tensor) -> float | None:
    """Mean P(not a digit), or None for an evaluator without a reject output (version 1)."""
    rej = p_reject(probs)
    return None if rej is None else rej.mean().item()


def _prob_stats(probs: torch.Tensor, classes) -> dict:
    return {"p_class": {str(k): probs[:, k].mean().item() for k in classes}, "entropy": entropy(probs).mean().item(),
            "p_reject": _mean_reject(probs)}


def seen_classes(n_outputs: int, n_classes: int) -> list[str]:
    """Names of the evaluator's outputs: the digits, then ``reject`` ("not a digit") if it has one more."""
    return [str(k) for k in range(n_classes)] + ["reject"] * (n_outputs - n_classes)


@torch.no_grad()
def class_metrics(model: CVAE, evaluator, x_test, y_test, n_samples: int = 1000, seed: int = 0) -> dict:
    """``per_class``: ``{"c": {"sample_acc", "p_class", "p_reject", "entropy", "test_nelbo"}}`` for every class
    (``p_reject``: mean P(not a digit)); ``confusion``:
    for each label asked for (rows), the evaluator's mean probability of each class it sees (columns)."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    nelbo = test_nelbo(model, x_test, y_test, seed)
    out, rows = {}, []
    for c in range(model.n_classes):
        probs = score(evaluator, model.sample(n_samples, c, generator=gen))  # (n, outputs)
        out[str(c)] = {"sample_acc": (probs.argmax(1) == c).float().mean().item(),
                       "p_class": probs[:, c].mean().item(), "p_reject": _mean_reject(probs),
                       "entropy": entropy(probs).mean().item(),
                       "test_nelbo": nelbo[y_test == c].mean().item()}
        rows.append(probs.mean(0).tolist())
    seen = seen_classes(len(rows[0]), model.n_classes)
    return {"per_class": out, "confusion": {"labels": [str(c) for c in range(model.n_classes)], "seen": seen,
                                            "mean_p": rows}}


def collateral(before: dict, after: dict, forget: list[int], top: int = 3) -> dict:
    """Where probability mass moved between the ``confusion`` blocks ``before`` and ``after``: for every retained
    label, the change of its own mass and the seen class that gained most; ``most_moved``: the ``top`` retained
    labels whose own mass changed most; ``forgotten``: where each forgotten label's mass went."""
    seen, b, a = before["seen"], before["mean_p"], after["mean_p"]

    def row(c: int) -> dict:
        gains = [a[c][k] - b[c][k] for k in range(len(seen))]
        to = max((k for k in range(len(seen)) if k != c), key=lambda k: gains[k])
        return {"own_before": b[c][c], "own_after": a[c][c], "own_change": a[c][c] - b[c][c],
                "largest_gain": seen[to], "largest_gain_change": gains[to]}

    kept = {str(c): row(c) for c in range(len(b)) if c not in forget}
    moved = sorted(kept, key=lambda c: -abs(kept[c]["own_change"]))[:top]
    gone = {str(c): {"to": seen[max(range(len(seen)), key=lambda k: a[c][k])],
                     "p": max(a[c])} for c in forget}
    return {"retained": kept, "most_moved": moved, "forgotten": gone}


@torch.no_grad()
def surrogate_metrics(kind: str, forget: list[int], before: CVAE, after: CVAE, evaluator,
                      n: int = 1000, seed: int = 0) -> dict:
    """The ``surrogate`` block of results.json (docs/outputs.md): the evaluator on the surrogate's ideal output
    (what a perfectly forgotten model generates) and on raw samples, and their negative ELBO before and after."""
    gen = torch.Generator().manual_seed(seed + 1)
    surrogate = get_surrogate(kind, forget, before.n_classes)
    raw = surrogate.sample(n, gen, before)
    labels = torch.tensor(forget)[torch.arange(n) % len(forget)]
    return {"kind": kind,
            "ideal": _prob_stats(score(evaluator, surrogate.ideal(before, gen)), forget),
            "samples": _prob_stats(score(evaluator, raw), forget),
            "nelbo": {"before": test_nelbo(before, raw, labels, seed).mean().item(),
                      "after": test_nelbo(after, raw, labels, seed).mean().item(), "z_blind": surrogate.z_blind}}


def summarize(results: dict) -> dict:
    """Headline numbers: forgotten P(y=c_f), P(reject) and entropy, retained mean accuracy and test nELBO, before
    and after (``forgotten_p_reject`` is None where the evaluator has no reject output)."""
    forget = [str(c) for c in results["forget_classes"]]
    out = {}
    for when in ("before", "after"):
        pc = results[when]["per_class"]
        kept = [v for k, v in pc.items() if k not in forget]
        out[when] = {"forgotten_p_class": {k: pc[k]["p_class"] for k in forget},
                     "forgotten_p_reject": {k: pc[k].get("p_reject") for k in forget},
                     "forgotten_entropy": {k: pc[k]["entropy"] for k in forget},
                     "forgotten_sample_acc": {k: pc[k]["sample_acc"] for k in forget},
                     "retained_sample_acc": sum(v["sample_acc"] for v in kept) / len(kept),
                     "retained_test_nelbo": sum(v["test_nelbo"] for v in kept) / len(kept)}
    return out


P_BAR = 0.01  # forgotten: P(y=c_f) at most this for every forgotten class


def forgetting_bar(results: dict) -> dict:
    """The forgetting bar: ``forgotten_p_ok``, P(y=c_f) <= ``P_BAR`` after for every forgotten class;
    ``ideal_rejected``, the surrogate's ideal output is scored "not a digit" (mean P(reject) >= 0.5; None for an
    evaluator without a reject output)."""
    after = results["summary"]["after"]["forgotten_p_class"]
    rej = results["surrogate"]["ideal"].get("p_reject")
    return {"p_max": P_BAR, "forgotten_p_ok": all(p <= P_BAR for p in after.values()),
            "ideal_rejected": None if rej is None else rej >= 0.5}


def compare(before: CVAE, after: CVAE, evaluator, x_test, y_test, forget: list[int], surrogate: str,
            n_samples: int = 1000, seed: int = 0) -> dict:
    """results.json's ``forget_classes``, ``before``, ``after``, ``surrogate``, ``summary`` and ``collateral``."""
    out = {"forget_classes": list(forget)}
    for name, model in (("before", before), ("after", after)):
        out[name] = class_metrics(model, evaluator, x_test, y_test, n_samples, seed)
    out["surrogate"] = surrogate_metrics(surrogate, list(forget), before, after, evaluator, n_samples, seed)
    out["summary"] = summarize(out)
    out["summary"]["bar"] = forgetting_bar(out)
    out["collateral"] = collateral(out["before"]["confusion"], out["after"]["confusion"], list(forget))
    return out
