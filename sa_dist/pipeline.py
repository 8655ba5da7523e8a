"""The jobs the scripts run, end to end. ``run_unlearn``: baseline (cached) -> Fisher (cached) -> the method
(Selective Amnesia by default) -> evaluation -> figures, results.json and the report in a fresh run directory.
``run_baseline``: one trained cVAE in a run directory. Only the main process writes."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

from .analysis.figures import environment, figures_for_run
from .analysis.report import build_report
from .cache import baseline_path, get_baseline, get_fisher, save_baseline
from .checkpoint import forgotten_classes, load_checkpoint, save_checkpoint
from .config import RunConfig, apply_quick, save_config, validate, with_values
from .data import load_mnist, prepare_mnist
from .evaluation.evaluator import get_evaluator
from .evaluation.metrics import class_metrics, compare
from .evaluation.paper import get_paper_classifier, paper_protocol
from .methods import Context, get_method
from .resume import checkpointer, drop_state
from .runs import discard_on_failure, has_content, load_results, new_run_dir, resumed_checkpoint
from .runtime import make_accelerator, memory_guard
from .surrogate import z_blind_nelbo
from .train import train_baseline
from .utils import UsageError, UserError, atomic_write_text, write_json


def evaluate_run(cfg: RunConfig, before, after, device) -> tuple[dict, float]:
    """``before``/``after`` per-class metrics and the surrogate block, and the seconds they took (main process)."""
    t0 = time.perf_counter()
    evaluator, ev_info = get_evaluator(None, cfg.data_dir, limit=cfg.train.limit, device=device)
    x_test, y_test = load_mnist(False, cfg.data_dir, cfg.train.limit)
    with memory_guard("evaluating", "lower --eval-samples"):
        out = {"evaluator": ev_info, **compare(before.to(device), after.to(device), evaluator, x_test, y_test,
                                               cfg.sa.forget, cfg.sa.surrogate, cfg.eval_samples, cfg.train.seed)}
        if cfg.protocol == "paper":
            classifier, info = get_paper_classifier(None, cfg.data_dir, limit=cfg.train.limit, device=device)
            out["paper_protocol"] = paper_protocol(before, after, classifier, info, cfg.sa.forget,
                                                   seed=cfg.train.seed)
    return out, time.perf_counter() - t0


def write_outputs(run_dir: Path, results: dict, before, after, forget):
    """Checkpoint, figures (``results`` gains ``latent``) unless the config says ``figures: false``, results.json,
    then report.html and report.md."""
    save_checkpoint(run_dir / "unlearned.safetensors", after, kind="unlearned",
                    extra={"forget": forget, "config": results["config"]})
    draw = results["config"].get("figures", True)
    if draw:
        figures_for_run(run_dir, results, before, after, forget)
    else:
        results["environment"] = environment()
    write_json(run_dir / "results.json", results)
    build_report(run_dir, draw=draw)


def _start(cfg: RunConfig, run_dir, checkpoint, accelerator, resume: bool):
    """Check the inputs (one line each, nothing written on a bad one), then make the run directory with its
    config.yaml (and checkpoint.txt)."""
    checkpoint = resumed_checkpoint(run_dir, checkpoint) if resume else checkpoint
    prepare_mnist(cfg.data_dir)
    if checkpoint:
        load_checkpoint(checkpoint, expect=cfg.model)
    accelerator = accelerator or make_accelerator(mixed_precision=cfg.mixed_precision, threads=cfg.threads)
    out_dir = new_run_dir(cfg, run_dir, accelerator, resume)
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
        if checkpoint:  # --resume finds it here
            atomic_write_text(out_dir / "checkpoint.txt", str(Path(checkpoint).resolve()) + "\n")
    return checkpoint, accelerator, out_dir


def with_earlier_requests(cfg: RunConfig, checkpoint: str | None) -> tuple[RunConfig, list[int]]:
    """A deletion request on a model that already forgot classes (``checkpoint`` an unlearned checkpoint): the
    run forgets the earlier classes and the new ones (replay keeps only classes never forgotten, the surrogate
    covers them all). Returns the config and the earlier classes."""
    earlier = forgotten_classes(checkpoint) if checkpoint else []
    again = sorted(set(earlier) & set(cfg.sa.forget))
    if again:
        raise UsageError(f"--forget {', '.join(map(str, again))}: --checkpoint {checkpoint} has forgotten "
                         f"{'it' if len(again) == 1 else 'them'} already (it forgot {earlier})")
    return (with_values(cfg, {"sa.forget": earlier + list(cfg.sa.forget)}) if earlier else cfg), earlier


def run_unlearn(cfg: RunConfig, run_dir: str | None = None, checkpoint: str | None = None, accelerator=None,
                resume: bool = False):
    """The whole job under Accelerate with the method ``cfg.sa.method`` (``sa_dist.methods``); returns
    (results dict, run directory); results is None off the main process. ``checkpoint``: unlearn this model
    instead of the cached baseline; if it is an unlearned one, its forgotten classes stay forgotten.
    ``resume``: continue the interrupted run in ``run_dir`` (baseline training or SA from their saved states)."""
    if checkpoint and not resume:  # a resumed run's config.yaml holds every forgotten class already
        cfg, _ = with_earlier_requests(cfg, checkpoint)
    cfg = validate(apply_quick(cfg))
    method = get_method(cfg.sa.method)
    cfg = method.configure(cfg)  # e.g. no_ewc: lam 0, so config.yaml and results.json say what ran
    keep = resume or has_content(run_dir)
    checkpoint, accelerator, out_dir = _start(cfg, run_dir, checkpoint, accelerator, resume)
    with discard_on_failure(out_dir, accelerator, keep):  # a run that fails before its first result leaves no folder
        get_evaluator(accelerator, cfg.data_dir, limit=cfg.train.limit)  # cached before anything is timed
        if cfg.protocol == "paper":
            get_paper_classifier(accelerator, cfg.data_dir, limit=cfg.train.limit)
        results = _unlearn(cfg, method, checkpoint, accelerator, out_dir)
    accelerator.wait_for_everyone()
    return results, out_dir


def _unlearn(cfg: RunConfig, method, checkpoint: str | None, accelerator, out_dir: Path) -> dict | None:
    """Baseline, Fisher, the method, and on the main process its evaluation and outputs: results.json's dict."""
    earlier = forgotten_classes(checkpoint) if checkpoint else []
    original, base = get_baseline(cfg, accelerator, checkpoint, ckpt=checkpointer(accelerator, out_dir, "baseline"))
    fisher, fisher_s, fisher_cached = (get_fisher(cfg, original, base["key"], accelerator) if method.needs_fisher
                                       else (None, 0.0, None))
    t0 = time.perf_counter()
    with memory_guard("unlearning", "lower --surrogate-batch or sa.batch (replay samples per step, in a --config "
                      "file), --z-dim or --width"):
        out = method.unlearn(Context(cfg, original, fisher, accelerator, out_dir / "tensorboard",
                                     checkpointer(accelerator, out_dir, "sa")))
    unlearn_s = time.perf_counter() - t0 if out.seconds is None else out.seconds
    if not accelerator.is_main_process:
        return None
    metrics, eval_s = evaluate_run(cfg, original, out.model, accelerator.device)
    h = out.history
    rows = h[::10] + (h[-1:] if (len(h) - 1) % 10 else [])  # every 10th step and the last
    results = {"config": asdict(cfg), "method": method.name, "processes": accelerator.num_processes,
               "forget_request": [c for c in cfg.sa.forget if c not in earlier], "forgotten_before": earlier,
               **metrics,
               "baseline": {k: base[k] for k in ("key", "cached", "history")},
               ("sa_history" if out.sa_terms else "method_history"): {"every": 10, "rows": rows},
               "method_info": out.info,
               "timing_s": {"baseline": base["seconds"], "fisher": fisher_s, "fisher_cached": fisher_cached,
                            "unlearn": unlearn_s, "unlearn_cached": out.cached, "evaluate": eval_s}}
    write_outputs(out_dir, results, original.cpu(), out.model.cpu(), cfg.sa.forget)
    drop_state(out_dir)
    return results


