"""Is it really forgotten? Attacks on an unlearned model (relearning, condition inversion, latent probe) and the
suite that runs them side by side on a finished run (``suite``)."""
