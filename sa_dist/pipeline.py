"""The main job: baseline (cached) -> Fisher (cached) -> Selective Amnesia -> evaluation -> run directory."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from accelerate.utils import broadcast_object_list, set_seed

from .checkpoint import FORMAT_VERSION, load_checkpoint, read_metadata, save_checkpoint
from .config import RunConfig, save_config, validate
from .data import data_checksum, load_mnist, prepare_mnist
from .evaluate import compare
from .evaluator import get_evaluator
from .sa import selective_amnesia
from .train import make_accelerator
from .utils import UserError, atomic_write_text, cache_root, stable_hash, write_json


def quick_config(cfg: RunConfig) -> RunConfig:
    """``--quick``: a ~90 s run on a 2-core CPU that already shows forgetting."""
    return replace(cfg, quick=True, eval_samples=200, train=replace(cfg.train, epochs=2),
                   sa=replace(cfg.sa, n_fisher=5000, sa_epochs=3))


def baseline_key(cfg: RunConfig, exclude: tuple[int, ...] = ()) -> str:
    """Cache key: model and training config, mixed precision, data checksum, checkpoint format, excluded classes."""
    spec = {"model": asdict(cfg.model), "train": asdict(cfg.train), "mp": cfg.mixed_precision,
            "data": data_checksum(), "format": FORMAT_VERSION}
    if exclude:  # absent for the full baseline, so its key (and cache) is unchanged
        spec["exclude"] = sorted(set(exclude))
    return stable_hash(spec)


def baseline_path(key: str) -> Path:
    """Where the baseline cached under ``key`` lives."""
    return cache_root() / "baselines" / key / "baseline.safetensors"


def new_run_dir(cfg: RunConfig, run_dir: str | None, accelerator, resume: bool = False,
                finished: str = "results.json") -> Path:
    """The main process picks a fresh directory (never an existing run's) and tells the others.
    ``resume``: ``run_dir`` is an interrupted run being continued. ``finished``: the file a finished run leaves."""
    chosen = [None]
    if accelerator.is_main_process:
        try:
            chosen = [str(_fresh_dir(cfg, run_dir, resume, finished))]
        except UserError as e:
            chosen = [e]
    broadcast_object_list(chosen)  # every rank raises the same error, none waits forever
    if isinstance(chosen[0], UserError):
        raise chosen[0]
    return Path(chosen[0])


def _fresh_dir(cfg: RunConfig, run_dir: str | None, resume: bool = False, finished: str = "results.json") -> Path:
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        method = "" if cfg.sa.method == "sa" else f"{cfg.sa.method}-"
        base = Path("runs") / f"{cfg.model.arch}-{method}forget{'_'.join(map(str, cfg.sa.forget))}-{stamp}"
        path, i = base, 1
        while path.exists():
            path, i = Path(f"{base}-{i}"), i + 1
    else:
        path = Path(run_dir)
        if (path / finished).exists():
            raise UserError(f"--run-dir {path} already holds a finished run ({finished}); choose another")
        if (path / "state").exists() and not resume:
            raise UserError(f"--run-dir {path} holds an interrupted run; continue it with --resume {path} "
                            "or choose another")
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / ".write-test").touch()
        (path / ".write-test").unlink()
    except OSError as e:
        raise UserError(f"--run-dir {path} is not writable ({e.strerror})") from None
    return path


def get_baseline(cfg: RunConfig, accelerator, checkpoint: str | None = None, exclude: tuple[int, ...] = (),
                 ckpt=None):
    """(model, info): from ``checkpoint``, from the cache, or trained now (all processes) and cached.
    ``exclude``: train without those classes (the ``retrain`` reference), cached under its own key.
    ``ckpt``: the ``resume.Checkpointer`` of that training."""
    if checkpoint:
        model, meta = load_checkpoint(checkpoint, expect=cfg.model)
        key = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:16]
        return model, {"key": key, "seconds": None, "cached": True, "history": None}
    key = baseline_key(cfg, exclude)
    path = baseline_path(key)
    if path.is_file():
        model, meta = load_checkpoint(path, expect=cfg.model)
        return model, {"key": key, "seconds": float(meta["seconds"]), "cached": True,
                       "history": json.loads(meta["history"])}
    from .baseline import save_baseline, train_baseline

    model, history, seconds = train_baseline(cfg, accelerator, path.parent / "tensorboard", exclude, ckpt)
    if accelerator.is_main_process:
        save_baseline(path, model, history, seconds, cfg)
    accelerator.wait_for_everyone()
    return model, {"key": key, "seconds": seconds, "cached": False, "history": history}


def fisher_key(cfg: RunConfig, base_key: str) -> str:
    """Cache key of the Fisher: the baseline's key (config, data, format), samples, seed, batch, format."""
    return stable_hash({"baseline": base_key, "n": cfg.sa.n_fisher, "seed": cfg.train.seed,
                        "batch": cfg.sa.fisher_batch, "format": FORMAT_VERSION})


def get_fisher(cfg: RunConfig, model, base_key: str, accelerator):
    """(fisher, seconds, cached): the diagonal Fisher of the baseline, cached by baseline, samples and seed.
    ``seconds`` is what computing it took, also when it comes from the cache."""
    from .fisher import diag_fisher, load_fisher, save_fisher

    key = fisher_key(cfg, base_key)
    path = cache_root() / "fisher" / f"fisher-{key}.safetensors"
    if path.is_file():
        return load_fisher(path, model), float(read_metadata(path).get("seconds", "nan")), True
    t0 = time.perf_counter()
    fisher = diag_fisher(model.to(accelerator.device), cfg.sa.n_fisher, seed=cfg.train.seed,
                         batch=cfg.sa.fisher_batch, accelerator=accelerator)
    seconds = time.perf_counter() - t0
    if accelerator.is_main_process:
        save_fisher(path, fisher, {"n_samples": cfg.sa.n_fisher, "seed": cfg.train.seed, "baseline": base_key,
                                   "seconds": seconds})
    accelerator.wait_for_everyone()
    return fisher, seconds, False


def evaluate_run(cfg: RunConfig, before, after, device) -> tuple[dict, float]:
    """``before``/``after`` per-class metrics and the surrogate block (main process)."""
    t0 = time.perf_counter()
    evaluator, ev_info = get_evaluator(None, cfg.data_dir, limit=cfg.train.limit, device=device)
    x_test, y_test = load_mnist(False, cfg.data_dir, cfg.train.limit)
    out = {"evaluator": ev_info, **compare(before.to(device), after.to(device), evaluator, x_test, y_test,
                                           cfg.sa.forget, cfg.sa.surrogate, cfg.eval_samples, cfg.train.seed)}
    return out, time.perf_counter() - t0


def unlearn_from_config(cfg: RunConfig, original, fisher: dict, accelerator, log_dir=None, ckpt=None,
                        alpha: float = 1.0):
    """``selective_amnesia`` with every setting taken from ``cfg.sa`` (seeded): (unlearned model, history).
    ``ckpt``: the ``resume.Checkpointer`` of the SA loop. ``alpha`` weighs the surrogate term (0: ``replay_only``)."""
    s = cfg.sa
    set_seed(cfg.train.seed)
    return selective_amnesia(original, fisher, s.forget, accelerator, lam=s.lam, gamma=s.gamma,
                             sa_epochs=s.sa_epochs, lr=s.lr, batch=s.batch, n_replay=s.n_replay,
                             surrogate=s.surrogate, surrogate_batch=s.surrogate_batch, seed=cfg.train.seed,
                             log_dir=log_dir, config=asdict(cfg), checkpointer=ckpt, sync_bn=cfg.sync_bn,
                             reset_label=s.reset_label, alpha=alpha)


def write_outputs(run_dir: Path, results: dict, before, after, forget):
    """Checkpoint, figures (``results`` gains ``latent``), results.json, then report.html and report.md."""
    from .figures import figures_for_run
    from .report import build_report

    save_checkpoint(run_dir / "unlearned.safetensors", after, kind="unlearned",
                    extra={"forget": forget, "config": results["config"]})
    figures_for_run(run_dir, results, before, after, forget)
    write_json(run_dir / "results.json", results)
    build_report(run_dir)


def _resumed_checkpoint(run_dir, checkpoint: str | None) -> str | None:
    """The ``--checkpoint`` an interrupted run was started with (kept in ``checkpoint.txt``)."""
    saved = Path(run_dir) / "checkpoint.txt"
    saved = saved.read_text().strip() if saved.is_file() else None
    if checkpoint and saved and Path(checkpoint).resolve() != Path(saved):
        raise UserError(f"--resume {run_dir}: that run unlearns --checkpoint {saved}, not {checkpoint}")
    return checkpoint or saved


def run_unlearn(cfg: RunConfig, run_dir: str | None = None, checkpoint: str | None = None, accelerator=None,
                resume: bool = False):
    """The whole job under Accelerate with the method ``cfg.sa.method`` (``sa_dist.methods``); returns
    (results dict, run directory). Only the main process writes.
    ``resume``: continue the interrupted run in ``run_dir`` (baseline training or SA from their saved states)."""
    from .methods import Context, get_method
    from .resume import checkpointer, drop_state

    cfg = validate(quick_config(cfg) if cfg.quick else cfg)
    method = get_method(cfg.sa.method)
    cfg = method.configure(cfg)  # e.g. no_ewc: lam 0, so config.yaml and results.json say what ran
    checkpoint = _resumed_checkpoint(run_dir, checkpoint) if resume else checkpoint
    prepare_mnist(cfg.data_dir)  # bad data or checkpoint files cost one line before anything is written
    if checkpoint:
        load_checkpoint(checkpoint, expect=cfg.model)
    accelerator = accelerator or make_accelerator(mixed_precision=cfg.mixed_precision)
    out_dir = new_run_dir(cfg, run_dir, accelerator, resume)
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
        if checkpoint:  # --resume finds it here
            atomic_write_text(out_dir / "checkpoint.txt", str(Path(checkpoint).resolve()) + "\n")
    get_evaluator(accelerator, cfg.data_dir, limit=cfg.train.limit)  # trained once, before anything is timed
    original, base = get_baseline(cfg, accelerator, checkpoint, ckpt=checkpointer(accelerator, out_dir, "baseline"))
    fisher, fisher_s, fisher_cached = (get_fisher(cfg, original, base["key"], accelerator) if method.needs_fisher
                                       else (None, 0.0, None))
    t0 = time.perf_counter()
    out = method.unlearn(Context(cfg, original, fisher, accelerator, out_dir / "tensorboard",
                                 checkpointer(accelerator, out_dir, "sa")))
    unlearn_s = time.perf_counter() - t0 if out.seconds is None else out.seconds
    results = None
    if accelerator.is_main_process:
        device = accelerator.device
        metrics, eval_s = evaluate_run(cfg, original, out.model, device)
        h = out.history
        rows = h[::10] + (h[-1:] if (len(h) - 1) % 10 else [])  # every 10th step and the last
        results = {"config": asdict(cfg), "method": method.name, "processes": accelerator.num_processes, **metrics,
                   "baseline": {k: base[k] for k in ("key", "cached", "history")},
                   ("sa_history" if out.sa_terms else "method_history"): {"every": 10, "rows": rows},
                   "method_info": out.info,
                   "timing_s": {"baseline": base["seconds"], "fisher": fisher_s, "fisher_cached": fisher_cached,
                                "unlearn": unlearn_s, "unlearn_cached": out.cached, "evaluate": eval_s}}
        write_outputs(out_dir, results, original.cpu(), out.model.cpu(), cfg.sa.forget)
        drop_state(out_dir)
    accelerator.wait_for_everyone()
    return results, out_dir


def report_line(results: dict, run_dir) -> str:
    """A few lines for the terminal: forgetting, retention, cost, where the files are."""
    s, t = results["summary"], results["timing_s"]
    f = ", ".join(f"{k}: P {s['before']['forgotten_p_class'][k]:.3f} -> {v:.4f} "
                  f"(H {s['after']['forgotten_entropy'][k]:.2f})" for k, v in s["after"]["forgotten_p_class"].items())
    sur = results["surrogate"]["nelbo"]
    return (f"forgotten {f}; surrogate nELBO {sur['before']:.1f} -> {sur['after']:.1f} (floor {sur['floor']})\n"
            f"retained sample_acc {s['before']['retained_sample_acc']:.4f} -> {s['after']['retained_sample_acc']:.4f}, "
            f"test nELBO {s['before']['retained_test_nelbo']:.2f} -> {s['after']['retained_test_nelbo']:.2f}\n"
            f"seconds: baseline {t['baseline']}, fisher {t['fisher']:.1f}, SA {t['unlearn']:.1f}, "
            f"evaluate {t['evaluate']:.1f}\nresults: {run_dir}/results.json\nreport: {run_dir}/report.html")
