"""Seeing a run: plots, the latent space, a run's figures and TensorBoard copies, and its HTML/Markdown report."""
