"""Models: SigLIP, Qwen2, the LLaVA-Video glue and the Δ-encoder (pure Flax Linen)."""
