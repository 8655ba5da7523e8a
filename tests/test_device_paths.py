"""GPU and multi-GPU code paths, checked on the CPU with stand-ins: the fp16 GradScaler's first-step overflow in
``naive``, device consistency, per-rank noise, TF32 around the Fisher, cache decisions taken by the main process,
and out-of-memory handling."""
import json
import math
import runpy
import types
from pathlib import Path

import pytest
import torch

from conftest import LIMIT, ROOT
from sa_dist import runtime
from sa_dist.config import RunConfig, SAConfig, TrainConfig
from sa_dist.methods import Context, naive
from sa_dist.utils import UserError


def _naive_cfg(**sa):
    return RunConfig(train=TrainConfig(limit=LIMIT), sa=SAConfig(forget=[2], sa_epochs=1, n_replay=1280, batch=64,
                                                                 lr=1e-3, **sa))


def _fp16_like(accelerator, scaler):
    """What Accelerate does under fp16 on a GPU (a GradScaler scales the loss, the optimizer steps through it,
    clip_grad_norm_ unscales first), with a CPU GradScaler: Accelerate builds none on CPU."""
    accelerator.scaler, accelerator.native_amp = scaler, True
    accelerator.unscale_gradients = lambda optimizer=None: [scaler.unscale_(o.optimizer)
                                                            for o in accelerator._optimizers]
    return accelerator


def test_naive_under_a_grad_scaler_skips_the_first_overflowing_step_instead_of_stopping(tiny_baseline, accelerator):
    # a scale so large that the first scaled loss overflows (as fp16's 65536 does on a GPU), backed off at once
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38, backoff_factor=1e-30)
    acc = _fp16_like(accelerator, scaler)
    model, _ = tiny_baseline
    out = naive.unlearn(Context(_naive_cfg(), model, None, acc))
    assert out.info["stopped"] is None, out.info["stopped"]
    assert out.info["scaler_skipped_steps"] == 1
    assert len(out.history) == out.info["budget_steps"] - 1 == 19  # every other step updated the weights
    assert scaler.get_scale() < 1e38
    assert any(not torch.equal(a, b) for a, b in zip(out.model.parameters(), model.parameters()))


def test_naive_without_a_scaler_reports_no_skipped_steps_and_is_seeded_by_sa_seed(tiny_baseline, accelerator):
    model, _ = tiny_baseline
    runs = []
    for junk in (1, 2):  # whatever the global RNG went through before, the same --sa-seed gives the same model
        torch.manual_seed(junk)
        runs.append(naive.unlearn(Context(_naive_cfg(), model, None, accelerator)))
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.equal(a, b)
    assert runs[0].info["scaler_skipped_steps"] == 0


# ---- out of memory ---------------------------------------------------------------------------------------------


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 102400000000 bytes. Error code 12 (Cannot allocate memory)")
CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 79.15 GiB of which "
            "1.02 GiB is free.")


@pytest.mark.parametrize("error,size", [(RuntimeError(CPU_OOM), "95.4 GiB"),
                                        (torch.OutOfMemoryError(CUDA_OOM), "2.5 GiB"),
                                        (RuntimeError("out of memory"), None)])
def test_memory_guard_turns_an_allocation_failure_into_one_line_naming_the_setting(error, size):
    with pytest.raises(UserError) as e:
        with runtime.memory_guard("building the model", "lower --z-dim or --width"):
            raise error
    msg = str(e.value)
    assert msg.startswith("out of memory while building the model") and msg.endswith("lower --z-dim or --width")
    assert "\n" not in msg and e.value.exit_code == 1
    assert (f"an allocation of {size} failed" in msg) if size else "allocation" not in msg


def test_memory_guard_lets_other_errors_through():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with runtime.memory_guard("training", "lower --batch"):
            raise RuntimeError("shape mismatch")


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError(CUDA_OOM)


