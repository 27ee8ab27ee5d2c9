"""Benchmarks: ``python -m cope_jax.bench {codec}``; each prints figures measured in one run."""
