"""Sweeps: one run per point of a grid of overrides, and a summary of them all."""
