"""safetensors files, written atomically: model checkpoints that carry what is needed to rebuild the model, and
Fisher files keyed by parameter name."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load, save as st_save

from .models import ModelConfig, build_model, CVAE
from .utils import UserError, atomic_write_bytes

FORMAT_VERSION = 1  # bump when the layout of the tensors or the metadata changes


def save_tensors(path: Path | str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``tensors`` (moved to CPU, contiguous) with string metadata; temp file + rename. Main process only."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format_version": str(FORMAT_VERSION), **{k: v if isinstance(v, str) else json.dumps(v)
                                                       for k, v in meta.items()}}
    atomic_write_bytes(path, st_save(flat, metadata=meta))


def tensors_sha256(path: Path | str) -> str:
    """SHA-256 of a safetensors file's tensors alone (name, dtype, shape and bytes, in name order): two trainings
    that give the same weights give the same digest, whatever seconds or accuracy their metadata records."""
    tensors, _ = load_tensors(path, what="network file")
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.contiguous().reshape(-1)  # 1-d, so a 0-dim tensor (a step count) can be viewed as bytes
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def load_tensors(path: Path | str, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file; any problem is one ``UserError`` line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        with open(path, "rb") as f:
            blob = f.read()
        tensors = st_load(blob)
        meta = read_metadata(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} {path} is not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    version = int(meta.get("format_version", "0") or 0)
    if version > FORMAT_VERSION:
        raise UserError(f"{what} {path} has format version {version}; this sa_dist reads up to {FORMAT_VERSION}")
    if version < 1:
        raise UserError(f"{what} {path} has no sa_dist format version: not written by sa_dist")
    return tensors, meta


def read_metadata(path: Path | str) -> dict:
    """The string metadata of a safetensors file, without reading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def save_checkpoint(path: Path | str, model: torch.nn.Module, kind: str = "baseline", extra: dict | None = None):
    """The model's state_dict (weights and batch-norm buffers) plus its ``ModelConfig`` in the metadata."""
    meta = {"kind": kind, "model_config": asdict(model.cfg), **(extra or {})}
    save_tensors(path, model.state_dict(), meta)


def forgotten_classes(path: Path | str) -> list[int]:
    """The classes a checkpoint has already forgotten (the ``forget`` of an unlearned checkpoint, or the classes a
    cached ``retrain`` model was trained without; [] for a baseline), so a later deletion request keeps them
    forgotten."""
    _, meta = load_tensors(path)
    try:
        return [int(c) for c in json.loads(meta.get("forget", "[]"))]
    except (TypeError, ValueError, json.JSONDecodeError):
        raise UserError(f"checkpoint {path} has an unreadable 'forget' entry in its metadata") from None


def config_from_meta(meta: dict, path) -> ModelConfig:
    try:
        raw = json.loads(meta["model_config"])
        names = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in raw.items() if k in names})
    except (KeyError, TypeError, json.JSONDecodeError):
        raise UserError(f"checkpoint {path} has no model config in its metadata") from None


def load_checkpoint(path: Path | str, expect: ModelConfig | None = None) -> tuple[CVAE, dict]:
    """Rebuild the model a checkpoint describes (eval mode) and load its weights; ``expect`` checks arch, z_dim."""
    tensors, meta = load_tensors(path)
    cfg = config_from_meta(meta, path)
    if expect is not None:
        for name in ("arch", "z_dim"):
            if getattr(expect, name) != getattr(cfg, name):
                raise UserError(f"checkpoint {path} has {name}={getattr(cfg, name)}, "
                                f"but the run asks for {name}={getattr(expect, name)}")
    model = build_model(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not fit a {cfg.arch} cVAE: {str(e).splitlines()[0][:160]}") from None
    return model.eval(), meta


def save_fisher(path, fisher: dict[str, torch.Tensor], meta: dict) -> None:
    """Write the Fisher as float32 safetensors, keyed by parameter name, with ``meta`` (main process only)."""
    save_tensors(path, {k: v.float() for k, v in fisher.items()}, {"kind": "fisher", **meta})


def load_fisher(path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Read a Fisher file for ``model`` (unwrapped): float32 tensors on its device. A file whose keys or shapes
    differ from the model's parameters, or with non-finite values, is a one-line ``UserError``."""
    tensors, _ = load_tensors(path, what="Fisher file")
    params = dict(model.named_parameters())
    problems = []
    for label, names in (("missing", params.keys() - tensors.keys()), ("unexpected", tensors.keys() - params.keys())):
        if names:
            names = sorted(names)
            problems.append(f"{len(names)} {label} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    shapes = [f"{n} is {tuple(tensors[n].shape)}, not {tuple(p.shape)}"
              for n, p in params.items() if n in tensors and tensors[n].shape != p.shape]
    problems += shapes[:3]
    if problems:
        raise UserError(f"Fisher file {path} does not match the model: {'; '.join(problems)}")
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise UserError(f"Fisher file {path} has non-finite values")
    device = next(model.parameters()).device
    return {n: tensors[n].to(device, torch.float32) for n in params}