@pytest.mark.parametrize("target,stage,advice", [
    ("sa_dist.train.build_model", "building the model", "--z-dim"),
    ("sa_dist.train.train_vae", "training the baseline", "--batch"),
    ("sa_dist.cache.diag_fisher", "computing the Fisher", "fisher_batch"),
    ("sa_dist.amnesia.regularised_objective", "unlearning", "--surrogate-batch"),
])
def test_out_of_memory_in_each_stage_names_it_and_leaves_no_run_directory(tmp_path, monkeypatch, tiny_baseline,
                                                                        target, stage, advice):
    from sa_dist.config import with_values
    from sa_dist.pipeline import run_unlearn
    from conftest import sa_config

    monkeypatch.setattr(target, _oom)
    cfg = with_values(sa_config(), {"train.limit": LIMIT, "train.epochs": 1, "sa.n_fisher": 200,
                                    "eval_samples": 50})
    checkpoint = None if "train" in target else str(tiny_baseline[1])
    with pytest.raises(UserError) as e:
        run_unlearn(cfg, run_dir=str(tmp_path / "run"), checkpoint=checkpoint)
    assert str(e.value).startswith(f"out of memory while {stage}") and advice in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_failed_run_keeps_a_run_directory_the_user_gave_with_content(tmp_path, monkeypatch):
    from sa_dist.pipeline import run_unlearn
    from conftest import sa_config

    given = tmp_path / "mine"
    given.mkdir()
    (given / "notes.txt").write_text("keep me")
    monkeypatch.setattr("sa_dist.train.build_model", _oom)
    with pytest.raises(UserError):
        run_unlearn(sa_config(**{"train.limit": LIMIT}), run_dir=str(given))
    assert (given / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_a_model_the_machine_cannot_hold_is_one_line_and_no_run_directory(tmp_path):
    from conftest import run_script

    r = run_script("scripts/unlearn.py", "--z-dim", "100000000", "--limit", "500", "--run-dir", tmp_path / "x")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: out of memory while building the model (an allocation of ")
    assert lines[-1].endswith("GiB failed); lower --z-dim or --width")
    assert not (tmp_path / "x").exists()


# ---- the uniform surrogate's z-blind nELBO ----------------------------------------------------------------------


def test_the_uniform_surrogates_reference_is_the_z_blind_decoders_nelbo_not_a_floor():
    from sa_dist import surrogate

    assert surrogate.Uniform.z_blind == pytest.approx(784 * math.log(2))
    assert not hasattr(surrogate.Uniform, "floor")
    assert surrogate.z_blind_nelbo({"z_blind": 1.5, "after": 2.0}) == 1.5
    assert surrogate.z_blind_nelbo({"floor": 543.4, "after": 544.0}) == 543.4  # results.json of older runs
    assert surrogate.z_blind_nelbo({"after": 544.0}) is None


def test_the_surrogate_curve_shows_values_below_the_z_blind_nelbo(monkeypatch):
    from sa_dist.analysis import plots

    figs = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path, dpi=150: figs.append(fig))
    rows = [{"step": s, "surrogate_nelbo": v, "replay_nelbo": 100.0, "ewc": 1e-3}
            for s, v in ((1, 3000.0), (2, 600.0), (3, 540.0), (4, 400.0))]  # the last two below 543.4
    plots.plot_sa_curves(rows, "unused.png", 784 * math.log(2))
    ax = figs[0].axes[0]
    assert ax.get_yscale() != "log"  # a log axis of (nELBO - 543.4) drops the last two points silently
    shown = [y for line in ax.get_lines() for y in line.get_ydata()]
    assert min(shown) < 0 and len(ax.get_lines()[0].get_ydata()) == 4


def _results(tmp_path, nelbo):
    d = tmp_path / "run"
    d.mkdir()
    side = {"forgotten_p_class": {"2": 0.01}, "forgotten_entropy": {"2": 0.1}, "retained_sample_acc": 0.97,
            "retained_test_nelbo": 96.0}
    (d / "results.json").write_text(json.dumps({
        "config": {"model": {"arch": "conv"}, "sa": {"lam": 1.0}}, "forget_classes": [2],
        "summary": {"before": side, "after": side},
        "surrogate": {"kind": "images.npy", "ideal": {"p_class": {"2": 0.0}, "entropy": 0.1},
                      "samples": {"entropy": 0.2}, "nelbo": nelbo},
        "timing_s": {"fisher": 1.0, "unlearn": 10.0, "baseline": 200.0}}))
    return d


@pytest.mark.parametrize("nelbo,shown", [({"before": 900.0, "after": 600.0}, "| 600.0 (–) |"),
                                         ({"before": 900.0, "after": 544.0, "floor": 543.4}, "(0.11%)"),
                                         ({"before": 900.0, "after": 544.0, "z_blind": 543.4}, "(0.11%)")])
def test_sa_table_reads_any_surrogate_block_and_hard_codes_no_reference(tmp_path, nelbo, shown):
    table = runpy.run_path(str(ROOT / "benchmarks" / "sa_table.py"))
    md = table["markdown"]([table["row"](_results(tmp_path, nelbo))])
    assert "543.4" not in md.splitlines()[0] and shown in md


# ---- λ against the paper's scale --------------------------------------------------------------------------------

def test_lambda_here_is_lambda_paper_over_256_beside_the_reference_implementations_summed_losses():
    """The reference implementation sums each term over a batch of 256 and weighs EWC by λ_paper; sa_dist averages.
    Run both objectives on the same batches: with λ = λ_paper / 256 the gradients differ by the factor 256 only,
    so the same optimum and the same relative weight of EWC (Adam's steps are scale-free, so the same updates).
    The help and the docs state this conversion."""
    from dataclasses import fields

    from sa_dist.cli.flags import flags_markdown
    from sa_dist.models import ModelConfig, build_model, negative_elbo
    from sa_dist.objective import ewc_penalty, sa_objective

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="linear", width=16)).eval()
    n, lam_paper = 256, 100.0
    surrogate = (torch.rand(n, 1, 28, 28), torch.full((n,), 2))
    replay = (torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,)))
    fisher = [torch.rand_like(p) for p in model.parameters()]
    anchor = [p.detach() + 0.1 * torch.randn_like(p) for p in model.parameters()]

    def grads(loss):
        model.zero_grad()
        torch.manual_seed(1)  # the same reparameterisation noise for both objectives
        loss().backward()
        return [p.grad.clone() for p in model.parameters()]

    ours = grads(lambda: sa_objective(model, surrogate, replay, fisher, anchor, lam=lam_paper / n, gamma=1.0).total)
    ref = grads(lambda: negative_elbo(model, *surrogate).sum() + negative_elbo(model, *replay).sum()
                + lam_paper * ewc_penalty(model.parameters(), fisher, anchor))
    assert all(torch.allclose(r, n * o, rtol=1e-4, atol=1e-5) for r, o in zip(ref, ours))
    off = grads(lambda: sa_objective(model, surrogate, replay, fisher, anchor, lam=lam_paper, gamma=1.0).total)
    assert not all(torch.allclose(r, n * o, rtol=1e-2) for r, o in zip(ref, off))  # λ_paper unconverted: not so
    lam_help = next(f for f in fields(SAConfig) if f.name == "lam").metadata["help"]
    assert "/ 256" in lam_help and "0.39" in lam_help and "/ 256" in flags_markdown()
    assert "λ_paper / 256" in (ROOT / "docs" / "method.md").read_text()
    assert "λ_paper / 256" in (ROOT / "README.md").read_text()


