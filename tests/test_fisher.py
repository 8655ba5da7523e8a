"""The diagonal Fisher: the fast per-sample path against the one-sample-at-a-time loop, sample determinism,
sharding over two processes, and the Fisher file."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sa_dist.fisher as fisher
from conftest import ROOT, torchrun
from sa_dist.checkpoint import load_fisher, save_checkpoint, save_fisher
from sa_dist.fisher import diag_fisher, fisher_batch, sum_sq_grads, sum_sq_grads_loop
from sa_dist.models import ModelConfig, build_model
from sa_dist.utils import UserError

SMALL = {"conv": ModelConfig(arch="conv", width=4, z_dim=3), "linear": ModelConfig(arch="linear", width=32, z_dim=3)}


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is as fast, and immune to a busy machine (2 OpenMP threads on 2 shared cores
    can stall for seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(arch: str, seed: int = 0) -> nn.Module:
    """A small cVAE whose batch norms have non-trivial running stats and affine parameters."""
    torch.manual_seed(seed)
    model = build_model(SMALL[arch])
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.3, 3)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def elbo_in_model_dtype(model, x, c, eps=None):
    """models.negative_elbo, without its cast to float32: that cast rounds float64 logits, and the float32 BCE gradient
    (sigmoid(logits) - x, nearly cancelling on self-generated x) then differs in the last ulp between batched
    and one-sample kernels, which hides float64 exactness."""
    logits, mu, logvar = model(x, c, eps)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    return rec + 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def assert_dicts_close(got, want, rtol, atol=0.0):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_fast_path_equals_loop_float64(arch, monkeypatch):
    monkeypatch.setattr(fisher, "negative_elbo", elbo_in_model_dtype)
    model = small_model(arch).double()
    x, c, eps = fisher_batch(model, seed=1, start=0, count=12)
    assert x.dtype == eps.dtype == torch.float64
    fast, loop = sum_sq_grads(model, x, c, eps), sum_sq_grads_loop(model, x, c, eps)
    assert fast.keys() == dict(model.named_parameters()).keys()
    assert all(v.abs().max() > 0 for v in loop.values())
    assert_dicts_close(fast, loop, rtol=1e-6)


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_fast_path_with_package_elbo(arch):
    """With the package's float32 loss the paths agree to float32 rounding of the (cancelling) decoder terms."""
    model = small_model(arch).double()
    x, c, eps = fisher_batch(model, seed=2, start=0, count=8)
    fast, loop = sum_sq_grads(model, x, c, eps), sum_sq_grads_loop(model, x, c, eps)
    for name in loop:
        assert (fast[name] - loop[name]).abs().max() <= 1e-4 * loop[name].abs().max(), name


class OddGeometry(nn.Module):
    """Convolutions with stride, padding, dilation and output padding that the cVAEs do not use."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(2, 1), dilation=(1, 2))
        self.bn = nn.BatchNorm2d(3)
        self.up = nn.ConvTranspose2d(3, 2, 3, stride=3, padding=1, dilation=2, output_padding=1)
        self.head = nn.Linear(2, 4)

    def forward(self, x):
        return self.head(self.up(torch.tanh(self.bn(self.conv(x)))).permute(0, 2, 3, 1))  # (B, H, W, 4)


def test_general_conv_geometry(monkeypatch):
    torch.manual_seed(0)
    net = OddGeometry().double().eval()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.3, 3)
    x = torch.randn(5, 2, 9, 8, dtype=torch.float64)
    monkeypatch.setattr(fisher, "negative_elbo", lambda model, x, c, eps: model(x).square().flatten(1).sum(1))
    fast = sum_sq_grads(net, x, None, None)
    loop = sum_sq_grads_loop(net, x, torch.zeros(5), torch.zeros(5))
    assert_dicts_close(fast, loop, rtol=1e-9)


def test_unsupported_layer_is_refused():
    model = small_model("linear")
    model.dec[1] = nn.LayerNorm(model.dec[1].num_features)
    x, c, eps = fisher_batch(model, 0, 0, 4)
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        sum_sq_grads(model, x, c, eps)


def test_samples_depend_only_on_seed_and_index():
    model = small_model("conv")
    whole = fisher_batch(model, seed=5, start=0, count=300)
    parts = [fisher_batch(model, seed=5, start=s, count=100) for s in (0, 100, 200)]
    odd = fisher_batch(model, seed=5, start=150, count=120)
    for i, t in enumerate(whole):
        assert torch.equal(t, torch.cat([p[i] for p in parts]))
        assert torch.equal(t[150:270], odd[i])
    assert set(whole[1].tolist()) == set(range(10))
    assert not torch.equal(whole[2], fisher_batch(model, seed=6, start=0, count=300)[2])


def test_diag_fisher_is_mean_of_squared_grads():
    model = small_model("conv")
    n = 250  # the last block is cut
    x, c, eps = fisher_batch(model, seed=3, start=0, count=n)
    want = {k: v / n for k, v in sum_sq_grads(model, x, c, eps).items()}
    got = diag_fisher(model, n_samples=n, seed=3, batch=200, progress=False)
    assert_dicts_close(got, want, rtol=1e-5, atol=0)
    assert all(v.dtype == torch.float32 for v in got.values())


def test_diag_fisher_ignores_mixed_precision():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    model = small_model("linear")
    want = diag_fisher(model, n_samples=200, seed=0, batch=500, progress=False)
    try:
        AcceleratorState._reset_state(reset_partial_state=True)  # other tests may have made a float32 state
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        prepared = accelerator.prepare(model)
        assert "_original_forward" in prepared.__dict__  # forward now runs under bf16 autocast
        got = diag_fisher(prepared, n_samples=200, seed=0, batch=500, accelerator=accelerator, progress=False)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert_dicts_close(got, want, rtol=1e-6)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """scripts/compute_fisher.py under torchrun with 2 CPU processes equals diag_fisher in this process."""
    model = small_model("conv", seed=1)
    save_checkpoint(tmp_path / "model.safetensors", model)
    out = tmp_path / "fisher.safetensors"
    proc = torchrun(ROOT / "scripts" / "compute_fisher.py", "--checkpoint", tmp_path / "model.safetensors",
                    "--n-samples", 650, "--seed", 4, "--batch", 200, "--out", out, timeout=180,
                    env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    want = diag_fisher(model, n_samples=650, seed=4, batch=500, progress=False)
    assert_dicts_close(load_fisher(out, model), want, rtol=1e-5, atol=0)


def test_script_reports_user_errors(tmp_path, cli):
    code, _, err = cli("scripts/compute_fisher.py", "--checkpoint", tmp_path / "missing.safetensors",
                       "--out", tmp_path / "f.safetensors")
    assert code == 1 and err == [f"error: checkpoint {tmp_path / 'missing.safetensors'} does not exist"]


def test_save_load_round_trip_and_mismatch(tmp_path):
    model = small_model("linear")
    fish = diag_fisher(model, n_samples=100, seed=0, batch=500, progress=False)
    path = tmp_path / "fisher.safetensors"
    save_fisher(path, fish, {"n_samples": 100, "seed": 0})
    assert_dicts_close(load_fisher(path, model), fish, rtol=0, atol=0)
    for other in (build_model(ModelConfig(arch="linear", width=64, z_dim=3)), small_model("conv")):
        with pytest.raises(UserError, match=r"^Fisher file .* does not match the model: ") as err:
            load_fisher(path, other)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        load_fisher(tmp_path / "nope.safetensors", model)
