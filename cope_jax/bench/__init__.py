"""Benchmarks: ``python -m cope_jax.bench {codec,data,ttft,flops,train,letter}``; each prints
figures measured in one run."""
