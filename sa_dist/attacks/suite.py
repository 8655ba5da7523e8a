"""Is it really forgotten? ``scripts/attack.py``: the attacks on a finished run's original, unlearned and ``retrain``
models, side by side, into ``DIR/results.json`` under ``attacks`` (merged, rewritten atomically by the main process)
and figures under ``DIR/attacks/``. Every headline number is also given as a ratio to the retrained model's
(``summary``: ``vs_retrain``, and per lr and k for relearning, ``relearn_vs_retrain``). The ``run_*`` functions take
any ``{name: (model, source)}``, so the robustness benchmark attacks more models with them."""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from ..cache import baseline_key, get_baseline, get_fisher
from ..checkpoint import load_checkpoint
from ..config import RunConfig, load_config
from ..data import load_mnist
from ..evaluation.evaluator import get_evaluator
from ..evaluation.paper import get_paper_classifier
from ..runs import load_results
from ..runtime import make_accelerator
from ..utils import UsageError, UserError, arg, write_json
from .compare import grid_ratios
from .figures import invert_figure, relearn_figure
from .invert import invert
from .probe import probe
from .relearn import PARAMS, STARTS, Judges, relearn, relearn_grid
from .retain import retain_relearn
from .weights import weight_report

KINDS = ("relearn", "retain", "invert", "probe", "weights")  # scripts/attack.py --kind
INVERSIONS = {"free": ("free", False), "plausible": ("free", True), "simplex": ("simplex", False),
              "onehot": ("onehot", False)}  # variant: (label mode, with the plausibility penalty)
MODELS = ("original", "unlearned", "retrain")  # attacked side by side


@dataclass
class AttackConfig:
    target: Optional[int] = arg(None, "forgotten class to attack", shown="the run's first")
    relearn_k: list = arg(help="real training images of the class per fine-tune (0: retained classes only, "
                               "--retain-steps steps of --retain-batch images)", factory=lambda: [10, 100],
                          nargs="+", type=int)  # the benchmark adds 0 and 50; the retain attack covers 0 at one lr
    relearn_steps: int = arg(500, "most fine-tuning steps (the k images as one batch per step)")
    relearn_lr: list = arg(help="Adam lrs of the fine-tune: each is compared with retrain's at the same lr",
                           factory=lambda: [3e-4, 3e-3], nargs="+", type=float)  # two for speed; the benchmark's grid: 7, 1e-4 to 1e-2
    relearn_params: str = arg("all", "weights the fine-tune may move: all, or (a diagnostic) only those reading "
                                     "the one-hot label", choices=PARAMS)
    relearn_start: str = arg("model", "what the fine-tune starts from: the model, or (an attacker who knows the "
                                      "forgotten label) the model with that label's input weights reset to the "
                                      "retained labels' mean", choices=STARTS)
    relearn_draw: Optional[int] = arg(None, "a control for plasticity: teach the forgotten label real images of "
                                            "this other class, judged by P(y=it)", shown="the forgotten class")
    relearn_samples: int = arg(1000, "samples of the target label scored at each scheduled step")
    threshold: float = arg(0.5, "relearned once mean P(y=target) reaches this", flag="")
    auc_steps: int = arg(100, "steps over which the area under the P curve is taken (after a stop at the "
                              "threshold, the last P is held)")  # the early steps, where models differ most
    retain_steps: int = arg(100, "fine-tuning steps on retained-class images only (the retain attack, and k=0)")
    retain_batch: int = arg(100, "retained-class images per step of the retain attack (and of k=0)")
    retain_lr: Optional[float] = arg(None, "Adam lr of the retain attack", shown="the baseline's training lr")
    invert_restarts: int = arg(64, "inversion random starts, optimised together as one batch", flag="--restarts")
    invert_steps: int = arg(200, "Adam steps per inversion start")
    invert_lr: float = arg(0.05, "Adam lr on z and c", flag="")
    invert_penalty: float = arg(0.01, "weight per nat of negative ELBO in the 'plausible' inversion",
                                flag="--penalty")  # 1 nat of log P per 100 nats; a real digit costs ~100 nats
    probe_folds: int = arg(5, "stratified cross-validation folds of the probe", flag="")
    probe_n: Optional[int] = arg(None, "test images for the probe", shown="all")
    weights_points: int = arg(11, "points on the line from the original to each model (loss barrier)")
    seed: int = arg(0, "seed of images, latents and starts (the same for every model)")


