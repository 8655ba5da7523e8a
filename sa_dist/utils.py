"""Small shared pieces: the user-error types, config fields with help, atomic writes, the cache root, stable hashing."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import field
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: scripts print its message as one line on stderr and exit non-zero."""

    exit_code = 1


class UsageError(UserError):
    """A bad command-line argument or config value (exit code 2, like argparse)."""

    exit_code = 2


def arg(default=None, help: str = "", *, flag: str | tuple | None = None, factory=None, shown: str | None = None,
        **argparse_kwargs):
    """A config dataclass field with its one line of command-line help. ``flag``: the flag name(s) (default
    ``--field-name``; "" for a field without a flag); ``shown``: the default as --help prints it (default: the
    value); ``argparse_kwargs`` go to ``add_argument`` (``nargs``, ``type`` of list items)."""
    meta = {"help": help, "flag": flag, "shown": shown, "argparse": argparse_kwargs}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def cache_root() -> Path:
    """Where baselines, Fisher matrices, the evaluator and the laid-out MNIST live (``$SA_DIST_CACHE``)."""
    root = Path(os.environ.get("SA_DIST_CACHE", Path.home() / ".cache" / "sa_dist"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def stable_hash(obj) -> str:
    """A short hash of a JSON-able object, for cache keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are shared like any file the user writes
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path | str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
