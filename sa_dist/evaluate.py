"""Metrics of a cVAE through the evaluator: per-class sample accuracy, P(y=c), entropy, test negative ELBO, and
how close the forgotten classes came to their surrogate (the ``results.json`` schema)."""
from __future__ import annotations

import math

import torch

from .evaluator import entropy, score
from .models import CVAE, elbo
from .sa import surrogate_images

UNIFORM_FLOOR = 784 * math.log(2)  # best negative ELBO of U[0,1]^784 under a Bernoulli decoder: 543.4 nats


@torch.no_grad()
def test_nelbo(model: CVAE, x: torch.Tensor, c: torch.Tensor, seed: int = 0, batch: int = 1000) -> torch.Tensor:
    """Per-image negative ELBO ``(N,)`` (one posterior sample, seeded noise)."""
    gen = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        eps = torch.randn(len(x[i:i + batch]), model.z_dim, generator=gen)
        out.append(elbo(model, x[i:i + batch].to(dev), c[i:i + batch].to(dev), eps.to(dev)).cpu())
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


def ideal_image(kind: str, original: CVAE, gen: torch.Generator) -> torch.Tensor:
    """What a perfectly forgotten model outputs: the surrogate's mean image (grey, black, class K's samples)."""
    if kind == "uniform":
        return torch.full((1, 1, 28, 28), 0.5)
    if kind == "blank":
        return torch.zeros(1, 1, 28, 28)
    if kind.startswith("class:"):
        return original.sample(1000, int(kind.split(":")[1]), generator=gen).cpu()
    return surrogate_images(kind, 1000, gen).mean(0, keepdim=True)


@torch.no_grad()
def surrogate_metrics(kind: str, forget: list[int], before: CVAE, after: CVAE, evaluator,
                      n: int = 1000, seed: int = 0) -> dict:
    """The ``surrogate`` block of results.json (see README, "results.json")."""
    gen = torch.Generator().manual_seed(seed + 1)
    raw = surrogate_images(kind, n, gen, before, forget)
    labels = torch.tensor(forget)[torch.arange(n) % len(forget)]
    floor = {"uniform": UNIFORM_FLOOR, "blank": 0.0}.get(kind)
    return {"kind": kind,
            "ideal": _prob_stats(score(evaluator, ideal_image(kind, before, gen)), forget),
            "samples": _prob_stats(score(evaluator, raw), forget),
            "nelbo": {"before": test_nelbo(before, raw, labels, seed).mean().item(),
                      "after": test_nelbo(after, raw, labels, seed).mean().item(), "floor": floor}}


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
