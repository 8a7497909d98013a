"""Benchmarks (`python -m pipeline bench export|litertlm`): numbers side by side, one run."""
