"""One-shot check of a machine with NVIDIA GPUs; writes one JSON file (sized for under 10 minutes on one modern GPU;
not run here: this project has no GPU).

    python benchmarks/gpu_check.py [--out gpu_check.json] [--skip-multi]

1. One GPU, `accelerate launch --config_file accelerate_config.yaml scripts/unlearn.py --quick` under each precision
   (fp32 = --mixed-precision no, bf16, fp16), each from a fresh cache: wall time, baseline and SA steps per second,
   peak GPU memory (nvidia-smi, sampled every 0.5 s), and the forgetting and retention figures of results.json.
   GPU memory is the device's (any process, this one's CUDA context included).
2. The Fisher's fast path against the per-sample reference loop (sa_dist.fisher.sum_sq_grads_loop) on CUDA, in
   float64 and in float32 with TF32 off, on a briefly trained default model; peak memory of the fast path.
3. With 2+ GPUs: the same --quick run on every GPU (`accelerate launch --multi_gpu --num_processes N`).
Without CUDA it prints one line on stderr and exits 1. A step that fails is recorded with its stderr's tail and
"ok": false; the exit status is 0 only when every step passed its bar.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import accelerate
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from fisher import warmed_up_model  # noqa: E402  (benchmarks/fisher.py)

from sa_dist.fisher import fisher_batch, sum_sq_grads, sum_sq_grads_loop  # noqa: E402

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
BARS = {"p_forgotten_after_max": 0.05, "fisher_rel_diff_float64_max": 1e-9, "fisher_rel_diff_float32_max": 1e-4}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check.json", help="the JSON file to write (default gpu_check.json)")
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS),
                   help="one-GPU runs to make (default all)")
    p.add_argument("--skip-multi", action="store_true", help="no multi-GPU run even with 2+ GPUs")
    p.add_argument("--arch", choices=("conv", "linear"), default="conv", help="model of every check (default conv)")
    p.add_argument("--fisher-samples", type=int, default=64, help="samples of the Fisher loop check (default 64)")
    p.add_argument("--timeout", type=float, default=150, help="seconds per launched run (default 150)")
    args = p.parse_args(argv)
    if args.fisher_samples < 1 or args.timeout <= 0:
        p.error("--fisher-samples and --timeout must be positive")
    return args


def require_cuda() -> None:
    """One clear line on stderr and exit 1 where there is no CUDA device."""
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (a CPU-only build)"
        sys.stderr.write(f"gpu_check: no CUDA device here (torch {torch.__version__}, built for {built}); run it on a "
                         "machine with an NVIDIA GPU and a CUDA build of torch\n")
        sys.exit(1)


class PeakMemory:
    """The largest memory.used (MiB) nvidia-smi reports for any GPU while the block runs (None without it)."""

    def __enter__(self):
        self.peak, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                used = [int(v) for v in out.split() if v.isdigit()]
                if used:
                    self.peak = max(self.peak or 0, max(used))
            except (OSError, subprocess.TimeoutExpired):
                return
            self._stop.wait(0.5)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=15)


def run_record(results: dict, wall_s: float, peak_mib) -> dict:
    """One launched run's entry, from its results.json: steps per second of baseline training and of SA (steps
    from the config: epochs x batches per epoch), peak memory, forgetting and retention."""
    cfg, t, s = results["config"], results["timing_s"], results["summary"]
    n_train = cfg["train"]["limit"] or 60000
    base_steps = cfg["train"]["epochs"] * math.ceil(n_train / cfg["train"]["batch"])
    sa_steps = cfg["sa"]["sa_epochs"] * math.ceil(cfg["sa"]["n_replay"] / cfg["sa"]["batch"])
    p_after = max(s["after"]["forgotten_p_class"].values())
    return {"ok": p_after <= BARS["p_forgotten_after_max"], "processes": results["processes"],
            "mixed_precision": cfg["mixed_precision"], "wall_s": round(wall_s, 1),
            "baseline_steps_per_s": round(base_steps / t["baseline"], 1) if t.get("baseline") else None,
            "sa_steps_per_s": round(sa_steps / t["unlearn"], 1) if t.get("unlearn") else None,
            "fisher_s": t.get("fisher"), "peak_gpu_memory_mib": peak_mib, "p_forgotten_after": p_after,
            "retained_acc_before_after": [s["before"]["retained_sample_acc"], s["after"]["retained_sample_acc"]]}


def failed_record(stderr: str, wall_s: float) -> dict:
    return {"ok": False, "wall_s": round(wall_s, 1), "stderr_tail": stderr[-1500:]}


def launch(launcher: list[str], args, run_dir: Path, env: dict) -> dict:
    """``accelerate launch LAUNCHER scripts/unlearn.py --quick`` from a fresh cache; its record."""
    cache = tempfile.mkdtemp(prefix="sa_dist_gpu_cache_")
    cmd = ["accelerate", "launch", *launcher, "scripts/unlearn.py", "--quick", "--arch", args.arch,
           "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    try:
        with PeakMemory() as mem:
            r = subprocess.run(cmd, cwd=ROOT, env={**env, "SA_DIST_CACHE": cache}, capture_output=True, text=True,
                               timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return failed_record(f"timed out after {args.timeout} s: {' '.join(cmd)}", time.perf_counter() - t0)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return failed_record(r.stderr, wall)
    return {"command": " ".join(cmd), **run_record(json.loads((run_dir / "results.json").read_text()), wall,
                                                   mem.peak)}


def max_rel_diff(fast: dict, loop: dict) -> float:
    """Over tensors: max|fast - loop| / max|loop|."""
    return max(((fast[k] - loop[k]).abs().max() / loop[k].abs().max().clamp_min(1e-30)).item() for k in loop)


def fisher_check(arch: str, n: int) -> dict:
    """The fast path against the per-sample loop on the GPU: float64, and float32 with TF32 off."""
    model = warmed_up_model(arch).cuda()
    out, tf32 = {}, (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            m = model.to(dtype)
            x, c, eps = fisher_batch(m, seed=0, start=0, count=n)
            torch.cuda.reset_peak_memory_stats()
            fast = sum_sq_grads(m, x, c, eps)
            out[f"peak_memory_fast_{name}_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
            out[f"rel_diff_{name}"] = float(f"{max_rel_diff(fast, sum_sq_grads_loop(m, x, c, eps)):.3e}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out["ok"] = (out["rel_diff_float64"] <= BARS["fisher_rel_diff_float64_max"]
                 and out["rel_diff_float32"] <= BARS["fisher_rel_diff_float32_max"])
    return {"arch": arch, "samples": n, **out}


def build_record(machine: dict, one_gpu: dict, fisher: dict, multi_gpu: dict, seconds: float) -> dict:
    """The JSON file's content; ``ok`` when every recorded check passed (a skipped multi-GPU run counts as passed)."""
    parts = [*one_gpu.values(), fisher] + ([multi_gpu] if "skipped" not in multi_gpu else [])
    return {"ok": all(p.get("ok") for p in parts), "machine": machine, "bars": BARS, "one_gpu": one_gpu,
            "fisher_cuda_fast_vs_loop": fisher, "multi_gpu": multi_gpu, "total_s": round(seconds, 1)}


