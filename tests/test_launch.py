"""The launchers: the shipped one-process Accelerate config (no "values were not passed" block), the thread count
every launched process logs, and benchmarks/launchers.py's argument handling."""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from conftest import ROOT, load_benchmark
from test_scripts import TINY

WARNING_BLOCK = "were not passed to `accelerate launch`"


def validate_launch(caplog, *argv):
    """Accelerate's own check of ``accelerate launch ARGV`` (what decides the warning block): (args, log text)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="accelerate.commands.launch"):
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(list(argv)))
    return args, caplog.text


def test_one_process_config_is_complete_and_quiet(caplog):
    cfg = load_config_from_file(str(ROOT / "accelerate_config.yaml"))
    assert cfg.distributed_type == "NO" and cfg.num_processes == 1 and cfg.num_machines == 1
    assert cfg.mixed_precision == "no" and cfg.compute_environment == "LOCAL_MACHINE"
    args, log = validate_launch(caplog, "--config_file", str(ROOT / "accelerate_config.yaml"), "scripts/unlearn.py")
    assert WARNING_BLOCK not in log and not args.multi_gpu and args.num_processes == 1
    _, log = validate_launch(caplog, "scripts/unlearn.py")  # the card's command without the file: the block
    assert WARNING_BLOCK in log


def test_multi_gpu_config_with_num_processes_is_quiet_too(caplog):
    args, log = validate_launch(caplog, "--config_file", str(ROOT / "accelerate_multi_gpu.yaml"),
                                "--num_processes", "2", "scripts/unlearn.py")
    assert WARNING_BLOCK not in log and args.multi_gpu and args.num_processes == 2


@pytest.mark.slow
def test_accelerate_launch_with_the_config_is_quiet_and_uses_every_core(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SA_DIST_THREADS", "OMP_NUM_THREADS")}  # launcher: 1
    cores = len(os.sched_getaffinity(0))
    cmd = ["accelerate", "launch", "--config_file", "accelerate_config.yaml", "scripts/unlearn.py", "--quick", *TINY,
           "--run-dir", str(tmp_path / "run")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert WARNING_BLOCK not in r.stderr and "Traceback" not in r.stderr
    line = f"sa_dist: {cores} CPU thread(s) per process ({cores} cores / 1 process(es) on this node)"
    assert r.stdout.count(line) == 1, r.stdout[-2000:]  # despite the OMP_NUM_THREADS=1 accelerate launch sets
    assert (tmp_path / "run" / "results.json").is_file()


launchers = load_benchmark("launchers")


def test_launchers_splits_its_flags_from_the_script_args():
    a = launchers.parse_args(["--repeats", "3", "--launchers", "python", "accelerate", "torchrun", "--", "--quick",
                              "--forget", "2"])
    assert a.repeats == 3 and a.launchers == ["python", "accelerate", "torchrun"]
    assert a.script_args == ["--quick", "--forget", "2"] and a.script == "scripts/unlearn.py"
    a = launchers.parse_args([])
    assert a.repeats == 3 and a.launchers == list(launchers.LAUNCHERS) and a.script_args == []


@pytest.mark.parametrize("argv,match", [(["--launchers", "mpirun"], "invalid choice: 'mpirun'"),
                                        (["--repeats", "0"], "--repeats must be >= 1"),
                                        (["--", "--quick", "--run-dir", "x"], "own run directory"),
                                        (["--launchers", "python", "python"], "named twice"),
                                        (["--quick"], "unrecognized arguments: --quick")])  # script args after --
def test_launchers_bad_arguments_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        launchers.parse_args(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_launcher_commands_and_summary(tmp_path):
    cmds = {n: launchers.command(n, "scripts/unlearn.py", ["--quick"], tmp_path / n) for n in launchers.LAUNCHERS}
    assert cmds["python"] == [sys.executable, "scripts/unlearn.py", "--quick", "--run-dir", str(tmp_path / "python")]
    assert cmds["accelerate"][1:4] == ["launch", "--config_file", str(ROOT / "accelerate_config.yaml")]
    assert cmds["torchrun"][1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "1"]
    s = launchers.summary({"python": [10.0, 12.0, 11.0], "accelerate": [11.0, 13.0, 12.1]})
    assert s["python"]["median_s"] == 11.0 and s["accelerate"]["ratio_to_python"] == 1.1
    assert launchers.summary({"torchrun": [3.0]})["torchrun"]["ratio_to_python"] is None


gpu_check = load_benchmark("gpu_check")


def fake_results(p_after=0.001, processes=1, mp="bf16") -> dict:
    return {"config": {"train": {"limit": None, "epochs": 2, "batch": 256}, "mixed_precision": mp,
                       "sa": {"sa_epochs": 3, "n_replay": 15360, "batch": 256}},
            "processes": processes, "timing_s": {"baseline": 4.7, "fisher": 0.5, "unlearn": 6.0},
            "summary": {"before": {"forgotten_p_class": {"2": 0.9}, "retained_sample_acc": 0.95},
                        "after": {"forgotten_p_class": {"2": p_after}, "retained_sample_acc": 0.94}}}


def test_gpu_check_arguments(capsys):
    a = gpu_check.parse_args([])
    assert a.out == "gpu_check.json" and a.precisions == ["fp32", "bf16", "fp16"] and not a.skip_multi
    assert gpu_check.parse_args(["--precisions", "bf16", "--skip-multi"]).precisions == ["bf16"]
    for bad, match in ((["--precisions", "fp8"], "invalid choice: 'fp8'"), (["--timeout", "0"], "must be positive")):
        with pytest.raises(SystemExit) as e:
            gpu_check.parse_args(bad)
        assert e.value.code == 2 and match in capsys.readouterr().err


def test_gpu_check_without_cuda_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--out", str(tmp_path / "g.json")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and err.startswith("gpu_check: no CUDA device here")
    assert not (tmp_path / "g.json").exists()


def test_gpu_check_record_shape_from_fake_measurements():
    run = gpu_check.run_record(fake_results(), wall_s=20.04, peak_mib=1234)
    assert run["ok"] and run["baseline_steps_per_s"] == round(2 * 235 / 4.7, 1) and run["sa_steps_per_s"] == 30.0
    assert run["peak_gpu_memory_mib"] == 1234 and run["mixed_precision"] == "bf16" and run["wall_s"] == 20.0
    assert not gpu_check.run_record(fake_results(p_after=0.2), 1.0, None)["ok"]  # forgot too little
    fisher = {"ok": True, "rel_diff_float64": 1e-15, "rel_diff_float32": 2e-6}
    rec = gpu_check.build_record({"gpus": ["X"]}, {"fp32": run, "bf16": run}, fisher, {"skipped": "1 GPU"}, 61.26)
    assert rec["ok"] and rec["total_s"] == 61.3 and rec["multi_gpu"] == {"skipped": "1 GPU"}
    assert set(rec) == {"ok", "machine", "bars", "one_gpu", "fisher_cuda_fast_vs_loop", "multi_gpu", "total_s"}
    json.dumps(rec)  # one JSON file
    bad = gpu_check.build_record({}, {"fp16": gpu_check.failed_record("boom", 3.0)}, fisher, {"skipped": "x"}, 1)
    assert not bad["ok"] and bad["one_gpu"]["fp16"]["stderr_tail"] == "boom"
    assert not gpu_check.build_record({}, {"fp32": run}, fisher, {**run, "ok": False}, 1)["ok"]


def test_fisher_rel_diff():
    loop = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([4.0])}
    assert gpu_check.max_rel_diff({"w": torch.tensor([1.0, 2.2]), "b": torch.tensor([4.0])}, loop) == \
        pytest.approx(0.1)
