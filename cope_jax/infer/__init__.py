"""Inference: KV-cache generation, the three-line API, evaluation, retrieval."""