def attack_accelerator(cfg: RunConfig, run_dir: Path):
    """The attacks' Accelerator, in the run's mixed precision: a model trained here on a cache miss (``retrain``)
    is then what its cache key says. fp16 cannot run without CUDA, so there it is float32, and ``get_baseline``
    refuses (one line) to train under the fp16 key; a cached model still loads."""
    mp = "no" if cfg.mixed_precision == "fp16" and not torch.cuda.is_available() else cfg.mixed_precision
    return make_accelerator(mixed_precision=mp, project_dir=str(run_dir),
                            threads=torch.get_num_threads())  # the caller's (attack --threads)


def load_run(run_dir: str | Path) -> tuple[RunConfig, dict]:
    run_dir = Path(run_dir)
    if not (run_dir / "results.json").is_file() or not (run_dir / "unlearned.safetensors").is_file():
        raise UserError(f"{run_dir} is not a finished run (needs results.json and unlearned.safetensors "
                        f"from scripts/unlearn.py)")
    return load_config(run_dir / "config.yaml"), load_results(run_dir)


def load_models(run_dir: Path, cfg: RunConfig, results: dict, accelerator, names=MODELS,
                original: str | None = None, retrain: str | None = None) -> dict:
    """``{name: (model, source)}``. The original is the baseline the run unlearned (checked by its key); a run
    made with ``--checkpoint`` needs ``original``. ``retrain`` is trained without the forgotten classes (cached)."""
    out = {}
    if "original" in names:
        if original is None and baseline_key(cfg) != results["baseline"]["key"]:
            raise UserError(f"{run_dir} unlearned a --checkpoint baseline, not the cached one; pass it with "
                            f"--original CKPT")
        model, info = get_baseline(cfg, accelerator, original)
        if info["key"] != results["baseline"]["key"]:
            raise UserError(f"--original {original} is not the baseline {run_dir} unlearned "
                            f"(key {info['key']}, the run's {results['baseline']['key']})")
        out["original"] = (model, "checkpoint" if original else f"cache {info['key']}")
    if "unlearned" in names:
        out["unlearned"] = (load_checkpoint(run_dir / "unlearned.safetensors", expect=cfg.model)[0],
                            "unlearned.safetensors")
    if "retrain" in names:
        if retrain:
            out["retrain"] = (load_checkpoint(retrain, expect=cfg.model)[0], "checkpoint")
        else:
            model, info = get_baseline(cfg, accelerator, exclude=tuple(cfg.sa.forget))
            out["retrain"] = (model, f"cache {info['key']}")
    return {k: out[k] for k in MODELS if k in out}


def target_images(cfg: RunConfig, target: int, k: int, seed: int) -> torch.Tensor:
    """``k`` training images of ``target``, a seeded choice; smaller k take a prefix of larger ones."""
    x, y = load_mnist(True, cfg.data_dir, cfg.train.limit)
    x = x[y == target]
    if len(x) < k:
        raise UserError(f"relearning needs {k} training images of class {target}, the data has {len(x)}")
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]]


