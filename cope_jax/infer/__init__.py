"""Inference: KV-cache generation, the three-line API, answer-letter parsing, next-frame
retrieval."""
