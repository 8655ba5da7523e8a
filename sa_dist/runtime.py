"""The runtime every stage shares: the one Accelerator factory (with the CPU thread count of each process),
TensorBoard tracking, and the DDP helpers (batch norm over processes, stopping on a non-finite loss). Nothing here
knows about cVAEs or configs."""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration,
                               broadcast_object_list)

from .utils import UsageError, UserError


class NonFiniteLoss(UserError):
    """A NaN or Inf loss: training stops, naming the step and the term."""


THREADS_ENV = "SA_DIST_THREADS"
_logged: list = []  # the thread count already logged by this process (logged once)


def processes_on_node(env=os.environ) -> int:
    """How many processes of this job share this node: ``LOCAL_WORLD_SIZE`` (torchrun, ``accelerate launch``),
    else this node's tasks of the SLURM step when ``srun`` started this process, else 1. (Not the batch script's
    ``SLURM_NTASKS_PER_NODE``: it holds the allocation's count while one process runs the script.)"""
    if env.get("LOCAL_WORLD_SIZE", "").isdigit():
        return max(1, int(env["LOCAL_WORLD_SIZE"]))
    per_node = _slurm_counts(env.get("SLURM_STEP_TASKS_PER_NODE", ""))  # set by srun for its tasks only
    if per_node:
        node = int(env.get("SLURM_NODEID", "0") or 0)
        return max(1, per_node[min(node, len(per_node) - 1)])
    return 1


def _slurm_counts(text: str) -> list[int]:
    """SLURM's per-node task list, e.g. ``"2(x3),1"`` -> [2, 2, 2, 1]; [] when absent or unreadable."""
    out = []
    for part in filter(None, text.split(",")):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            return []
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def thread_count(requested: int | None = None, env=os.environ, cores: int | None = None) -> tuple[int, str]:
    """The torch threads of this CPU process and why: ``requested`` (the ``--threads`` flag), else
    ``$SA_DIST_THREADS``, else the cores this process may run on divided by the processes on its node (min 1)."""
    if requested is not None:
        if requested < 1:
            raise UsageError(f"--threads must be >= 1, got {requested}")
        return requested, "--threads"
    if env.get(THREADS_ENV):
        value = env[THREADS_ENV]
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"${THREADS_ENV} must be a positive integer, got {value!r}")
        return int(value), f"${THREADS_ENV}"
    cores = cores or len(os.sched_getaffinity(0))
    procs = processes_on_node(env)
    return max(1, cores // procs), f"{cores} cores / {procs} process(es) on this node"


def configure_threads(requested: int | None = None, env=os.environ) -> tuple[int, str]:
    """Set torch's intra-op threads by ``thread_count``; this overrides the ``OMP_NUM_THREADS=1`` that
    ``accelerate launch`` and torchrun set for every process they start. Returns (threads, why)."""
    n, why = thread_count(requested, env)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n, why


class OutOfMemory(UserError):
    """An allocation the machine (CPU or GPU) cannot hold: one line naming the stage and the setting to lower."""


_OOM_TEXT = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")
_UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40}


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA) or a RuntimeError of an allocator that ran out (CPU: DefaultCPUAllocator)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(t in str(error).lower() for t in _OOM_TEXT))


def _allocation_gib(message: str) -> float | None:
    """The failed allocation's size in GiB, from the CPU ("allocate N bytes") or CUDA ("allocate 2.50 GiB") text."""
    m = re.search(r"allocate (\d+(?:\.\d+)?) ?(bytes|B|KiB|MiB|GiB|TiB)", message, re.IGNORECASE)
    if m is None:
        return None
    unit = "B" if m.group(2).lower() in ("bytes", "b") else m.group(2)
    return float(m.group(1)) * _UNITS.get(unit, 1) / 2 ** 30


@contextmanager
def memory_guard(stage: str, advice: str):
    """Out of memory inside becomes ``OutOfMemory``: "out of memory while STAGE (an allocation of N GiB failed);
    ADVICE", without the allocator's traceback. Any other error passes through."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        gib = _allocation_gib(str(e))
        size = f" (an allocation of {gib:.1f} GiB failed)" if gib is not None else ""
        raise OutOfMemory(f"out of memory while {stage}{size}; {advice}") from None


def make_accelerator(cpu: bool | None = None, mixed_precision: str = "no", project_dir: str | None = None,
                     threads: int | None = None):
    """One Accelerator per process. CPU unless CUDA is there; TensorBoard logs under ``project_dir``.
    ``$SA_DIST_TIMEOUT`` (seconds, default 1800): a collective waiting longer on a stuck process fails the job.
    A prepared loader's batch size is the global batch, split over the processes (``split_batches``), so a run
    takes the same steps per epoch on any number of processes. On CPU each process then runs ``threads`` torch
    threads (``configure_threads``; None: its share of the node's cores), logged once by the main process."""
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu and mixed_precision == "fp16":  # Accelerate would silently run float32
        raise UsageError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    project_dir = str(project_dir or Path.cwd() / "runs")
    timeout = timedelta(seconds=float(os.environ.get("SA_DIST_TIMEOUT", 1800)))  # a stuck collective fails after it
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, log_with="tensorboard",
                              project_config=ProjectConfiguration(project_dir=project_dir, logging_dir=project_dir),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                        split_batches=True),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
    if accelerator.device.type == "cpu" or threads is not None:  # after Accelerate, which may set its own count
        n, why = configure_threads(threads)
        if _logged != [n]:
            _logged[:] = [n]
            if accelerator.is_main_process:  # once per job (accelerator.print would print once per node)
                print(f"sa_dist: {n} CPU thread(s) per process ({why})", flush=True)
    return accelerator