def run_baseline(cfg: RunConfig, run_dir: str | None = None, accelerator=None,
                 resume: bool = False) -> tuple[dict | None, Path]:
    """Train, save ``baseline.safetensors``, ``config.yaml``, ``metrics.json`` (main process) and TensorBoard logs.
    ``resume``: continue the interrupted run in ``run_dir`` from its saved state."""
    prepare_mnist(cfg.data_dir)  # a bad data file costs one line before anything is written
    accelerator = accelerator or make_accelerator(mixed_precision=cfg.mixed_precision, threads=cfg.threads)
    keep = resume or has_content(run_dir)
    out = new_run_dir(cfg, run_dir, accelerator, resume, finished="baseline.safetensors")
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    with discard_on_failure(out, accelerator, keep, finished="baseline.safetensors"):
        model, history, seconds = train_baseline(cfg, accelerator, out / "tensorboard",
                                                 checkpointer=checkpointer(accelerator, out, "baseline"))
    metrics = None
    if accelerator.is_main_process:
        save_baseline(out / "baseline.safetensors", model, history, seconds, cfg)
        evaluator, ev_info = get_evaluator(None, cfg.data_dir, limit=cfg.train.limit)
        x, y = load_mnist(False, cfg.data_dir, cfg.train.limit)
        metrics = {"config": asdict(cfg), "processes": accelerator.num_processes, "seconds": seconds,
                   "seconds_per_epoch": seconds / cfg.train.epochs, "history": history, "evaluator": ev_info,
                   **class_metrics(model, evaluator, x, y, cfg.eval_samples, cfg.train.seed)}
        write_json(out / "metrics.json", metrics)
        pc = metrics["per_class"]
        accelerator.print(f"test nELBO {history[-1]['test_nelbo']:.2f}, mean sample_acc "
                          f"{sum(v['sample_acc'] for v in pc.values()) / len(pc):.4f}, {seconds:.0f} s; "
                          f"wrote {out}/baseline.safetensors")
        drop_state(out)
    accelerator.wait_for_everyone()
    return metrics, out


