import sa_dist
from conftest import LIMIT


def test_public_names_import():
    for name in sa_dist.__all__:
        assert callable(getattr(sa_dist, name)), name
    assert {"sa_objective", "negative_elbo", "selective_amnesia", "diag_fisher", "SelectiveAmnesiaVAE"} <= set(
        sa_dist.__all__)


def test_selective_amnesia_vae_end_to_end(accelerator, tmp_path):
    m = sa_dist.SelectiveAmnesiaVAE(z_dim=4, forget_class=3, arch="linear", seed=1, limit=LIMIT,
                                    accelerator=accelerator)
    m.train_baseline(epochs=2, lr=2e-3)
    m.selective_amnesia(epochs=2, lambda_reg=1, n_fisher=500, n_replay=5120)
    res = m.evaluate(n_samples=50)
    assert set(res["summary"]["after"]["forgotten_p_class"]) == {"3"}
    gap = lambda model: (model.sample(200, 3) - 0.5).abs().mean().item()  # noqa: E731
    assert gap(m.unlearned) < gap(m.original) - 0.05  # label 3 decodes towards the grey surrogate mean
    assert res["surrogate"]["nelbo"]["after"] < res["surrogate"]["nelbo"]["before"]
    paths = m.visualize_results(tmp_path / "figs")  # no display here: saved only
    assert [p.name for p in paths] == ["samples_before_after.png", "latent_space.png", "latent_manifold.png",
                                       "curves_baseline.png", "curves_sa.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert set(m.latent["after"]["per_class"]) == {str(c) for c in range(10)}
    m.save(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"baseline.safetensors", "unlearned.safetensors"}


def test_show_grid_writes_a_titled_png(tmp_path):
    import torch
    sa_dist.show_grid(torch.rand(20, 1, 28, 28), "twenty", tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