def relearn_at(model, judges: Judges, data: dict, target: int, a: AttackConfig, device, k: int, lr: float,
               donors=None) -> dict:
    """One relearning run at ``lr`` on ``data[k]``: k images of the target, or (k = 0) ``data[0]`` = (x, y) of
    the retained classes, stopped at the threshold like the others; ``donors``: the retained labels (for
    ``--relearn-start label-mean``; default every label but the target)."""
    common = {"lr": lr, "n_samples": a.relearn_samples, "threshold": a.threshold, "auc_steps": a.auc_steps,
              "seed": a.seed, "params": a.relearn_params, "start": a.relearn_start, "donors": donors,
              "device": device}
    if k == 0:
        return retain_relearn(model, judges, *data[0], target, steps=a.retain_steps, batch=a.retain_batch,
                              stop=True, **common)
    return relearn(model, judges, data[k], target, steps=a.relearn_steps, draw=a.relearn_draw, **common)


def check_draw(a: AttackConfig, target: int, n_classes: int) -> None:
    """``--relearn-draw`` names another class and comes with k > 0 only (k = 0 has no images to teach)."""
    if a.relearn_draw is None:
        return
    if not 0 <= a.relearn_draw < n_classes or a.relearn_draw == target:
        raise UsageError(f"--relearn-draw must be a class in 0..{n_classes - 1} other than the target {target}, "
                         f"got {a.relearn_draw}")
    if 0 in a.relearn_k:
        raise UsageError("--relearn-draw teaches k > 0 images of its class; k = 0 (retained classes only) has none")


def run_relearn(models: dict, judges: Judges, cfg: RunConfig, a: AttackConfig, target: int, device) -> dict:
    """Every model at every (k, lr) of the grid, on the same images, latents and noise."""
    check_draw(a, target, cfg.model.n_classes)
    drawn = target if a.relearn_draw is None else a.relearn_draw  # the class taught and judged
    out = {"settings": {"k": list(a.relearn_k), "max_steps": a.relearn_steps, "lr": list(a.relearn_lr),
                        "optimizer": "Adam", "params": a.relearn_params, "start": a.relearn_start,
                        "draw": drawn,
                        "samples": a.relearn_samples, "threshold": a.threshold,
                        "auc_steps": a.auc_steps, "scored": "schedule",
                        "stops": "at the first scored step with P >= threshold (for the AUC, the last P is held)",
                        "judges": {"p": "the evaluator (decides the threshold)",
                                   "p_paper": "the paper protocol's classifier, on 8-bit samples"},
                        "k0": f"retained classes only: {a.retain_steps} steps of {a.retain_batch} images",
                        "best_lr": "secondary: the lr with the fewest steps"}, "models": {}}
    data = {k: target_images(cfg, drawn, k, a.seed) for k in a.relearn_k if k > 0}  # the same for every model
    if 0 in a.relearn_k:
        data[0] = load_mnist(True, cfg.data_dir, cfg.train.limit)
    donors = [c for c in range(cfg.model.n_classes) if c not in cfg.sa.forget]  # retained labels: label-mean's
    for name, (model, _) in models.items():
        out["models"][name] = {f"k{k}": relearn_grid(functools.partial(relearn_at, model, judges, data, target, a,
                                                                       device, k, donors=donors), a.relearn_lr)
                               for k in a.relearn_k}
    return out


def run_retain(models: dict, judges: Judges, cfg: RunConfig, a: AttackConfig, target: int, device) -> dict:
    """Fine-tuning on the other classes at one lr for the whole budget: the largest P(target) on the way."""
    x, y = load_mnist(True, cfg.data_dir, cfg.train.limit)
    lr = a.retain_lr or cfg.train.lr
    out = {"settings": {"steps": a.retain_steps, "batch": a.retain_batch, "lr": lr, "optimizer": "Adam",
                        "data": "real training images of every class but the target", "samples": a.relearn_samples},
           "models": {}}
    for name, (model, _) in models.items():
        out["models"][name] = retain_relearn(model, judges, x, y, target, steps=a.retain_steps, batch=a.retain_batch,
                                             lr=lr, n_samples=a.relearn_samples, threshold=a.threshold,
                                             auc_steps=a.auc_steps, seed=a.seed, stop=False, device=device)
    return out


