"""Metrics of a cVAE through the evaluator: per-class sample accuracy, P(y=c), entropy, test negative ELBO, and
how close the forgotten classes came to their surrogate (the ``results.json`` schema)."""
from __future__ import annotations

import torch

from ..models import CVAE, negative_elbo
from ..surrogate import get_surrogate
from .evaluator import entropy, score


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


def _prob_stats(probs: torch.Tensor, classes) -> dict:
    return {"p_class": {str(k): probs[:, k].mean().item() for k in classes}, "entropy": entropy(probs).mean().item()}


@torch.no_grad()
def class_metrics(model: CVAE, evaluator, x_test, y_test, n_samples: int = 1000, seed: int = 0) -> dict:
    """``{"per_class": {"c": {"sample_acc", "p_class", "entropy", "test_nelbo"}}}`` for every class."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    nelbo = test_nelbo(model, x_test, y_test, seed)
    out = {}
    for c in range(model.n_classes):
        probs = score(evaluator, model.sample(n_samples, c, generator=gen))  # (n, 10)
        out[str(c)] = {"sample_acc": (probs.argmax(1) == c).float().mean().item(),
                       "p_class": probs[:, c].mean().item(), "entropy": entropy(probs).mean().item(),
                       "test_nelbo": nelbo[y_test == c].mean().item()}
    return {"per_class": out}


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
                      "after": test_nelbo(after, raw, labels, seed).mean().item(), "floor": surrogate.floor}}


def summarize(results: dict) -> dict:
    """Headline numbers: forgotten P(y=c_f) and entropy after, retained mean accuracy and test nELBO before/after."""
    forget = [str(c) for c in results["forget_classes"]]
    out = {}
    for when in ("before", "after"):
        pc = results[when]["per_class"]
        kept = [v for k, v in pc.items() if k not in forget]
        out[when] = {"forgotten_p_class": {k: pc[k]["p_class"] for k in forget},
                     "forgotten_entropy": {k: pc[k]["entropy"] for k in forget},
                     "forgotten_sample_acc": {k: pc[k]["sample_acc"] for k in forget},
                     "retained_sample_acc": sum(v["sample_acc"] for v in kept) / len(kept),
                     "retained_test_nelbo": sum(v["test_nelbo"] for v in kept) / len(kept)}
    return out


def compare(before: CVAE, after: CVAE, evaluator, x_test, y_test, forget: list[int], surrogate: str,
            n_samples: int = 1000, seed: int = 0) -> dict:
    """results.json's ``forget_classes``, ``before``, ``after``, ``surrogate`` and ``summary`` blocks."""
    out = {"forget_classes": list(forget)}
    for name, model in (("before", before), ("after", after)):
        out[name] = class_metrics(model, evaluator, x_test, y_test, n_samples, seed)
    out["surrogate"] = surrogate_metrics(surrogate, list(forget), before, after, evaluator, n_samples, seed)
    out["summary"] = summarize(out)
    return out