def machine_info() -> dict:
    n = torch.cuda.device_count()
    return {"gpus": [torch.cuda.get_device_name(i) for i in range(n)], "torch": torch.__version__,
            "cuda": torch.version.cuda, "accelerate": accelerate.__version__, "python": sys.version.split()[0]}


def main(argv=None):
    args = parse_args(argv)
    require_cuda()
    t0, machine = time.perf_counter(), machine_info()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    runs = Path(tempfile.mkdtemp(prefix="sa_dist_gpu_runs_"))
    one_gpu = {name: launch(["--config_file", str(ROOT / "accelerate_config.yaml"), "--mixed_precision", mp], args,
                            runs / name, env) for name, mp in PRECISIONS.items() if name in args.precisions}
    fisher = fisher_check(args.arch, args.fisher_samples)
    n = len(machine["gpus"])
    multi = ({"skipped": f"{n} GPU" if n < 2 else "--skip-multi"} if n < 2 or args.skip_multi else
             launch(["--config_file", str(ROOT / "accelerate_multi_gpu.yaml"), "--multi_gpu", "--num_processes",
                     str(n)], args, runs / "multi", dict(os.environ)))
    record = build_record(machine, one_gpu, fisher, multi, time.perf_counter() - t0)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"ok": record["ok"], "out": args.out, "total_s": record["total_s"]}))
    shutil.rmtree(runs, ignore_errors=True)
    sys.exit(0 if record["ok"] else 1)


if __name__ == "__main__":
    main()
