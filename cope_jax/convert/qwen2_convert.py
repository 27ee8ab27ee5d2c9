"""Hugging Face Qwen2 (``model.*``, ``lm_head.weight``) → our Qwen2 parameters."""

from __future__ import annotations

import numpy as np

from cope_jax.convert.safetensors_io import CheckpointError, check_activation, positive_ints
from cope_jax.convert.tree import TensorSource, stack_layers
from cope_jax.models.qwen2 import Qwen2Config


# transformers' Qwen2Config defaults, which a config.json may leave out (a missing
# num_key_value_heads is 32 there, not num_attention_heads).
HF_DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
               "max_position_embeddings": 32768}


def config_from_hf(hf: dict, **overrides) -> Qwen2Config:
  if hf.get("model_type") not in (None, "qwen2"):
    raise CheckpointError(f"expected a qwen2 model, config.json says {hf.get('model_type')!r}")
  # What our Qwen2 does not compute is refused rather than converted into other logits:
  # RoPE scaling (transformers 4's rope_scaling, 5's rope_parameters) and sliding windows (off in
  # every released Qwen2 and LLaVA-Video).
  for key in ("rope_scaling", "rope_parameters"):
    rope = hf.get(key) or {}
    if not isinstance(rope, dict):
      raise CheckpointError(f"{key} {hf[key]!r}: not an object (rope_type and its settings)")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
      raise CheckpointError(f"{key} {hf[key]}: only plain RoPE (rope_type 'default') is "
                            "supported")
  if hf.get("num_key_value_heads", 0) is None:  # (transformers: null is one per query head)
    hf = {**hf, "num_key_value_heads": hf.get("num_attention_heads",
                                              HF_DEFAULTS["num_attention_heads"])}
  if "sliding_attention" in _layer_types(hf):
    raise CheckpointError("sliding-window attention (use_sliding_window / layer_types) is not "
                          "supported: every layer attends to the whole context")
  check_activation(hf, "hidden_act", "silu", also=("swish",))  # (one function, two names)
  n = positive_ints(hf, HF_DEFAULTS)
  heads, kv_heads = n["num_attention_heads"], n["num_key_value_heads"]
  if n["hidden_size"] % heads or heads % kv_heads:
    raise CheckpointError(f"hidden_size {n['hidden_size']}, num_attention_heads {heads} and "
                          f"num_key_value_heads {kv_heads}: the heads must divide the width and "
                          "the key/value heads the heads")
  if hf.get("head_dim") not in (None, n["hidden_size"] // heads):
    raise CheckpointError(f"head_dim {hf['head_dim']}: only hidden_size / num_attention_heads "
                          f"({n['hidden_size'] // heads}) is supported")
  settings = dict(vocab_size=n["vocab_size"], hidden_size=n["hidden_size"],
                  intermediate_size=n["intermediate_size"],
                  num_layers=n["num_hidden_layers"], num_heads=heads, num_kv_heads=kv_heads,
                  # transformers 5 reads rope_parameters' theta before a top-level one
                  rope_theta=float((hf.get("rope_parameters") or {}).get(
                      "rope_theta", hf.get("rope_theta", 10000.0))),
                  rms_eps=hf.get("rms_norm_eps", 1e-6),
                  max_positions=n["max_position_embeddings"],
                  tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)))
  return Qwen2Config(**{**settings, **overrides})


def _layer_types(hf: dict) -> list[str]:
  """The layers that slide, as transformers runs them: none unless use_sliding_window and a
  sliding_window are set (without them, a layer typed sliding attends fully); then layer_types
  as given, else from layer max_window_layers on (a window past the last layer slides none)."""
  layers = hf.get("num_hidden_layers", HF_DEFAULTS["num_hidden_layers"])
  layers = layers if isinstance(layers, int) else 0  # (refused by name in config_from_hf)
  if not (hf.get("use_sliding_window") and hf.get("sliding_window", 4096) is not None):
    return ["full_attention"] * layers
  if hf.get("layer_types"):
    return list(hf["layer_types"])
  return ["sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention"
          for i in range(layers)]


def convert(src: TensorSource, cfg: Qwen2Config, prefix: str = "model.",
            lm_head: str = "lm_head.weight") -> dict:
  """Our parameters; with ``cfg.tie_word_embeddings`` no ``lm_head`` (a stored one must equal the
  embedding: else the config and the weights disagree, and we would compute other logits)."""
  d, hd = cfg.hidden_size, cfg.head_dim

  def layer(i: int) -> dict:
    p = f"{prefix}layers.{i}."
    return {
        "input_layernorm": {"weight": src.get(p + "input_layernorm.weight", (d,))},
        "post_attention_layernorm": {"weight": src.get(p + "post_attention_layernorm.weight",
                                                       (d,))},
        "self_attn": {
            "q_proj": src.linear(p + "self_attn.q_proj", d, cfg.num_heads * hd),
            "k_proj": src.linear(p + "self_attn.k_proj", d, cfg.num_kv_heads * hd),
            "v_proj": src.linear(p + "self_attn.v_proj", d, cfg.num_kv_heads * hd),
            "o_proj": src.linear(p + "self_attn.o_proj", cfg.num_heads * hd, d, bias=False)},
        "mlp": {"gate_proj": src.linear(p + "mlp.gate_proj", d, cfg.intermediate_size, False),
                "up_proj": src.linear(p + "mlp.up_proj", d, cfg.intermediate_size, False),
                "down_proj": src.linear(p + "mlp.down_proj", cfg.intermediate_size, d, False)}}

  embed = src.get(prefix + "embed_tokens.weight", (cfg.vocab_size, d))
  params = {"embed_tokens": {"embedding": embed}, "layers": stack_layers(cfg.num_layers, layer),
            "norm": {"weight": src.get(prefix + "norm.weight", (d,))}}
  if not cfg.tie_word_embeddings:
    return {**params, "lm_head": {"kernel": src.get(lm_head, (cfg.vocab_size, d)).T}}
  if lm_head in src.tensors and not np.array_equal(src.get(lm_head, (cfg.vocab_size, d)), embed):
    raise CheckpointError(f"config.json ties the output head to the embedding "
                          f"(tie_word_embeddings) but {src.what} stores a different {lm_head}")
  return params
