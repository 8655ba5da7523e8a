"""Interruption and resume for the training loops (baseline and SA), plus the fault hook the tests use.

A ``Checkpointer`` is handed to ``train.train_vae`` and ``sa.selective_amnesia``. While a loop runs, SIGINT and
SIGTERM only raise a flag; after the current step every process agrees on it, the state is saved with
``accelerator.save_state`` (model, optimizer, every process's RNG) plus ``meta.json`` (step, history), and the run
stops with one line saying how to continue (``--resume DIR``). The state is also saved every ``every`` steps, so a
NaN/Inf loss or a dead process leaves the last good one behind.

A state directory is written as ``NAME.partial`` and renamed into place once complete (the previous one is kept
as ``NAME.old`` during the swap), so a kill at any moment never leaves a state that looks complete but is not.
Resuming replays the data loaders' shuffles up to the saved step (no data is computed on) and then loads the state,
so a resumed run takes exactly the steps an uninterrupted one would: same seed, same numbers on CPU.

``SA_DIST_FAULT=KIND@STAGE:STEP[:RANK]`` (tests only) makes a fault at that step of a stage (``baseline``, ``sa``):
KIND is ``sigint``, ``sigterm``, ``nan`` (the loss becomes NaN), ``raise`` (a RuntimeError), ``kill`` (SIGKILL)
or ``hang`` (sleeps an hour).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .utils import UserError, write_json

STATE_FORMAT = 1


class Interrupted(UserError):
    """SIGINT/SIGTERM: state saved, exit 128 + signal number like a shell."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def _fault():
    spec = os.environ.get("SA_DIST_FAULT")
    if not spec:
        return None
    kind, _, where = spec.partition("@")
    stage, step, *rank = where.split(":")
    return kind, stage, int(step), int(rank[0]) if rank else None


def inject(stage: str, step: int, rank: int, value: float | None = None) -> float | None:
    """The ``SA_DIST_FAULT`` hook: does nothing unless the variable names this stage, step and rank."""
    f = _fault()
    if f is None or (f[1], f[2]) != (stage, step) or f[3] not in (None, rank):
        return value
    kind = f[0]
    if kind == "nan" and value is not None:
        return float("nan")
    if kind in ("sigint", "sigterm") and value is None:
        os.kill(os.getpid(), signal.SIGINT if kind == "sigint" else signal.SIGTERM)
    elif kind == "raise" and value is None:
        raise RuntimeError(f"injected fault on rank {rank} at {stage} step {step}")
    elif kind == "kill" and value is None:
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "hang" and value is None:
        time.sleep(3600)
    return value


def checkpointer(accelerator, run_dir: str | Path, stage: str) -> "Checkpointer":
    """The checkpointer of one stage of the run in ``run_dir``: state in ``run_dir/state/<stage>``."""
    return Checkpointer(accelerator, Path(run_dir) / "state" / stage, stage, f"--resume {run_dir}")


def drop_state(run_dir: str | Path) -> None:
    """The run finished: its resumable states are no longer needed (main process)."""
    shutil.rmtree(Path(run_dir) / "state", ignore_errors=True)


class Checkpointer:
    """Saves and restores one loop's resumable state in ``state_dir``; ``state_dir`` None disables saving."""

    def __init__(self, accelerator, state_dir: str | Path | None, stage: str, resume_hint: str = ""):
        self.acc, self.stage, self.hint = accelerator, stage, resume_hint
        self.dir = Path(state_dir) if state_dir is not None else None
        self.every = 0  # set by the loop: save every N steps (0: only when interrupted)
        self.signum = 0
        self.last_saved: int | None = None
        self.meta: dict | None = None

    # ---- resume ----------------------------------------------------------------------------------------------
    def _complete_dir(self) -> Path | None:
        for d in (self.dir, self.dir.with_name(self.dir.name + ".old")):  # .old: killed during the swap
            if (d / "meta.json").is_file():
                return d
        return None

    def load_meta(self) -> dict | None:
        """The saved ``meta.json`` (``step``, the loop's extras) or None: call before replaying the loaders."""
        d = self._complete_dir() if self.dir is not None else None
        if d is None:
            return None
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("format") != STATE_FORMAT or meta.get("stage") != self.stage:
            raise UserError(f"resume state {d} is not a {self.stage} state of this sa_dist version")
        if meta["processes"] != self.acc.num_processes:
            raise UserError(f"resume state {d} was saved by {meta['processes']} processes; resume with "
                            f"{meta['processes']}, not {self.acc.num_processes}")
        self.meta, self.last_saved = meta, meta["step"]
        return meta

    def restore(self) -> None:
        """Model, optimizer and RNG states of every process (after the loaders were replayed)."""
        self.acc.load_state(str(self._complete_dir()))

    # ---- saving ----------------------------------------------------------------------------------------------
    def save(self, step: int, extra: dict) -> None:
        """All processes: ``save_state`` into ``NAME.partial``, then the main process swaps it into place."""
        if self.dir is None:
            return
        acc, name = self.acc, self.dir.name
        tmp, old = self.dir.with_name(name + ".partial"), self.dir.with_name(name + ".old")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json(tmp / "meta.json", {"format": STATE_FORMAT, "stage": self.stage, "step": step,
                                           "processes": acc.num_processes, **extra})
            shutil.rmtree(old, ignore_errors=True)
            if self.dir.exists():
                self.dir.rename(old)
            tmp.rename(self.dir)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self.last_saved = step

    def after_step(self, step: int, extra) -> None:
        """Called after every optimizer step: fault hook, periodic save, and stop on a signal (all ranks agree).
        ``extra`` is a function returning the loop's JSON extras (history, ...), called only when saving."""
        inject(self.stage, step, self.acc.process_index)
        signum = self.signum
        if self.acc.num_processes > 1:
            signum = int(self.acc.gather(torch.tensor([signum], device=self.acc.device)).max())
        if self.dir is not None and (signum or (self.every and step % self.every == 0)):
            self.save(step, extra())
        if signum:
            name = signal.Signals(signum).name if signum in (2, 15) else "a signal"
            where = (f"resumable state saved in {self.dir}; continue with {self.hint}" if self.dir is not None
                     else "no state saved (no state directory)")
            raise Interrupted(f"interrupted by {name} at {self.stage} step {step}; {where}", signum)

    def where_kept(self) -> str:
        """For a NaN/Inf stop: where the last good state is."""
        if self.dir is None:
            return "the last good checkpoint is kept"
        if self.last_saved is None:
            return f"no state was saved before it (saved every {self.every} steps)"
        return f"the last good state (step {self.last_saved}) is kept in {self.dir}"

    def finish(self) -> None:
        """The loop ended: stop tracking the prepared objects (a later ``save_state`` saves only the next loop's)."""
        self.acc.free_memory()

    # ---- signals ---------------------------------------------------------------------------------------------
    @contextmanager
    def catching_signals(self):
        """SIGINT/SIGTERM set a flag read after the step; another one more than 2 s later interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.signum and time.monotonic() - self._signalled_at > 2.0:
                raise KeyboardInterrupt  # a repeat, seconds later: the loop is stuck, stop now
            if not self.signum:  # repeats within 2 s (a launcher forwarding the same Ctrl-C) are ignored
                self.signum, self._signalled_at = signum, time.monotonic()

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