def prepare_cache(cfg: RunConfig, needs_fisher: bool, checkpoint: str | None = None, accelerator=None) -> dict:
    """Fill the cache a series of runs shares: the evaluator (and with ``--protocol paper`` the paper classifier),
    the baseline and (``needs_fisher``) its Fisher. Run once before them (the SLURM sweep's dependency job); returns
    what was cached or computed."""
    accelerator = accelerator or make_accelerator(mixed_precision=cfg.mixed_precision, threads=cfg.threads)
    get_evaluator(accelerator, cfg.data_dir, limit=cfg.train.limit)
    if cfg.protocol == "paper":
        get_paper_classifier(accelerator, cfg.data_dir, limit=cfg.train.limit)
    model, base = get_baseline(cfg, accelerator, checkpoint)
    out = {"baseline": base["key"], "baseline_cached": base["cached"]}
    if needs_fisher:
        _, seconds, cached = get_fisher(cfg, model, base["key"], accelerator)
        out.update(fisher_seconds=seconds, fisher_cached=cached)
    return out


def run_many(jobs: list[tuple[RunConfig, Path]], checkpoint: str | None = None, log=print) -> list:
    """``run_unlearn`` for every ``(config, run directory)`` whose run has not finished, one after the other in
    this process (one accelerator, one cached baseline). A run that fails is reported and the others still run;
    returns the (run directory, error) failures."""
    accelerator, failures = None, []
    for i, (cfg, run_dir) in enumerate(jobs):
        tag = f"[{i + 1}/{len(jobs)}] {run_dir}"
        if (Path(run_dir) / "results.json").exists():
            log(f"{tag}: finished before, kept")
            continue
        accelerator = accelerator or make_accelerator(mixed_precision=cfg.mixed_precision, threads=cfg.threads)
        log(f"{tag} (load average {os.getloadavg()[0]:.2f})")
        try:
            t0 = time.perf_counter()
            run_unlearn(cfg, run_dir=str(run_dir), checkpoint=checkpoint, accelerator=accelerator)
            log(f"{tag}: done in {time.perf_counter() - t0:.0f} s wall (load average {os.getloadavg()[0]:.2f})")
        except UserError as e:
            log(f"{tag} failed: {e}")
            failures.append((run_dir, str(e)))
    return failures


