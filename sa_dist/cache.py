"""The cache of what runs share (``$SA_DIST_CACHE``): baselines theta* (and models retrained without classes) and
their diagonal Fisher, each keyed by everything that shapes it, so a changed config never reuses a stale entry.
Whether an entry is there is decided by the main process for all (``cached_everywhere``); a missing entry is computed
by all processes and written by the main one."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from .checkpoint import FORMAT_VERSION, load_checkpoint, load_fisher, read_metadata, save_checkpoint, save_fisher
from .data import data_checksum
from .fisher import diag_fisher
from .runtime import main_decides, memory_guard
from .train import train_baseline
from .utils import UserError, cache_root, stable_hash


def cached_everywhere(accelerator, path: Path) -> bool:
    """Whether the cache entry ``path`` is there, as the main process sees it, on every process: all ranks then load
    it, or all compute it together (a rank that saw otherwise would leave the others waiting in a collective)."""
    return bool(main_decides(accelerator, path.is_file() if accelerator.is_main_process else None))


def baseline_key(cfg, exclude: tuple[int, ...] = ()) -> str:
    """Cache key: model and training config, mixed precision, data checksum, checkpoint format, excluded classes."""
    spec = {"model": asdict(cfg.model), "train": asdict(cfg.train), "mp": cfg.mixed_precision,
            "data": data_checksum(), "format": FORMAT_VERSION}
    if exclude:  # absent for the full baseline, so its key (and cache) is unchanged
        spec["exclude"] = sorted(set(exclude))
    return stable_hash(spec)


def baseline_path(key: str) -> Path:
    """Where the baseline cached under ``key`` lives."""
    return cache_root() / "baselines" / key / "baseline.safetensors"


def save_baseline(path: Path, model, history: list, seconds: float, cfg, exclude: tuple[int, ...] = ()) -> None:
    """The checkpoint with its training seconds, history and run config in the metadata (main process). A model
    trained without classes (``exclude``) records them as ``forget``, the classes it never learned: used as
    ``--checkpoint``, it keeps them forgotten (``checkpoint.forgotten_classes``)."""
    extra = {"seconds": seconds, "history": history, "config": asdict(cfg)}
    if exclude:
        extra["forget"] = sorted(set(exclude))
    save_checkpoint(path, model, extra=extra)


def get_baseline(cfg, accelerator, checkpoint: str | None = None, exclude: tuple[int, ...] = (), ckpt=None):
    """(model, info) for the ``RunConfig`` ``cfg``: from ``checkpoint``, from the cache, or trained now (all
    processes) and cached. ``exclude``: train without those classes (the ``retrain`` reference), cached under its
    own key. ``ckpt``: the ``resume.Checkpointer`` of that training."""
    if checkpoint:
        model, _ = load_checkpoint(checkpoint, expect=cfg.model)
        key = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:16]
        return model, {"key": key, "seconds": None, "cached": True, "history": None}
    key = baseline_key(cfg, exclude)
    path = baseline_path(key)
    if cached_everywhere(accelerator, path):
        model, meta = load_checkpoint(path, expect=cfg.model)
        history, seconds = json.loads(meta["history"]), float(meta["seconds"])
        if exclude and "forget" not in meta and accelerator.is_main_process:  # cached before it recorded them
            save_baseline(path, model, history, seconds, cfg, exclude)
        return model, {"key": key, "seconds": seconds, "cached": True, "history": history}
    check_precision(cfg, accelerator, key, exclude)
    model, history, seconds = train_baseline(cfg, accelerator, path.parent / "tensorboard", exclude, ckpt)
    if accelerator.is_main_process:
        save_baseline(path, model, history, seconds, cfg, exclude)
    accelerator.wait_for_everyone()
    return model, {"key": key, "seconds": seconds, "cached": False, "history": history}


def check_precision(cfg, accelerator, key: str, exclude: tuple[int, ...]) -> None:
    """A model trained now is cached under a key that names ``cfg.mixed_precision``: refuse (one line) to train it
    with an accelerator of another precision, which would store, say, a float32 model under a bf16 key."""
    runs = getattr(accelerator, "mixed_precision", "no")
    if runs != cfg.mixed_precision:
        what = f"the model retrained without {sorted(set(exclude))}" if exclude else "the baseline"
        raise UserError(f"{what} (cache key {key}) is not cached and must be trained in mixed precision "
                        f"{cfg.mixed_precision!r}, but this process runs {runs!r} (fp16 needs a GPU): train it "
                        f"where {cfg.mixed_precision!r} runs, or pass the model as a checkpoint")


def fisher_key(cfg, base_key: str) -> str:
    """Cache key of the Fisher: the baseline's key (config, data, format), samples, seed, batch, format."""
    return stable_hash({"baseline": base_key, "n": cfg.sa.n_fisher, "seed": cfg.train.seed,
                        "batch": cfg.sa.fisher_batch, "format": FORMAT_VERSION})


def fisher_path(key: str) -> Path:
    return cache_root() / "fisher" / f"fisher-{key}.safetensors"


def get_fisher(cfg, model, base_key: str, accelerator):
    """(fisher, seconds, cached): the diagonal Fisher of the baseline, cached by baseline, samples and seed.
    ``seconds`` is what computing it took, also when it comes from the cache."""
    path = fisher_path(fisher_key(cfg, base_key))
    if cached_everywhere(accelerator, path):
        return load_fisher(path, model), float(read_metadata(path).get("seconds", "nan")), True
    t0 = time.perf_counter()
    with memory_guard("computing the Fisher", f"lower sa.fisher_batch ({cfg.sa.fisher_batch} samples per backward, "
                      "in a --config file), --z-dim or --width"):
        fisher = diag_fisher(model.to(accelerator.device), cfg.sa.n_fisher, seed=cfg.train.seed,
                             batch=cfg.sa.fisher_batch, accelerator=accelerator)
    seconds = time.perf_counter() - t0
    if accelerator.is_main_process:
        save_fisher(path, fisher, {"n_samples": cfg.sa.n_fisher, "seed": cfg.train.seed, "baseline": base_key,
                                   "seconds": seconds})
    accelerator.wait_for_everyone()
    return fisher, seconds, False
