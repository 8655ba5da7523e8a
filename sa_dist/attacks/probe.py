"""Latent probe: a cross-validated logistic-regression probe (scikit-learn) on encoder means of real test images,
target class vs the rest."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..analysis.latent import latent_means
from ..models import CVAE


def probe(model: CVAE, x: torch.Tensor, y: torch.Tensor, target: int, *, folds: int = 5, seed: int = 0,
          device="cpu") -> dict:
    """Cross-validated ROC AUC of a logistic regression telling ``target`` images from the rest, on encoder means
    under each image's own label (``own_label``) and, label-blind, concatenated over all ten one-hot labels
    (``all_labels``). Chance is 0.5."""
    is_target = (y == target).numpy()
    model = model.to(device)
    feats = {"own_label": latent_means(model, x, y),
             "all_labels": np.concatenate([latent_means(model, x, torch.full_like(y, k))
                                           for k in range(model.n_classes)], 1)}
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    out = {"n": len(y), "n_target": int(is_target.sum())}
    for name, f in feats.items():
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        auc = cross_val_score(clf, f.astype(np.float64), is_target, cv=cv, scoring="roc_auc")
        out[name] = {"auc": float(auc.mean()), "auc_std": float(auc.std()), "features": f.shape[1]}
    return out
