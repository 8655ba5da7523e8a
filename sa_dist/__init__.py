"""sa_dist: Selective Amnesia (Heng & Soh, NeurIPS 2023) for conditional VAEs, distributed with Accelerate."""
from .data import load_mnist, loaders
from .latent import plot_latent_manifold, plot_latent_space
from .models import ConvCVAE, LinearCVAE, ModelConfig, build_model, elbo
from .sa import replay_dataset, selective_amnesia, surrogate_dataset
from .train import train_vae
from .viz import show_grid


def __getattr__(name):  # lazy: fisher and the API import more
    if name == "diag_fisher":
        from .fisher import diag_fisher
        return diag_fisher
    if name == "SelectiveAmnesiaVAE":
        from .api import SelectiveAmnesiaVAE
        return SelectiveAmnesiaVAE
    raise AttributeError(name)


__all__ = ["ConvCVAE", "LinearCVAE", "ModelConfig", "SelectiveAmnesiaVAE", "build_model", "diag_fisher", "elbo",
           "load_mnist", "loaders", "plot_latent_manifold", "plot_latent_space", "replay_dataset", "selective_amnesia", "show_grid", "surrogate_dataset",
           "train_vae"]