# ---- TF32 off around the Fisher ---------------------------------------------------------------------------------

@pytest.fixture
def tf32_on():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _tf32():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_exact_float32_turns_tf32_off_and_restores_it(tf32_on):
    with runtime.exact_float32():
        assert _tf32() == (False, False)
    assert _tf32() == (True, True)
    with pytest.raises(ValueError):  # restored on an error too
        with runtime.exact_float32():
            raise ValueError
    assert _tf32() == (True, True)


def test_the_fisher_is_computed_without_tf32(tf32_on, monkeypatch):
    from sa_dist import fisher
    from sa_dist.models import ModelConfig, build_model

    seen = []
    real = fisher.sum_sq_grads
    monkeypatch.setattr(fisher, "sum_sq_grads", lambda *a: seen.append(_tf32()) or real(*a))
    fisher.diag_fisher(build_model(ModelConfig(arch="linear", width=32)), 200, seed=0, batch=100, progress=False)
    assert seen == [(False, False)] * 2 and _tf32() == (True, True)


# ---- device consistency -----------------------------------------------------------------------------------------


class OtherDeviceAccelerator:
    """An accelerator whose device is not the CPU (the meta device stands in for cuda:0), with a reduce that refuses
    tensors elsewhere, as NCCL refuses CPU tensors."""

    device = torch.device("meta")
    process_index, num_processes, is_main_process = 0, 2, True

    def unwrap_model(self, model):
        return model

    def reduce(self, tensor, reduction="sum"):
        if tensor.device != self.device:
            raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")
        return tensor


