import os
from pathlib import Path

import pytest
import torch
import yaml

from sa_dist.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint, save_tensors, tensors_sha256
from sa_dist.cli.flags import Parser, add_config_args, add_run_args, config_from_args
from sa_dist.config import RunConfig, load_config, save_config
from sa_dist.models import ModelConfig, build_model
from sa_dist.utils import UsageError, UserError, atomic_write_text


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    m = build_model(ModelConfig(arch="conv", z_dim=4, width=8))
    m.enc[1].running_mean.fill_(0.25)  # buffers travel too
    save_checkpoint(tmp_path / "c.safetensors", m, extra={"note": "x"})
    m2, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert m2.cfg == m.cfg and meta["format_version"] == str(FORMAT_VERSION)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind


def test_the_weights_digest_ignores_metadata_and_sees_any_changed_value(tmp_path):
    w = {"b": torch.zeros(3), "a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(7)}
    save_tensors(tmp_path / "one.safetensors", w, {"seconds": 125.1})
    save_tensors(tmp_path / "two.safetensors", dict(reversed(list(w.items()))), {"seconds": 131.7, "acc": 0.97})
    assert (tmp_path / "one.safetensors").read_bytes() != (tmp_path / "two.safetensors").read_bytes()
    assert tensors_sha256(tmp_path / "one.safetensors") == tensors_sha256(tmp_path / "two.safetensors")
    w["a"][1, 2] = torch.nextafter(w["a"][1, 2], torch.tensor(10.0))  # one ulp
    save_tensors(tmp_path / "three.safetensors", w, {"seconds": 125.1})
    assert tensors_sha256(tmp_path / "three.safetensors") != tensors_sha256(tmp_path / "one.safetensors")
    save_tensors(tmp_path / "four.safetensors", {**w, "a": w["a"].double()}, {})
    assert tensors_sha256(tmp_path / "four.safetensors") != tensors_sha256(tmp_path / "three.safetensors")
    save_tensors(tmp_path / "five.safetensors", {**w, "a": w["a"].reshape(3, 2)}, {})  # same bytes, other shape
    assert tensors_sha256(tmp_path / "five.safetensors") != tensors_sha256(tmp_path / "three.safetensors")


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    m = build_model(ModelConfig(arch="linear", width=64))
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m)
    with pytest.raises(UserError, match="arch=linear, but the run asks for arch=conv"):
        load_checkpoint(path, expect=ModelConfig(arch="conv"))
    with pytest.raises(UserError, match="z_dim=8, but the run asks for z_dim=4"):
        load_checkpoint(path, expect=ModelConfig(arch="linear", z_dim=4))
    (tmp_path / "t.safetensors").write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "t.safetensors")
    save_tensors(tmp_path / "n.safetensors", m.state_dict(), {"model_config": {"arch": "linear"}})
    blob = (tmp_path / "n.safetensors").read_bytes().replace(b'"format_version":"1"', b'"format_version":"9"')
    (tmp_path / "n.safetensors").write_bytes(blob)
    with pytest.raises(UserError, match="format version 9"):
        load_checkpoint(tmp_path / "n.safetensors")


def test_yaml_round_trip_and_shipped_configs(tmp_path):
    cfg = RunConfig()
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    shipped = sorted((Path(__file__).parents[1] / "sa_dist" / "configs").glob("*.yaml"))
    assert [p.stem for p in shipped] == ["conv", "linear"]
    assert [load_config(p).model.arch for p in shipped] == ["conv", "linear"]


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """PyYAML's YAML 1.1 reads 3e-4 as a string, which the config then refused as not a number."""
    (tmp_path / "c.yaml").write_text("train: {lr: 3e-4}\nsa: {lam: 1E2, tar_lr: 2.5e-3, surrogate: blank}")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.train.lr, cfg.sa.lam, cfg.sa.tar_lr, cfg.sa.surrogate) == (3e-4, 100.0, 2.5e-3, "blank")


@pytest.mark.parametrize("text,match", [("train: {epochs: 5, foo: 1}", "unknown key 'foo'"),
                                        ("train: {epochs: five}", "train.epochs: expected int"),
                                        ("bogus: 1", "unknown key 'bogus'")])
def test_bad_yaml_is_a_usage_error(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UsageError, match=match):
        load_config(tmp_path / "c.yaml")


def _args(*argv):
    p = Parser()
    add_config_args(p)
    add_run_args(p)
    return p.parse_args(list(argv))


def test_flags_override_the_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"arch": "linear"}, "sa": {"lam": 5.0}}))
    cfg = config_from_args(_args("--config", str(tmp_path / "c.yaml"), "--lam", "7", "--forget", "3", "8"))
    assert cfg.model.arch == "linear" and cfg.model.width == 512 and cfg.sa.lam == 7.0 and cfg.sa.forget == [3, 8]


@pytest.mark.parametrize("argv,match", [(["--forget", "10"], "--forget takes classes in 0-9"),
                                        (["--forget", "2", "2"], "repeated"),
                                        (["--forget", *map(str, range(10))], "cannot take all"),
                                        (["--lam", "-1"], "--lam must be a finite number >= 0"),
                                        (["--gamma", "nan"], "--gamma must be a finite"),
                                        (["--lr", "0"], "--lr must be a positive"),
                                        (["--epochs", "0"], "--epochs must be a positive"),
                                        (["--z-dim", "0"], "--z-dim must be >= 1"),
                                        (["--arch", "mlp"], "--arch must be one of"),
                                        (["--surrogate", "noise"], "--surrogate must be")])
def test_bad_values_name_the_argument(argv, match):
    with pytest.raises(UsageError, match=match):
        config_from_args(_args(*argv))


def test_atomic_writes_leave_no_temp_file_and_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
