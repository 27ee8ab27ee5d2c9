"""Checkpoint converters: Hugging Face / LLaVA safetensors → our Flax parameter trees."""