def run_invert(models: dict, evaluator, a: AttackConfig, target: int, device, out_dir: Path) -> dict:
    out = {"settings": {"restarts": a.invert_restarts, "steps": a.invert_steps, "lr": a.invert_lr,
                        "optimizer": "Adam", "penalty": {"plausible": a.invert_penalty},
                        "label": {v: mode for v, (mode, _) in INVERSIONS.items()}}, "models": {}}
    grids = {}
    for name, (model, _) in models.items():
        out["models"][name] = {}
        for var, (mode, pen) in INVERSIONS.items():
            out["models"][name][var], grids[(name, var)] = invert(
                model, evaluator, target, restarts=a.invert_restarts, steps=a.invert_steps, lr=a.invert_lr,
                penalty=a.invert_penalty if pen else 0.0, seed=a.seed, device=device, label=mode)
    if out_dir is not None:
        invert_figure(grids, out["models"], list(INVERSIONS), target, out_dir / "invert_best.png")
        out["grid"] = "attacks/invert_best.png"
    return out


def run_weights(models: dict, original, fisher: dict | None, cfg: RunConfig, a: AttackConfig, target: int) -> dict:
    """Distances from the original and the loss barrier on the line to it, on the target's test images."""
    x, y = load_mnist(False, cfg.data_dir, cfg.train.limit)
    x = x[y == target]
    out = {"settings": {"points": a.weights_points, "data": f"{len(x)} test images of {target}",
                        "fisher": "the original's diagonal Fisher" if fisher else None}, "models": {}}
    for name, (model, _) in models.items():
        out["models"][name] = weight_report(model, original, fisher, x, torch.full((len(x),), target),
                                            points=a.weights_points, seed=a.seed)
    return out


def run_probe(models: dict, cfg: RunConfig, a: AttackConfig, target: int, device) -> dict:
    x, y = load_mnist(False, cfg.data_dir, cfg.train.limit)
    if a.probe_n:
        x, y = x[:a.probe_n], y[:a.probe_n]
    out = {"settings": {"folds": a.probe_folds, "classifier": "StandardScaler + LogisticRegression",
                        "metric": "ROC AUC, target vs rest", "chance": 0.5}, "models": {}}
    for name, (model, _) in models.items():
        out["models"][name] = probe(model, x, y, target, folds=a.probe_folds, seed=a.seed, device=device)
    return out


def summary(attacks: dict) -> dict:
    """One row per model: the headline number of each attack that was run; ``vs_retrain``: each number (but
    relearning's) divided by the retrained model's (None where either is missing or retrain's is 0); and
    ``relearn_vs_retrain``: relearning's ratios per k and lr with their minimum (``compare.grid_ratios``)."""
    rows: dict = {}
    for kind in KINDS:
        for name, r in attacks.get(kind, {}).get("models", {}).items():
            rows.setdefault(name, {}).update(headline(kind, r))
    ref = rows.get("retrain", {})
    for row in rows.values():
        row["vs_retrain"] = {k: (v / ref[k] if isinstance(v, (int, float)) and isinstance(ref.get(k), (int, float))
                                 and ref[k] else None) for k, v in row.items() if not k.startswith("relearn_")}
    relearned = attacks.get("relearn", {}).get("models", {})
    if "retrain" in relearned:
        for name, block in relearned.items():
            rows[name]["relearn_vs_retrain"] = grid_ratios(block, relearned["retrain"])
    return rows


def headline(kind: str, r: dict) -> dict:
    """The numbers of one attack on one model that the summary shows."""
    if kind == "relearn":
        out = {}
        for k, g in r.items():
            for lr, v in g["by_lr"].items():
                out.update({f"relearn_steps_{k}_lr{lr}": v["steps_to_threshold"], f"relearn_auc_{k}_lr{lr}": v["auc"]})
            out[f"relearn_best_lr_{k}"] = g["best_lr"]
        return out
    if kind == "retain":
        return {"retain_max_p": r["max_p"], "retain_final_p": r["final_p"]}
    if kind == "invert":
        return {f"invert_{v}_{m}_p": r[v][f"{m}_p"] for v in r for m in ("best", "mean")}
    if kind == "weights":
        return {"l2": r["l2"], "fisher_distance": r["fisher"], "barrier": r["barrier"]}
    return {"probe_auc_own_label": r["own_label"]["auc"], "probe_auc_all_labels": r["all_labels"]["auc"]}