def test_check_device_names_what_is_on_another_device():
    acc = types.SimpleNamespace(device=torch.device("meta"))
    runtime.check_device(acc, torch.zeros(2, device="meta"), torch.nn.Linear(2, 2, device="meta"))
    with pytest.raises(runtime.DeviceMismatch, match=r"cpu.*meta"):
        runtime.check_device(acc, torch.zeros(2, device="meta"), torch.nn.Linear(2, 2))
    cuda1 = types.SimpleNamespace(device=torch.device("cuda", 1))
    with pytest.raises(runtime.DeviceMismatch, match="cuda:0"):
        runtime.check_device(cuda1, types.SimpleNamespace(device=torch.device("cuda", 0)))  # a tensor stand-in


def test_the_fisher_refuses_a_model_off_the_accelerators_device_before_any_collective():
    from sa_dist.fisher import diag_fisher
    from sa_dist.models import ModelConfig, build_model

    with pytest.raises(runtime.DeviceMismatch, match="accelerator.device"):
        diag_fisher(build_model(ModelConfig(arch="linear", width=32)), 200, seed=0, batch=100,
                    accelerator=OtherDeviceAccelerator(), progress=False)


def test_the_api_computes_the_fisher_on_the_accelerators_device(monkeypatch):
    import sa_dist.api as api
    from sa_dist.models import ModelConfig, build_model

    seen = {}
    monkeypatch.setattr(api, "diag_fisher", lambda model, *a, **k: seen.setdefault("device", next(
        model.parameters()).device) and {})
    monkeypatch.setattr(api, "selective_amnesia", lambda model, *a, **k: (model, []))
    m = api.SelectiveAmnesiaVAE(arch="linear", accelerator=OtherDeviceAccelerator())
    m.original = build_model(ModelConfig(arch="linear", width=32))
    m.selective_amnesia(epochs=1, n_fisher=200)
    assert seen["device"] == torch.device("meta")
    assert next(m.original.parameters()).device.type == "cpu"  # the object's theta* stays where it was


# ---- cache decisions: the main process decides ------------------------------------------------------------------

def _rank1(monkeypatch, main_says):
    """Rank 1 of 2, whose broadcast delivers the main process's ``main_says``."""
    def broadcast(objects, from_process=0):
        objects[0] = main_says
        return objects

    monkeypatch.setattr(runtime, "broadcast_object_list", broadcast, raising=False)
    return types.SimpleNamespace(device=torch.device("cpu"), process_index=1, num_processes=2,
                                 is_main_process=False, wait_for_everyone=lambda: None)


@pytest.mark.parametrize("main_says", [True, False])
def test_every_rank_follows_the_main_processs_cache_decision(tmp_path, monkeypatch, main_says):
    from sa_dist.cache import cached_everywhere

    here = tmp_path / "entry.safetensors"
    if not main_says:
        here.write_bytes(b"x")  # this rank sees a file the main process does not
    assert cached_everywhere(_rank1(monkeypatch, main_says), here) is main_says


def test_a_rank_that_misses_the_fisher_file_loads_it_when_the_main_process_has_it(monkeypatch):
    import sa_dist.cache as cache
    from conftest import sa_config

    acc = _rank1(monkeypatch, True)
    monkeypatch.setattr(cache, "fisher_path", lambda key: Path("/nonexistent/fisher.safetensors"))
    monkeypatch.setattr(cache, "load_fisher", lambda path, model: {"w": torch.ones(1)})
    monkeypatch.setattr(cache, "read_metadata", lambda path: {"seconds": "2.5"})
    monkeypatch.setattr(cache, "diag_fisher", lambda *a, **k: pytest.fail("computed alone: the job would hang"))
    fisher, seconds, cached = cache.get_fisher(sa_config(), torch.nn.Linear(1, 1), "key", acc)
    assert cached and seconds == 2.5


