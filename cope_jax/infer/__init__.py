"""Inference: KV-cache generation, the three-line API, answer-letter parsing, next-frame
retrieval."""

# What the model sees of a video (the CLIs' --mode; importing this module imports no JAX).
MODES = ("cope", "keyframes", "dense", "cope_zero_delta")
