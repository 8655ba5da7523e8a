"""One source for every default: the scripts' flags, their --help and docs/flags.md come from the config
dataclasses; a sweep hands every number to its points exactly."""
from dataclasses import fields

import pytest

from conftest import ROOT
from sa_dist.cli import compute_fisher
from sa_dist.cli.flags import Parser, add_config_args, config_fields, config_from_args, flags_markdown, shown_default
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
    """docs/flags.md holds flags_markdown() verbatim; regenerate it with the command the page gives."""
    assert flags_markdown() in (ROOT / "docs" / "flags.md").read_text()


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