# ---- per-rank reparameterisation noise --------------------------------------------------------------------------

def _noise_after_rank_noise(rank, seed=49):
    from accelerate.utils import set_seed

    set_seed(seed)  # what every rank does before prepare
    runtime.rank_noise(types.SimpleNamespace(process_index=rank, num_processes=2))
    return torch.randn(1000)


def test_each_rank_draws_its_own_noise_and_rank_0_keeps_the_seeds_stream():
    from accelerate.utils import set_seed

    set_seed(49)
    plain = torch.randn(1000)
    r0, r1, r2 = (_noise_after_rank_noise(r) for r in (0, 1, 2))
    assert torch.equal(r0, plain)  # one process (rank 0): the numbers it always had
    assert not torch.equal(r0, r1) and not torch.equal(r1, r2)
    assert abs(torch.corrcoef(torch.stack([r0, r1]))[0, 1]) < 0.1
    assert torch.equal(r1, _noise_after_rank_noise(1))  # same seed, same numbers on every rank
    assert not torch.equal(r1, _noise_after_rank_noise(1, seed=50))


def _spy_on_prepare_then_rank_noise(monkeypatch, module, accelerator) -> list:
    """Record, in order, every ``accelerator.prepare`` and every ``rank_noise`` call that ``module`` makes."""
    calls, real_prepare, real_noise = [], accelerator.prepare, module.rank_noise
    monkeypatch.setattr(accelerator, "prepare", lambda *a, **k: calls.append("prepare") or real_prepare(*a, **k))
    monkeypatch.setattr(module, "rank_noise", lambda *a, **k: calls.append("rank_noise") or real_noise(*a, **k))
    return calls


@pytest.mark.parametrize("loop", ["train_vae", "selective_amnesia", "naive"])
def test_every_training_loop_gives_each_rank_its_own_noise_after_prepare(loop, tiny_baseline, accelerator,
                                                                         monkeypatch):
    """Each loop run for a step or two: rank_noise is called once, after the last prepare (so the loaders'
    shuffles keep the shared seed and the noise is each rank's own)."""
    from sa_dist import amnesia, train
    from sa_dist.data import loaders
    from sa_dist.fisher import diag_fisher
    from sa_dist.models import ModelConfig, build_model

    model = tiny_baseline[0]
    module = {"train_vae": train, "selective_amnesia": amnesia, "naive": naive}[loop]
    calls = _spy_on_prepare_then_rank_noise(monkeypatch, module, accelerator)
    if loop == "train_vae":
        tr, te = loaders(200, seed=0, limit=400)
        train.train_vae(build_model(ModelConfig(arch="linear", width=16)), tr, te, accelerator, epochs=1, lr=1e-3)
    elif loop == "selective_amnesia":
        cfg = RunConfig(train=TrainConfig(limit=LIMIT), sa=SAConfig(forget=[2], sa_epochs=1, n_replay=128, batch=64))
        cfg.model = model.cfg
        amnesia.selective_amnesia(model, diag_fisher(model, 50, seed=0, batch=50, accelerator=accelerator),
                                  accelerator, cfg)
    else:
        naive.unlearn(Context(_naive_cfg(), model, None, accelerator))
    assert calls.count("rank_noise") == 1 and calls[-1] == "rank_noise" and "prepare" in calls, calls


@pytest.mark.slow
def test_two_gloo_ranks_draw_different_noise_and_still_split_one_shuffled_batch(tmp_path):
    from conftest import torchrun

    r = torchrun(ROOT / "tests" / "workers" / "rank_noise.py", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert not torch.equal(r0["noise"], r1["noise"])
    for a, b in zip(r0["shards"], r1["shards"]):  # halves of the same global batch: disjoint, 64 + 64
        assert len(a) == len(b) == 64 and not set(a) & set(b)
    assert r0["shards"][0] != list(range(64))  # shuffled
