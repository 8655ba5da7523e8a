"""Bad input: every bad argument or file costs one line on stderr and a non-zero exit, nothing written.

The scripts run in-process (``runpy``) with the job itself replaced by a tripwire, so a check that lets a bad value
through fails the test instead of starting a run. A few cases also run as a real subprocess (tests/test_scripts.py)."""
import gzip
import runpy
import shutil
import signal
import sys
from dataclasses import asdict, fields, replace

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script
from sa_dist import cache, checkpoint, data, pipeline
from sa_dist.checkpoint import save_checkpoint, save_fisher, save_tensors
from sa_dist.cli.flags import Parser, add_config_args, config_from_args
from sa_dist.config import RunConfig, SAConfig
from sa_dist.data import PACKAGE_DATA
from sa_dist.evaluation import evaluator
from sa_dist.methods import method_names
from sa_dist.models import ModelConfig, build_model
from test_scripts import TINY

METHODS = method_names()


class Tripwire(Exception):
    pass


@pytest.fixture
def script(monkeypatch, tmp_path, capsys):
    """run(name, *argv) -> (exit code, stderr lines); the job itself must never start."""
    def trip(*a, **k):
        raise Tripwire("the checks let a bad value through")

    monkeypatch.setattr(pipeline, "make_accelerator", trip)
    monkeypatch.chdir(tmp_path)
    old = signal.getsignal(signal.SIGTERM)

    def run(name, *argv):
        monkeypatch.setattr(sys, "argv", [name, *map(str, argv)])
        before = sorted(p.name for p in tmp_path.iterdir())
        try:
            with pytest.raises(SystemExit) as e:
                runpy.run_path(str(ROOT / "scripts" / name), run_name="__main__")
        finally:
            signal.signal(signal.SIGTERM, old)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"
        return e.value.code, capsys.readouterr().err.strip().splitlines()

    return run


def _npy(tmp_path, name, arr):
    np.save(tmp_path / name, arr)
    return tmp_path / name


