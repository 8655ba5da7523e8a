"""The launchers: the shipped one-process Accelerate config (no "values were not passed" block), the thread count
every launched process logs, and benchmarks/launchers.py's argument handling."""
import importlib.util
import logging
import os
import subprocess
import sys

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from conftest import ROOT
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


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
