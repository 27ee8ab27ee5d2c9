"""Hugging Face SigLIP vision tower → our Siglip parameters (with or without ``vision_model.``)."""

from __future__ import annotations

from cope_jax.convert.safetensors_io import CheckpointError, check_activation, positive_ints
from cope_jax.convert.tree import TensorSource, stack_layers
from cope_jax.models.siglip import SiglipConfig


# transformers' SiglipVisionConfig defaults, which a config.json may leave out.
HF_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "patch_size": 16, "image_size": 224}


def config_from_hf(hf: dict, **overrides) -> SiglipConfig:
  vision = hf.get("vision_config", hf)
  if vision.get("model_type") not in (None, "siglip_vision_model", "siglip"):
    raise CheckpointError(f"expected a SigLIP vision model, config says {vision.get('model_type')!r}")
  check_activation(vision, "hidden_act", "gelu_pytorch_tanh")
  n = positive_ints(vision, HF_DEFAULTS)
  if n["hidden_size"] % n["num_attention_heads"]:
    raise CheckpointError(f"hidden_size {n['hidden_size']} is not a multiple of "
                          f"num_attention_heads {n['num_attention_heads']}")
  return SiglipConfig(hidden_size=n["hidden_size"], intermediate_size=n["intermediate_size"],
                      num_layers=n["num_hidden_layers"], num_heads=n["num_attention_heads"],
                      patch_size=n["patch_size"], image_size=n["image_size"],
                      eps=vision.get("layer_norm_eps", 1e-6), **overrides)


def find_prefix(tensors: dict, candidates: tuple[str, ...]) -> str:
  """The first prefix under which the SigLIP embeddings are stored."""
  for p in candidates:
    if p + "embeddings.patch_embedding.weight" in tensors:
      return p
  raise CheckpointError("no SigLIP vision tower found (looked for "
                        + ", ".join(repr(p + "embeddings.patch_embedding.weight")
                                    for p in candidates) + ")")


def convert(src: TensorSource, cfg: SiglipConfig, prefix: str) -> dict:
  d, p = cfg.hidden_size, cfg.patch_size

  def layer(i: int) -> dict:  # (LLaVA-Video drops the last of 27 layers: extra ones unused)
    q = f"{prefix}encoder.layers.{i}."
    out = {"layer_norm1": {"scale": src.get(q + "layer_norm1.weight", (d,)),
                           "bias": src.get(q + "layer_norm1.bias", (d,))},
           "layer_norm2": {"scale": src.get(q + "layer_norm2.weight", (d,)),
                           "bias": src.get(q + "layer_norm2.bias", (d,))},
           "mlp_fc1": src.linear(q + "mlp.fc1", d, cfg.intermediate_size),
           "mlp_fc2": src.linear(q + "mlp.fc2", cfg.intermediate_size, d)}
    for name in ("q", "k", "v", "out"):
      out[f"self_attn_{name}_proj"] = src.linear(f"{q}self_attn.{name}_proj", d, d)
    return out

  conv = src.get(prefix + "embeddings.patch_embedding.weight", (d, 3, p, p))
  params = {"patch_embedding": {"kernel": conv.transpose(2, 3, 1, 0),
                                "bias": src.get(prefix + "embeddings.patch_embedding.bias", (d,))},
            "position_embedding": src.get(prefix + "embeddings.position_embedding.weight",
                                          (cfg.num_patches, d)),
            "layers": stack_layers(cfg.num_layers, layer)}
  if cfg.post_layernorm:
    params["post_layernorm"] = {"scale": src.get(prefix + "post_layernorm.weight", (d,)),
                                "bias": src.get(prefix + "post_layernorm.bias", (d,))}
  return params
