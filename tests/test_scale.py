"""Scaling options: mixed precision (Fisher and EWC stay float32), SyncBatchNorm, the accelerate config."""
import types

import pytest
import torch
import torch.nn as nn
import yaml
from accelerate import Accelerator
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

import sa_dist.amnesia
import sa_dist.objective
from conftest import ROOT, sa_config, torchrun
from sa_dist.checkpoint import load_checkpoint
from sa_dist.cli.flags import Parser, add_config_args, config_from_args
from sa_dist.data import loaders
from sa_dist.fisher import diag_fisher
from sa_dist.models import ModelConfig, build_model
from sa_dist.runtime import wrap_model
from sa_dist.train import train_vae
from sa_dist.utils import UsageError


def fake_accelerator(device: str, processes: int):
    return types.SimpleNamespace(device=torch.device(device), num_processes=processes)


@pytest.mark.parametrize("device,processes,sync_bn,converted", [
    ("cuda", 2, True, True), ("cuda", 2, False, False), ("cuda", 1, True, False), ("cpu", 2, True, False)])
def test_batch_norm_becomes_sync_batch_norm_only_on_several_cuda_processes(device, processes, sync_bn, converted):
    for arch in ("conv", "linear"):
        model = wrap_model(fake_accelerator(device, processes), build_model(ModelConfig(arch=arch)), sync_bn)
        kinds = {type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        assert kinds == ({nn.SyncBatchNorm} if converted else {nn.BatchNorm1d} if arch == "linear"
                         else {nn.BatchNorm2d}), (arch, kinds)


def _args(*argv):
    p = Parser()
    add_config_args(p)
    return config_from_args(p.parse_args(list(argv)))


def test_sync_bn_flag_and_accelerate_launch_mixed_precision_reach_the_run_config(monkeypatch):
    assert _args().sync_bn is True and _args("--no-sync-bn").sync_bn is False
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what a plain `accelerate launch` sets
    assert _args().mixed_precision == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision bf16 / config
    assert _args().mixed_precision == "bf16"
    assert _args("--mixed-precision", "no").mixed_precision == "no"  # the script's flag wins
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UsageError, match="--mixed-precision must be one of"):
        _args()


def test_fp16_on_cpu_is_refused_in_one_line(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, _, err = cli("scripts/unlearn.py", "--mixed-precision", "fp16", "--run-dir", tmp_path / "r")
    assert code == 2 and err == ["error: --mixed-precision fp16 needs a GPU; on CPU use bf16 or no"]


def _record_dtypes(model: nn.Module, seen: list):
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    return first.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))


def test_bf16_trains_and_unlearns_under_autocast_while_fisher_and_ewc_stay_float32(monkeypatch):
    ewc_dtypes = []
    real_ewc = sa_dist.objective.ewc_penalty

    def ewc(*a):
        a = [list(x) for x in a]
        out = real_ewc(*a)
        ewc_dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(sa_dist.objective, "ewc_penalty", ewc)
    try:
        AcceleratorState._reset_state(reset_partial_state=True)
        acc = Accelerator(cpu=True, mixed_precision="bf16")
        set_seed(0)
        model, seen = build_model(ModelConfig(arch="linear", width=64)), []
        hook = _record_dtypes(model, seen)
        tr, te = loaders(128, seed=0, limit=512)
        trained, hist = train_vae(model, tr, te, acc, epochs=1, lr=1e-3)
        hook.remove()
        assert torch.bfloat16 in seen  # the forward ran under bf16 autocast
        assert all(p.dtype == torch.float32 for p in trained.state_dict().values() if p.is_floating_point())
        fisher = diag_fisher(acc.prepare(trained), n_samples=200, seed=0, batch=200, accelerator=acc, progress=False)
        assert all(v.dtype == torch.float32 for v in fisher.values())
        seen.clear()
        monkeypatch.setattr(sa_dist.amnesia, "wrap_model", lambda a, m, sync: (_record_dtypes(m, seen), m)[1])
        cfg = sa_config(**{"model.width": 64, "sa.sa_epochs": 1, "sa.n_replay": 256, "mixed_precision": "bf16"})
        after, rows = sa_dist.amnesia.selective_amnesia(trained, fisher, acc, cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert torch.bfloat16 in seen and set(ewc_dtypes) == {torch.float32}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows) and len(rows) == 2
    assert all(p.dtype == torch.float32 for p in after.state_dict().values() if p.is_floating_point())


def test_multi_gpu_accelerate_config_is_valid_and_documented():
    cfg = load_config_from_file(str(ROOT / "accelerate_multi_gpu.yaml"))
    assert cfg.distributed_type == "MULTI_GPU" and cfg.num_machines == 1 and cfg.mixed_precision == "no"
    assert cfg.main_process_port == 29500 and cfg.num_processes >= 2
    text = (ROOT / "accelerate_multi_gpu.yaml").read_text()
    for key in ("num_processes", "mixed_precision", "main_process_port"):  # each field a comment
        line = next(l for l in text.splitlines() if l.startswith(key + ":"))
        assert "#" in line, line
    assert set(yaml.safe_load(text)) >= {"num_processes", "mixed_precision", "main_process_port"}


@pytest.mark.slow
def test_ranks_split_the_global_batch_and_sync_bn_off_keeps_the_main_process_statistics(tmp_path):
    saved = {}
    for mode in ("sync", "nosync"):
        (tmp_path / mode).mkdir()
        r = torchrun(ROOT / "tests" / "workers" / "ddp_train.py", tmp_path / mode, "linear", mode)
        assert r.returncode == 0, r.stderr[-2000:]
        ranks = [torch.load(tmp_path / mode / f"rank{i}.pt") for i in (0, 1)]
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # identical ranks either way
        assert [(tmp_path / mode / f"steps{i}.txt").read_text() for i in (0, 1)] == ["8", "8"]  # 1024 / 128
        model, meta = load_checkpoint(tmp_path / mode / "main.safetensors")
        saved[mode] = model.state_dict()
        assert meta["processes"] == "2" and all(torch.equal(ranks[0][k], v) for k, v in saved[mode].items())
    stats = [k for k in saved["sync"] if "running_" in k]
    assert stats and all(not torch.equal(saved["sync"][k], saved["nosync"][k]) for k in stats)
    assert all(torch.equal(saved["sync"][k], saved["nosync"][k]) for k in saved["sync"] if k not in stats
               and not k.endswith("num_batches_tracked"))  # the same weights: only the statistics differ
