"""Calibration of a classifier: temperature scaling (one scalar T, logits / T, fitted on held-out data by
minimising the negative log-likelihood) and the expected calibration error.

ECE: the predictions are put in 15 equal-width bins of confidence (the top probability); ECE is the mean, weighted
by the bin's share of predictions, of |accuracy - mean confidence| in each bin (Guo et al., 2017). 0 is perfectly
calibrated."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BINS = 15
T_RANGE = (0.05, 20.0)  # temperatures searched (log scale)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """ECE of probabilities ``(N, K)`` against labels ``(N,)`` with ``bins`` equal-width confidence bins."""
    conf, pred = probs.max(1)
    hits = (pred == labels).float()
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to the first bin
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = idx == b
        if inside.any():
            ece += inside.float().mean().item() * abs(hits[inside].mean().item() - conf[inside].mean().item())
    return ece


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return F.cross_entropy(logits.double() / temperature, labels).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iters: int = 60) -> float:
    """The temperature in ``T_RANGE`` minimising the held-out NLL: golden-section search on log T (NLL is
    unimodal in T for a fixed set of logits in practice)."""
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(iters):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)