def _yaml(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return tmp_path / name


BAD_ARGS_TABLE = """
--forget 10           | error: --forget takes classes in 0-9, got [10]
--forget -1           | error: --forget takes classes in 0-9, got [-1]
--forget 2 2          | error: --forget has a repeated class: [2, 2] (distinct classes in 0-9)
--forget {all}        | error: --forget cannot take all 10 classes: at most 9, so something is retained
--arch vit            | error: --arch must be one of conv, linear, got 'vit'
--method magic        | unlearn.py: error: argument --method: invalid choice: 'magic' (choose from {methods})
--lam -1              | error: --lam must be a finite number >= 0, got -1.0
--lam inf             | error: --lam must be a finite number >= 0, got inf
--gamma nan           | error: --gamma must be a finite number >= 0, got nan
--gamma -0.5          | error: --gamma must be a finite number >= 0, got -0.5
--lr -0.001           | error: --lr must be a positive number, got -0.001
--lr nan              | error: --lr must be a positive number, got nan
--sa-lr inf           | error: --sa-lr must be a positive number, got inf
--epochs 0            | error: --epochs must be a positive integer, got 0
--epochs -3           | error: --epochs must be a positive integer, got -3
--sa_epochs 0         | error: --sa-epochs must be a positive integer, got 0
--batch 0             | error: --batch must be a positive integer, got 0
--batch -8            | error: --batch must be a positive integer, got -8
--batch x             | unlearn.py: error: argument --batch: invalid int value: 'x'
--z-dim 0             | error: --z-dim must be >= 1, got 0
--seed -1             | error: --seed must be an integer >= 0, got -1
--limit 0             | error: --limit must be a positive integer (or unset for all images), got 0
--mixed-precision fp8 | error: --mixed-precision must be one of no, fp16, bf16, got 'fp8'
--surrogate noise     | error: --surrogate must be uniform, blank, class:K or a path to an .npy file, got 'noise'
--surrogate class:2   | error: --surrogate class:K needs a retained class K in 0-9 (not one of --forget [2]), got 'class:2'
"""  # argv | the exact line the user sees
BAD_ARGS = [(argv.format(all=" ".join(map(str, range(10)))).split(),
             line.format(methods=", ".join(map(repr, METHODS))))
            for argv, line in (row.split(" | ", 1) for row in BAD_ARGS_TABLE.strip().splitlines())]


@pytest.mark.parametrize("argv,line", BAD_ARGS, ids=[" ".join(a)[:30] for a, _ in BAD_ARGS])
def test_bad_argument_is_one_line_exit_2(script, argv, line):
    code, err = script("unlearn.py", *argv, "--run-dir", "r")
    assert (code, err) == (2, [line])


def test_surrogate_npy_of_wrong_shape_or_range(script, tmp_path):
    cases = [(_npy(tmp_path, "shape.npy", np.zeros((5, 28, 27), np.float32)), "expected images of shape (N, 28, 28), "
              "(N, 1, 28, 28) or (N, 784), got (5, 28, 27)"),
             (_npy(tmp_path, "range.npy", np.full((5, 28, 28), 255.0, np.float32)),
              "pixel values must lie in [0, 1], got [255, 255]"),
             (_npy(tmp_path, "nan.npy", np.full((5, 784), np.nan, np.float32)), "pixel values must lie in [0, 1]"),
             (tmp_path / "missing.npy", "cannot read the .npy file")]
    for path, fragment in cases:
        code, err = script("unlearn.py", "--surrogate", path, "--run-dir", "r")
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: --surrogate {path}: ") and fragment in err[0]


@pytest.mark.parametrize("text,line", [
    ("sa: {lam: 1, lamda: 2}", "error: config sa.: unknown key 'lamda' (allowed: "
                               f"{', '.join(sorted(f.name for f in fields(SAConfig)))})"),
    ("train: {epochs: ten}", "error: config train.epochs: expected int, got 'ten'"),
    ("model: {arch: [conv]}", "error: config model.arch: expected str, got ['conv']"),
    ("model: 3", "error: config model: expected a mapping, got 3"),
    ("sa: {method: magic}", f"error: --method must be one of {', '.join(METHODS)}, got 'magic'"),
    ("train: {epochs: [", None),  # not YAML
])
def test_bad_yaml_config_is_one_line_exit_2(script, tmp_path, text, line):
    cfg = _yaml(tmp_path, "c.yaml", text)
    code, err = script("unlearn.py", "--config", cfg, "--run-dir", "r")
    assert code == 2 and len(err) == 1
    assert err[0] == line if line else err[0].startswith(f"error: --config {cfg}: not valid YAML")


def test_missing_config_file(script, tmp_path):
    code, err = script("train_baseline.py", "--config", tmp_path / "nope.yaml")
    assert code == 2 and err == [f"error: --config {tmp_path / 'nope.yaml'}: cannot read (No such file or directory)"]


def test_bad_resume_arguments(script, tmp_path):
    code, err = script("unlearn.py", "--resume", tmp_path / "nothing")
    assert (code, err) == (2, [f"error: --resume {tmp_path / 'nothing'}: no config.yaml there (not a sa_dist run "
                               "directory)"])
    code, err = script("unlearn.py", "--resume", tmp_path, "--lam", "5", "--epochs", "3")
    assert (code, err) == (2, ["error: --resume continues a run with its own config.yaml; drop --epochs, --lam"])


# ---- bad files ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.safetensors"
    save_checkpoint(good, build_model(ModelConfig(arch="linear", width=64)))
    (d / "truncated.safetensors").write_bytes(good.read_bytes()[:700])
    (d / "not.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    blob = good.read_bytes().replace(b'"format_version":"1"', b'"format_version":"7"')
    (d / "newer.safetensors").write_bytes(blob)
    save_tensors(d / "foreign.safetensors", {"w": torch.zeros(3)}, {})
    (d / "foreign.safetensors").write_bytes((d / "foreign.safetensors").read_bytes()
                                            .replace(b'"format_version":"1"', b'"format_version":"0"'))
    save_tensors(d / "fisher.safetensors", {"w": torch.zeros(3)}, {"kind": "fisher"})
    return d


@pytest.mark.parametrize("name,argv,tail", [
    ("missing", [], "does not exist"),
    ("truncated", [], "is not a readable safetensors file"),
    ("not", [], "is not a readable safetensors file"),
    ("newer", [], "has format version 7; this sa_dist reads up to 1"),
    ("foreign", [], "has no sa_dist format version: not written by sa_dist"),
    ("fisher", [], "has no model config in its metadata"),
    ("good", ["--arch", "conv"], "has arch=linear, but the run asks for arch=conv"),
    ("good", ["--z-dim", "4"], "has z_dim=8, but the run asks for z_dim=4"),
])
def test_bad_checkpoint_is_one_line_exit_1_before_anything_is_written(script, bad_checkpoints, name, argv, tail):
    path = bad_checkpoints / f"{name}.safetensors"
    code, err = script("unlearn.py", "--arch", "linear", *argv, "--checkpoint", path, "--run-dir", "r")
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: checkpoint {path} ") and tail in err[0], err


def test_unwritable_run_dir(tmp_path, cli):
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, err = cli("scripts/train_baseline.py", "--epochs", "1", "--limit", "200", "--run-dir",
                       tmp_path / "file" / "r")
    assert code == 1 and err[-1] == f"error: --run-dir {tmp_path / 'file' / 'r'} is not writable (Not a directory)"


@pytest.mark.slow
def test_a_cached_fisher_that_does_not_match_the_model_is_refused(tmp_path):
    p = Parser()
    add_config_args(p)
    argv = [*TINY, "--seed", "5", "--epochs", "1", "--limit", "300", "--eval-samples", "10"]
    cfg = config_from_args(p.parse_args(argv))
    path = cache.fisher_path(cache.fisher_key(cfg, cache.baseline_key(cfg)))
    other = build_model(ModelConfig(arch="linear", width=32))
    save_fisher(path, {k: torch.ones_like(v) for k, v in other.named_parameters()}, {})
    try:
        r = run_script("scripts/unlearn.py", *argv, "--run-dir", tmp_path / "r")
    finally:
        path.unlink()
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: Fisher file {path} does not match the model: ")
    assert not (tmp_path / "r" / "results.json").exists()


# ---- cache keys -------------------------------------------------------------------------------------------------

def _changed(value):
    if value is None or isinstance(value, bool):
        return 7 if value is None else not value
    return {int: lambda v: v + 1, float: lambda v: v * 2 + 1, str: lambda v: v + "x"}[type(value)](value)


def test_every_config_field_that_shapes_the_baseline_changes_its_key():
    cfg = RunConfig()
    key = cache.baseline_key(cfg)
    for section in ("model", "train"):
        for f in fields(getattr(cfg, section)):
            part = getattr(cfg, section)
            new = replace(cfg, **{section: replace(part, **{f.name: _changed(getattr(part, f.name))})})
            assert cache.baseline_key(new) != key, f"{section}.{f.name}"
    assert cache.baseline_key(replace(cfg, mixed_precision="bf16")) != key
    sa_only = replace(cfg, sa=replace(cfg.sa, lam=3.0, forget=[5]), eval_samples=7)
    assert cache.baseline_key(sa_only) == key  # SA settings reuse the same baseline


def test_fisher_key_follows_baseline_samples_seed_batch():
    cfg = RunConfig()
    key = cache.fisher_key(cfg, "b")
    assert cache.fisher_key(cfg, "other-baseline") != key
    for sa in (replace(cfg.sa, n_fisher=7), replace(cfg.sa, fisher_batch=7)):
        assert cache.fisher_key(replace(cfg, sa=sa), "b") != key
    assert cache.fisher_key(replace(cfg, train=replace(cfg.train, seed=1)), "b") != key
    assert cache.fisher_key(replace(cfg, sa=replace(cfg.sa, lam=9.0)), "b") == key


def test_data_checksum_and_format_version_change_every_cache_key(monkeypatch):
    cfg = RunConfig()
    keys = lambda: (cache.baseline_key(cfg), cache.fisher_key(cfg, cache.baseline_key(cfg)),  # noqa: E731
                    evaluator.evaluator_path().name)
    base = keys()
    monkeypatch.setitem(data.SHA256, "t10k-labels-idx1-ubyte", "0" * 64)
    changed_data = keys()
    monkeypatch.undo()
    monkeypatch.setattr(cache, "FORMAT_VERSION", checkpoint.FORMAT_VERSION + 1)
    monkeypatch.setattr(evaluator, "EVALUATOR_VERSION", evaluator.EVALUATOR_VERSION + 1)
    changed_format = keys()
    for i, what in enumerate(("baseline", "fisher", "evaluator")):
        assert changed_data[i] != base[i] and changed_format[i] != base[i], what
    assert asdict(cfg)  # the key is built from the whole dataclass, not from a hand-picked subset


def _mnist_copy(tmp_path):
    d = tmp_path / "mnist"
    shutil.copytree(PACKAGE_DATA, d)
    return d


@pytest.mark.parametrize("script_name", ["unlearn.py", "train_baseline.py"])
@pytest.mark.parametrize("damage,says", [("missing", "is missing (expected t10k-labels-idx1-ubyte.gz or "),
                                         ("truncated", "is corrupt (Compressed file ended before the end-of-stream"),
                                         ("checksum", "failed its checksum: uncompressed SHA-256 ")])
def test_bad_data_file_is_one_line_exit_1_before_anything_is_written(script, tmp_path, script_name, damage, says):
    d = _mnist_copy(tmp_path / "data")
    f = d / "t10k-labels-idx1-ubyte.gz"
    if damage == "missing":
        f.unlink()
    elif damage == "truncated":
        f.write_bytes(f.read_bytes()[:2000])
    else:
        blob = bytearray(gzip.decompress(f.read_bytes()))
        blob[-1] ^= 1
        f.write_bytes(gzip.compress(bytes(blob)))
    code, err = script(script_name, "--data-dir", d, "--run-dir", "r")
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: MNIST file {f} {says}"), err