def start_tracking(accelerator: Accelerator, log_dir: str | Path, name: str, config: dict | None = None):
    """TensorBoard event files go to ``log_dir/name`` (main process only)."""
    accelerator.project_configuration.logging_dir = str(log_dir)
    accelerator.trackers = []
    accelerator.init_trackers(name, config=_flat(config) if config else None)


def stop_tracking(accelerator: Accelerator):
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def tb_writer(accelerator: Accelerator):
    """The SummaryWriter, or None off the main process / without tracking."""
    if not accelerator.is_main_process or not accelerator.trackers:
        return None
    return accelerator.get_tracker("tensorboard", unwrap=True)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def check_finite(value: float, step: int, term: str, ckpt) -> None:
    """A NaN/Inf ``value`` stops the run, naming the step, the term and where ``ckpt`` (a ``resume.Checkpointer``)
    kept the last good state."""
    if not math.isfinite(value):
        raise NonFiniteLoss(f"non-finite {term} ({value}) at step {step}; stopped, {ckpt.where_kept()}")


def wrap_model(accelerator: Accelerator, model: nn.Module, sync_bn: bool = True) -> nn.Module:
    """With ``sync_bn`` and several CUDA processes, batch norm becomes SyncBatchNorm (statistics over the global
    batch). PyTorch's SyncBatchNorm refuses CPU tensors; on CPU ranks ``train_vae`` averages the running
    statistics over ranks after every epoch instead (``average_buffers``)."""
    if sync_bn and accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


@torch.no_grad()
def average_buffers(accelerator: Accelerator, model: nn.Module) -> None:
    """Average batch-norm running statistics over processes, so every rank ends with the same state."""
    if accelerator.num_processes == 1:
        return
    for buf in accelerator.unwrap_model(model).buffers():
        if buf.is_floating_point():
            buf.copy_(accelerator.reduce(buf.clone(), reduction="mean"))


@contextmanager
def exact_float32():
    """TF32 off inside (CUDA matmuls and cuDNN convolutions), the previous settings back after. On Ampere and newer
    GPUs TF32 rounds float32 products to a 10-bit mantissa; PyTorch leaves it off for matmuls but on for cuDNN
    convolutions by default, so the conv cVAE's Fisher would not be exact to 1e-6 without this. No effect on CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class DeviceMismatch(RuntimeError):
    """A tensor or module that reaches a collective or the loss is not on ``accelerator.device``."""


def _same_device(d: torch.device, want: torch.device) -> bool:
    return d.type == want.type and (d.index is None or want.index is None or d.index == want.index)


def check_device(accelerator, *items, what: str = "a tensor") -> None:
    """Every tensor (anything with ``.device``) and every module's parameters and buffers in ``items`` is on
    ``accelerator.device``; else ``DeviceMismatch`` naming both devices. Under NCCL a CPU tensor in an all-reduce
    fails deep inside the collective, and on one GPU a CPU model silently computes on the CPU: this says it first."""
    want = torch.device(accelerator.device)
    for item in items:
        tensors = list(item.parameters()) + list(item.buffers()) if isinstance(item, nn.Module) else [item]
        for t in tensors:
            if not _same_device(t.device, want):
                raise DeviceMismatch(f"{what} is on {t.device}, the accelerator on {want}: move it with "
                                     ".to(accelerator.device) first")


def main_decides(accelerator, value):
    """``value`` as the main process computed it, on every process (one broadcast; none with one process). For
    decisions that choose between collective code paths (cached or computed by all ranks): ranks that decided
    apart would wait for each other until the collective timeout."""
    if accelerator.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def rank_noise(accelerator, seed: int | None = None) -> None:
    """Give each process its own stream of reparameterisation noise (torch's global generators, CPU and CUDA).
    Call after ``prepare``, which reads the shared seed for the loaders' shuffles. Rank 0 keeps its stream, so one
    process computes what it always did; rank r >= 1 is reseeded from (``seed``, r), ``seed`` defaulting to the
    one every rank set (``torch.initial_seed()``). Without it every rank draws the same noise for its shard of the
    batch: unbiased, but the shards' noise is correlated and the averaged gradient is noisier than it should be."""
    rank = accelerator.process_index
    if rank == 0:
        return
    base = torch.initial_seed() if seed is None else seed
    torch.manual_seed((base * 1_000_003 + 7919 * rank) % (1 << 63))
