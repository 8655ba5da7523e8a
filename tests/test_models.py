import pytest
import torch

from sa_dist.models import ModelConfig, build_model, negative_elbo
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
    assert torch.allclose(negative_elbo(m, x, c, eps), negative_elbo(m, x, onehot, eps))  # continuous label vectors work too


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_negative_elbo_is_per_sample_and_batch_independent(arch):
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch=arch)).eval()
    x, c, eps = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)), torch.randn(8, 8)
    full = negative_elbo(m, x, c, eps)
    assert full.shape == (8,)
    assert torch.allclose(full[:3], negative_elbo(m, x[:3], c[:3], eps[:3]), rtol=1e-5)
    assert (full > 0).all()


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_negative_elbo_is_pixel_summed_bernoulli_nll_plus_gaussian_kl(arch):
    """The loss written out by hand in float64: -log p(x|z) summed over 784 pixels, + KL(N(mu, var) || N(0, I))."""
    torch.manual_seed(1)
    m = build_model(ModelConfig(arch=arch, z_dim=3)).double().eval()
    x, c, eps = torch.rand(4, 1, 28, 28, dtype=torch.float64), torch.tensor([0, 3, 7, 9]), torch.randn(4, 3).double()
    logits, mu, logvar = m(x, c, eps)
    p = torch.sigmoid(logits).flatten(1)
    nll = -(x.flatten(1) * p.log() + (1 - x.flatten(1)) * (1 - p).log()).sum(1)
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
    assert torch.allclose(negative_elbo(m, x, c, eps), nll + kl, rtol=1e-10)


def test_unknown_arch_is_a_usage_error():
    with pytest.raises(UsageError, match="--arch must be one of conv, linear"):
        build_model(ModelConfig(arch="resnet"))
