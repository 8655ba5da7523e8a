"""Is it really forgotten? ``scripts/attack.py``: the attacks on a finished run's original, unlearned and ``retrain``
models, side by side, into ``DIR/results.json`` under ``attacks`` (merged, rewritten atomically by the main process)
and figures under ``DIR/attacks/``. Every headline number is also given as a ratio to the retrained model's
(``summary``, ``vs_retrain``). The ``run_*`` functions take any ``{name: (model, source)}``, so the robustness
benchmark attacks more models with them."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from ..analysis.plots import image_grid, save_png, subplots
from ..cache import baseline_key, get_baseline, get_fisher
from ..checkpoint import load_checkpoint
from ..config import RunConfig, load_config
from ..data import load_mnist
from ..evaluation.evaluator import get_evaluator
from ..runs import load_results
from ..runtime import make_accelerator
from ..utils import UsageError, UserError, arg, write_json
from .invert import invert
from .probe import probe
from .relearn import relearn_grid
from .retain import retain_relearn
from .weights import weight_report

KINDS = ("relearn", "retain", "invert", "probe", "weights")  # scripts/attack.py --kind
INVERSIONS = {"free": ("free", False), "plausible": ("free", True), "simplex": ("simplex", False),
              "onehot": ("onehot", False)}  # variant: (label mode, with the plausibility penalty)
MODELS = ("original", "unlearned", "retrain")  # attacked side by side


@dataclass
class AttackConfig:
    target: Optional[int] = arg(None, "forgotten class to attack", shown="the run's first")
    relearn_k: list = arg(help="real training images of the class per fine-tune", factory=lambda: [10, 100],
                          nargs="+", type=int)
    relearn_steps: int = arg(500, "most fine-tuning steps (the k images as one batch per step)")
    relearn_lr: list = arg(help="Adam lrs of the fine-tune: each is tried, the attacker's best is reported",
                           factory=lambda: [3e-4, 3e-3], nargs="+", type=float)  # the benchmark tries more
    relearn_samples: int = arg(1000, "samples of the target label scored at each scheduled step")
    threshold: float = arg(0.5, "relearned once mean P(y=target) reaches this", flag="")
    retain_steps: int = arg(100, "fine-tuning steps on retained-class images only (the retain attack)")
    retain_batch: int = arg(100, "retained-class images per step of the retain attack")
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


def run_relearn(models: dict, evaluator, cfg: RunConfig, a: AttackConfig, target: int, device) -> dict:
    out = {"settings": {"k": list(a.relearn_k), "max_steps": a.relearn_steps, "lr": list(a.relearn_lr),
                        "optimizer": "Adam", "samples": a.relearn_samples, "threshold": a.threshold,
                        "scored": "schedule", "stops": "at the first scored step with P >= threshold",
                        "best": "the lr with the fewest steps (the attacker's choice)"}, "models": {}}
    images = {k: target_images(cfg, target, k, a.seed) for k in a.relearn_k}  # the same for every model
    for name, (model, _) in models.items():
        out["models"][name] = {f"k{k}": relearn_grid(model, evaluator, images[k], target, a.relearn_lr,
                                                     steps=a.relearn_steps, n_samples=a.relearn_samples,
                                                     threshold=a.threshold, seed=a.seed, device=device)
                               for k in a.relearn_k}
    return out


def run_retain(models: dict, evaluator, cfg: RunConfig, a: AttackConfig, target: int, device) -> dict:
    x, y = load_mnist(True, cfg.data_dir, cfg.train.limit)
    lr = a.retain_lr or cfg.train.lr
    out = {"settings": {"steps": a.retain_steps, "batch": a.retain_batch, "lr": lr, "optimizer": "Adam",
                        "data": "real training images of every class but the target", "samples": a.relearn_samples},
           "models": {}}
    for name, (model, _) in models.items():
        out["models"][name] = retain_relearn(model, evaluator, x, y, target, steps=a.retain_steps,
                                             batch=a.retain_batch, lr=lr, n_samples=a.relearn_samples, seed=a.seed,
                                             device=device)
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
        invert_figure(grids, out["models"], target, out_dir / "invert_best.png")
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
    """One row per model: the headline number of each attack that was run, and ``vs_retrain``: each number
    divided by the retrained model's (None where either is missing or retrain's is 0)."""
    rows: dict = {}
    for kind in KINDS:
        for name, r in attacks.get(kind, {}).get("models", {}).items():
            rows.setdefault(name, {}).update(headline(kind, r))
    ref = rows.get("retrain", {})
    for row in rows.values():
        row["vs_retrain"] = {k: (v / ref[k] if isinstance(v, (int, float)) and isinstance(ref.get(k), (int, float))
                                 and ref[k] else None) for k, v in row.items()}
    return rows


def headline(kind: str, r: dict) -> dict:
    """The numbers of one attack on one model that the summary shows."""
    if kind == "relearn":
        out = {f"relearn_steps_{k}": v["steps_to_threshold"] for k, v in r.items()}
        out.update({f"relearn_best_lr_{k}": v.get("best_lr") for k, v in r.items()})
        return out
    if kind == "retain":
        return {"retain_max_p": r["max_p"], "retain_final_p": r["final_p"]}
    if kind == "invert":
        return {f"invert_{v}_{m}_p": r[v][f"{m}_p"] for v in r for m in ("best", "mean")}
    if kind == "weights":
        return {"l2": r["l2"], "fisher_distance": r["fisher"], "barrier": r["barrier"]}
    return {"probe_auc_own_label": r["own_label"]["auc"], "probe_auc_all_labels": r["all_labels"]["auc"]}


def merge_results(run_dir: Path, new: dict) -> dict:
    """Re-read results.json, replace the attacks that were run, keep the others, write it back atomically."""
    path = run_dir / "results.json"
    results = load_results(run_dir)
    attacks = {**results.get("attacks", {}), **new}
    attacks["timing_s"] = {**results.get("attacks", {}).get("timing_s", {}), **new.get("timing_s", {})}
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
    accelerator = accelerator or make_accelerator(mixed_precision="no", project_dir=str(run_dir),
                                                  threads=torch.get_num_threads())  # the caller's (attack --threads)
    models = load_models(run_dir, cfg, results, accelerator, names, original, retrain)
    anchor = None
    if "weights" in kinds:  # the original and its Fisher (cached by the run; all processes take part)
        base = (models.get("original") or load_models(run_dir, cfg, results, accelerator, ("original",),
                                                      original)["original"])[0]
        anchor = (base, get_fisher(cfg, base.to(accelerator.device), results["baseline"]["key"], accelerator)[0])
    if not accelerator.is_main_process:
        return None
    device = accelerator.device
    evaluator, _ = get_evaluator(None, cfg.data_dir, limit=cfg.train.limit, device=device)
    new = {"target": target, "config": asdict(a), "sources": {k: v[1] for k, v in models.items()},
           "timing_s": {}}
    (run_dir / "attacks").mkdir(exist_ok=True)
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "relearn":
            new[kind] = run_relearn(models, evaluator, cfg, a, target, device)
            relearn_figure(new[kind], target, run_dir / "attacks" / "relearn_curve.png")
            new[kind]["curve_plot"] = "attacks/relearn_curve.png"
        elif kind == "retain":
            new[kind] = run_retain(models, evaluator, cfg, a, target, device)
        elif kind == "invert":
            new[kind] = run_invert(models, evaluator, a, target, device, run_dir / "attacks")
        elif kind == "weights":
            new[kind] = run_weights(models, *anchor, cfg, a, target)
        else:
            new[kind] = run_probe(models, cfg, a, target, device)
        new["timing_s"][kind] = time.perf_counter() - t0
    return merge_results(run_dir, new)


def relearn_figure(block: dict, target: int, path: Path):
    ks = block["settings"]["k"]
    fig, axes = subplots(1, len(ks), figsize=(4.5 * len(ks), 3.4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        for name, r in block["models"].items():
            cur = r[f"k{k}"]["curve"]
            ax.plot(cur["step"], cur["p"], marker=".", label=name)
        ax.axhline(block["settings"]["threshold"], color="grey", ls="--", lw=1)
        ax.set(title=f"relearning on k={k} real {target}s", xlabel="fine-tuning step",
               ylabel=f"mean P(y={target})", ylim=(-0.02, 1.02))
        ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def invert_figure(grids: dict, numbers: dict, target: int, path: Path):
    names, variants = list(numbers), list(INVERSIONS)
    fig, axes = subplots(len(variants), len(names), figsize=(3.2 * len(names), 3.8 * len(variants)), squeeze=False)
    for i, var in enumerate(variants):
        for j, name in enumerate(names):
            ax, r = axes[i][j], numbers[name][var]
            ax.imshow(image_grid(grids[(name, var)], 4), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name}, {var}\nbest P {r['best_p']:.3f}, mean {r['mean_p']:.3f}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"condition inversion: best images for y={target}")
    fig.tight_layout(h_pad=1.5)
    save_png(fig, path)
