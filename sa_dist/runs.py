"""Run directories: a fresh one per run (a finished run is never overwritten), the checks of a resumed one, and
reading a finished run's results.json."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from accelerate.utils import broadcast_object_list

from .utils import UserError

RESULTS = "results.json"  # the file a finished unlearning run leaves


def new_run_dir(cfg, run_dir: str | None, accelerator, resume: bool = False, finished: str = RESULTS) -> Path:
    """The main process picks a fresh directory (never an existing run's) and tells the others.
    ``resume``: ``run_dir`` is an interrupted run being continued. ``finished``: the file a finished run leaves."""
    chosen = [None]
    if accelerator.is_main_process:
        try:
            chosen = [str(fresh_dir(cfg, run_dir, resume, finished))]
        except UserError as e:
            chosen = [e]
    broadcast_object_list(chosen)  # every rank raises the same error, none waits forever
    if isinstance(chosen[0], UserError):
        raise chosen[0]
    return Path(chosen[0])


def has_content(run_dir: str | Path | None) -> bool:
    """``run_dir`` exists and holds something (a folder the user had: never removed by ``discard_on_failure``)."""
    return run_dir is not None and Path(run_dir).is_dir() and any(Path(run_dir).iterdir())


@contextmanager
def discard_on_failure(run_dir: Path, accelerator, keep: bool, finished: str = RESULTS):
    """A run that fails before its first result (a resumable state or ``finished``) leaves no run directory: the
    main process removes the half-made one, unless ``keep`` (it held something before the run)."""
    try:
        yield
    except BaseException:
        if (accelerator.is_main_process and not keep and not (run_dir / "state").exists()
                and not (run_dir / finished).exists()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def default_name(cfg) -> str:
    """``<arch>-[<method>-]forget<classes>``: the run directory's name before its time stamp."""
    method = "" if cfg.sa.method == "sa" else f"{cfg.sa.method}-"
    return f"{cfg.model.arch}-{method}forget{'_'.join(map(str, cfg.sa.forget))}"


def fresh_dir(cfg, run_dir: str | None, resume: bool = False, finished: str = RESULTS) -> Path:
    """``run_dir`` (refused if it holds a finished or an interrupted run) or ``runs/<name>-<time>``, created and
    checked writable."""
    if run_dir is None:
        base = Path("runs") / f"{default_name(cfg)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
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


def resumed_checkpoint(run_dir, checkpoint: str | None) -> str | None:
    """The ``--checkpoint`` an interrupted run was started with (kept in ``checkpoint.txt``)."""
    saved = Path(run_dir) / "checkpoint.txt"
    saved = saved.read_text().strip() if saved.is_file() else None
    if checkpoint and saved and Path(checkpoint).resolve() != Path(saved):
        raise UserError(f"--resume {run_dir}: that run unlearns --checkpoint {saved}, not {checkpoint}")
    return checkpoint or saved


def load_results(run_dir: str | Path) -> dict:
    """A finished run's results.json; a missing or broken one is a one-line ``UserError``."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise UserError(f"{run_dir} holds no results.json (is it a run directory of scripts/unlearn.py?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
