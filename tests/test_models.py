import pytest
import torch

from sa_dist.models import ModelConfig, build_model, elbo
from sa_dist.utils import UsageError


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_shapes_sampling_and_label_forms(arch):
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch=arch, z_dim=5)).eval()
    x, c = torch.rand(6, 1, 28, 28), torch.arange(6)
    logits, mu, logvar = m(x, c)
    assert logits.shape == (6, 1, 28, 28) and mu.shape == logvar.shape == (6, 5)
    s = m.sample(7, 3)
    assert s.shape == (7, 1, 28, 28) and 0 <= s.min() and s.max() <= 1
    eps = torch.randn(6, 5)
    onehot = torch.nn.functional.one_hot(c, 10).float()
    assert torch.allclose(elbo(m, x, c, eps), elbo(m, x, onehot, eps))  # continuous label vectors work too


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_negative_elbo_is_per_sample_and_batch_independent(arch):
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch=arch)).eval()
    x, c, eps = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)), torch.randn(8, 8)
    full = elbo(m, x, c, eps)
    assert full.shape == (8,)
    assert torch.allclose(full[:3], elbo(m, x[:3], c[:3], eps[:3]), rtol=1e-5)
    assert (full > 0).all()
    # BCE of a flat 0.5 decoder is 784 ln 2: a sanity check of the pixel sum
    bce = torch.nn.functional.binary_cross_entropy(torch.full((1, 784), 0.5), torch.rand(1, 784), reduction="sum")
    assert abs(bce.item() - 784 * torch.log(torch.tensor(2.0)).item()) < 1e-3


def test_unknown_arch_is_a_usage_error():
    with pytest.raises(UsageError, match="--arch must be one of conv, linear"):
        build_model(ModelConfig(arch="resnet"))
