"""Is it really forgotten? Attacks on an unlearned model (relearning over an lr grid, retain-only relearning,
condition and joint inversion, latent probe, weight-space distances and loss barrier) and the suite that runs them
side by side on a finished run (``suite``)."""
