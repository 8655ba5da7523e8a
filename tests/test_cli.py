"""One source for every default: the scripts' flags, their --help and docs/flags.md come from the config
dataclasses; a sweep hands every number to its points exactly."""
import sys
from dataclasses import fields

import pytest

from conftest import ROOT
from sa_dist.cli import compute_fisher, sweep
from sa_dist.cli.flags import (Parser, add_checkpoint_arg, add_config_args, config_fields, config_from_args,
                               flags_markdown, run_flags_markdown, shown_default)
from sa_dist.config import RunConfig, SAConfig, TrainConfig, validate
from sa_dist.methods import get_method, method_names
from sa_dist.sweeps.grid import Point, number


def test_every_flag_help_states_the_dataclass_default():
    p = Parser()
    add_config_args(p)
    helps = {a.dest: a.help for a in p._actions}
    for key, f, default, _ in config_fields():
        assert helps[key.replace(".", "__")].endswith(f"(default {shown_default(f, default)})"), key
    assert "(default 1)" in helps["sa__lam"] and "(default 20000)" in helps["sa__n_fisher"]
    assert "conv 0.001, linear 0.0005" in helps["sa__lr"]


def test_unset_flags_leave_the_dataclass_defaults():
    p = Parser()
    add_config_args(p)
    assert config_from_args(p.parse_args([])) == validate(RunConfig())


def test_docs_flag_table_is_generated_from_the_config():
    """docs/flags.md holds flags_markdown() and run_flags_markdown() verbatim; regenerate them with the commands
    the page gives."""
    page = (ROOT / "docs" / "flags.md").read_text()
    assert flags_markdown() in page and run_flags_markdown() in page


def test_checkpoint_help_has_one_source_and_says_earlier_classes_join_the_request():
    p = Parser()
    add_checkpoint_arg(p)
    text = " ".join(p.format_help().split())
    assert "forgotten are added to the request" in text and "--checkpoint FILE" in text
    assert "forgotten are added to the request" in run_flags_markdown()


def _sweep(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["sweep.py", *map(str, argv)])
    sweep.main.__wrapped__()
    return capsys.readouterr().out


def test_a_sweep_passes_protocol_to_every_task(monkeypatch, capsys, tmp_path):
    """--protocol reaches a SLURM task's flags, the points run in one process, and the shared cache step."""
    grid = ["--out-dir", tmp_path / "o", "--forget", "2", "7", "--protocol", "paper"]
    args = _sweep(monkeypatch, capsys, *grid, "--task-args", "1").split()
    assert args[args.index("--protocol") + 1] == "paper" and args[args.index("--forget") + 1] == "7"
    seen = {}
    monkeypatch.setattr(sweep, "run_many", lambda jobs, checkpoint: seen.setdefault("jobs", jobs) and [])
    _sweep(monkeypatch, capsys, *grid, "--no-aggregate")
    assert [cfg.protocol for cfg, _ in seen["jobs"]] == ["paper", "paper"]
    monkeypatch.setattr(sweep, "prepare_cache", lambda cfg, fisher, ckpt: seen.setdefault("prepare", cfg.protocol))
    _sweep(monkeypatch, capsys, *grid, "--prepare")
    assert seen["prepare"] == "paper"
    assert "--protocol" not in _sweep(monkeypatch, capsys, "--out-dir", tmp_path / "o", "--task-args", "0")


def test_compute_fisher_defaults_are_unlearns():
    args = compute_fisher.parser().parse_args(["--checkpoint", "c", "--out", "o"])
    assert (args.n_samples, args.seed, args.batch) == (SAConfig().n_fisher, TrainConfig().seed, SAConfig().fisher_batch)
    assert f"(default {SAConfig().n_fisher}" in compute_fisher.parser().format_help()


@pytest.mark.parametrize("lam", [0.1, 1e-7, 1.0000001e-7, 3.141592653589793, 100.0, 0.30000000000000004])
def test_sweep_numbers_reach_the_points_exactly(lam):
    assert float(number(lam)) == lam
    point = Point("sa", (2,), lam, 1.0)
    assert point.config(RunConfig()).sa.lam == lam
    assert point.args()[point.args().index("--lam") + 1] == number(lam)
    p = Parser()
    add_config_args(p)
    assert config_from_args(p.parse_args(point.args())).sa.lam == lam


def test_every_method_module_is_registered_with_its_facts():
    assert method_names()[0] == "sa" and len(set(method_names())) == len(method_names())
    for name in method_names():
        m = get_method(name)
        assert m.doc.startswith(f"{name}:"), name  # the module docstring names the method
        assert m.marker and set(m.uses) <= {f.name for f in fields(SAConfig)}  # fields it reads


# ---- bad input to the scripts, run in this process (tests/conftest.py cli) ---------------------------------------

@pytest.mark.parametrize("argv,match", [(["--forget", "11"], "--forget takes classes in 0-9"),
                                        (["--arch", "vit"], "--arch must be one of conv, linear"),
                                        (["--lam", "inf"], "--lam must be a finite number"),
                                        (["--batch", "x"], "argument --batch: invalid int value")])
def test_bad_arguments_are_one_line_exit_2(tmp_path, cli, argv, match):
    code, _, err = cli("scripts/unlearn.py", *argv, "--run-dir", tmp_path / "r")
    assert code == 2 and len(err) == 1 and match in err[0]
    assert not (tmp_path / "r").exists()  # nothing written


def test_checkpoint_of_another_architecture_is_refused(tiny_baseline, tmp_path, cli):
    _, ckpt = tiny_baseline
    code, _, err = cli("scripts/unlearn.py", "--arch", "conv", "--checkpoint", ckpt, "--run-dir", tmp_path / "r")
    assert code == 1 and len(err) == 1 and "arch=linear, but the run asks for arch=conv" in err[0]
