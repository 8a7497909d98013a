"""Benchmarks (`python -m pipeline bench export|litertlm|finetune`): numbers side by side, one run."""