def merge_results(run_dir: Path, new: dict) -> dict:
    """Re-read results.json, replace the attacks that were run, keep the others (those of the same ``target``
    only: blocks of another target are dropped), write it back atomically."""
    path = run_dir / "results.json"
    results = load_results(run_dir)
    old = results.get("attacks", {})
    if old.get("target") != new["target"]:
        old = {}
    attacks = {**old, **new}
    attacks["timing_s"] = {**old.get("timing_s", {}), **new.get("timing_s", {})}
    attacks["summary"] = summary(attacks)
    results["attacks"] = attacks
    write_json(path, results)
    return attacks


def run_attacks(run_dir: str | Path, kinds=KINDS, acfg: AttackConfig | None = None, names=MODELS,
                original: str | None = None, retrain: str | None = None, accelerator=None) -> dict | None:
    """Load the run and its models, run ``kinds`` on each, merge into results.json; returns the attacks block
    (None off the main process)."""
    run_dir, a = Path(run_dir), acfg or AttackConfig()
    cfg, results = load_run(run_dir)
    target = cfg.sa.forget[0] if a.target is None else a.target
    if target not in cfg.sa.forget:
        raise UsageError(f"--target {target} is not a forgotten class of this run ({cfg.sa.forget})")
    if "relearn" in kinds:
        check_draw(a, target, cfg.model.n_classes)
    accelerator = accelerator or attack_accelerator(cfg, run_dir)
    models = load_models(run_dir, cfg, results, accelerator, names, original, retrain)
    anchor = None
    if "weights" in kinds:  # the original and its Fisher (cached by the run; all processes take part)
        base = (models.get("original") or load_models(run_dir, cfg, results, accelerator, ("original",),
                                                      original)["original"])[0]
        anchor = (base, get_fisher(cfg, base.to(accelerator.device), results["baseline"]["key"], accelerator)[0])
    if not accelerator.is_main_process:
        return None
    device = accelerator.device
    paper = (get_paper_classifier(None, cfg.data_dir, limit=cfg.train.limit, device=device)[0]
             if {"relearn", "retain"} & set(kinds) else None)
    judges = Judges(get_evaluator(None, cfg.data_dir, limit=cfg.train.limit, device=device)[0], paper)
    new = {"target": target, "config": asdict(a), "sources": {k: v[1] for k, v in models.items()},
           "timing_s": {}}
    (run_dir / "attacks").mkdir(exist_ok=True)
    for kind in kinds:
        t0 = time.perf_counter()
        new[kind] = run_kind(kind, models, judges, cfg, a, target, device, run_dir, anchor)
        new["timing_s"][kind] = time.perf_counter() - t0
    return merge_results(run_dir, new)


def run_kind(kind: str, models: dict, judges: Judges, cfg: RunConfig, a: AttackConfig, target: int, device,
             run_dir: Path, anchor) -> dict:
    """One attack's block on every model (with its figure under ``run_dir/attacks``)."""
    if kind == "relearn":
        block = run_relearn(models, judges, cfg, a, target, device)
        relearn_figure(block, target, run_dir / "attacks" / "relearn_curve.png")
        return {**block, "curve_plot": "attacks/relearn_curve.png"}
    if kind == "retain":
        return run_retain(models, judges, cfg, a, target, device)
    if kind == "invert":
        return run_invert(models, judges.evaluator, a, target, device, run_dir / "attacks")
    if kind == "weights":
        return run_weights(models, *anchor, cfg, a, target)
    return run_probe(models, cfg, a, target, device)
