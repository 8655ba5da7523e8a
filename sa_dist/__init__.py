"""sa_dist: Selective Amnesia (Heng & Soh, NeurIPS 2023) for conditional VAEs, distributed with Accelerate."""
from .amnesia import replay_dataset, selective_amnesia, surrogate_dataset
from .analysis.latent import plot_latent_manifold, plot_latent_space
from .analysis.plots import show_grid
from .api import SelectiveAmnesiaVAE
from .data import load_mnist, loaders
from .fisher import diag_fisher
from .models import ConvCVAE, LinearCVAE, ModelConfig, build_model, negative_elbo
from .objective import SATerms, ewc_penalty, sa_objective
from .surrogate import get_surrogate
from .train import train_vae

__all__ = ["ConvCVAE", "LinearCVAE", "ModelConfig", "SATerms", "SelectiveAmnesiaVAE", "build_model", "diag_fisher",
           "ewc_penalty", "get_surrogate", "load_mnist", "loaders", "negative_elbo", "plot_latent_manifold",
           "plot_latent_space", "replay_dataset", "sa_objective", "selective_amnesia", "show_grid",
           "surrogate_dataset", "train_vae"]
