"""cope_jax: CoPE-VideoLM in JAX/Flax — video LMs that read the codec's motion vectors and residuals."""

__version__ = "0.1.0"
