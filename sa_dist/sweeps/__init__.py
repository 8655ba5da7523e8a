"""Grids of unlearning runs (``grid``) and finished runs side by side (``aggregate``)."""