def redraw_run(run_dir: str | Path, baseline: str | Path | None = None) -> list[Path]:
    """Redraw a finished run's figures from ``unlearned.safetensors`` and its baseline (``baseline``, else the
    cached one of results.json's ``baseline.key``), and rewrite its results.json with the new ``latent`` block."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    base = Path(baseline) if baseline else baseline_path(str((results.get("baseline") or {}).get("key")))
    for p in (base, run_dir / "unlearned.safetensors"):
        if not p.is_file():
            raise UserError(f"{p} not found: redrawing needs the unlearned model and its baseline (--baseline FILE)")
    before, _ = load_checkpoint(base)
    after, _ = load_checkpoint(run_dir / "unlearned.safetensors", expect=before.cfg)
    paths = figures_for_run(run_dir, results, before, after, results["forget_classes"])
    write_json(run_dir / "results.json", results)
    return paths


def report_line(results: dict, run_dir) -> str:
    """A few lines for the terminal: forgetting, retention, (``--protocol paper``) the official numbers, cost,
    where the files are."""
    s, t = results["summary"], results["timing_s"]
    paper = "".join(f"paper protocol, class {c}: entropy {v['after']['entropy']:.2f}, P(y={c}) "
                    f"{v['after']['p_forgotten']:.4f} (official README, digit 0: 2.19, 0.058)\n"
                    for c, v in (results.get("paper_protocol") or {}).get("per_class", {}).items())
    rej = s["after"].get("forgotten_p_reject") or {}
    f = ", ".join(f"{k}: P {s['before']['forgotten_p_class'][k]:.3f} -> {v:.4f} "
                  f"(H {s['after']['forgotten_entropy'][k]:.2f}"
                  + (f", P(reject) {rej[k]:.3f}" if rej.get(k) is not None else "") + ")"
                  for k, v in s["after"]["forgotten_p_class"].items())
    before = results.get("forgotten_before")
    request = (f"this request forgot {', '.join(map(str, results['forget_request']))}; forgotten before (by "
               f"--checkpoint): {', '.join(map(str, before))}, kept forgotten\n") if before else ""
    sur = results["surrogate"]["nelbo"]
    z_blind = z_blind_nelbo(sur)
    ref = "" if z_blind is None else f" (a decoder blind to z: {z_blind:.1f})"
    return (f"{request}forgotten {f}; surrogate nELBO {sur['before']:.1f} -> {sur['after']:.1f}{ref}\n"
            f"retained sample_acc {s['before']['retained_sample_acc']:.4f} -> {s['after']['retained_sample_acc']:.4f}, "
            f"test nELBO {s['before']['retained_test_nelbo']:.2f} -> {s['after']['retained_test_nelbo']:.2f}\n"
            f"{paper}seconds: baseline {t['baseline']}, fisher {t['fisher']:.1f}, SA {t['unlearn']:.1f}, "
            f"evaluate {t['evaluate']:.1f}\nresults: {run_dir}/results.json\nreport: {run_dir}/report.html")
