"""LLaVA-Video / LLaVA-OneVision checkpoints → our VideoLM parameters (all but the Δ-encoder).

Two layouts are read, detected from the tensor names:
- llava-hf ``LlavaOnevisionForConditionalGeneration``: ``image_newline``,
  ``multi_modal_projector.linear_{1,2}.*``, ``vision_tower.[vision_model.]…``,
  ``language_model.model.…`` + ``language_model.lm_head.weight`` (also the
  ``model.language_model.…`` + ``lm_head.weight`` variant newer transformers use in memory);
- the original LLaVA-NeXT layout (``lmms-lab/LLaVA-Video-7B-Qwen2``): ``model.mm_projector.{0,2}.*``,
  ``model.image_newline``, ``model.vision_tower.vision_tower.vision_model.…``, and the Qwen2 keys
  ``model.*`` + ``lm_head.weight``.
"""

from __future__ import annotations

import dataclasses

from cope_jax.convert import qwen2_convert, siglip_convert
from cope_jax.convert.safetensors_io import CheckpointError, check_activation
from cope_jax.convert.tree import TensorSource
from cope_jax.models.llava import VideoLMConfig
from cope_jax.models.presets import DELTA, SIGLIP

LAYOUTS = {
    "llava-hf": dict(llm=("language_model.model.", "language_model.lm_head.weight"),
                     projector=("multi_modal_projector.linear_1", "multi_modal_projector.linear_2"),
                     newline="image_newline",
                     vision=("vision_tower.vision_model.", "vision_tower.")),
    "llava-hf-inner": dict(llm=("model.language_model.", "lm_head.weight"),
                           projector=("model.multi_modal_projector.linear_1",
                                      "model.multi_modal_projector.linear_2"),
                           newline="model.image_newline",
                           vision=("model.vision_tower.vision_model.", "model.vision_tower.")),
    "llava-next": dict(llm=("model.", "lm_head.weight"),
                       projector=("model.mm_projector.0", "model.mm_projector.2"),
                       newline="model.image_newline",
                       vision=("model.vision_tower.vision_tower.vision_model.",)),
}


def detect_layout(tensors: dict) -> str:
  for name, layout in LAYOUTS.items():
    if layout["newline"] in tensors and layout["projector"][0] + ".weight" in tensors:
      return name
  raise CheckpointError("not a LLaVA-OneVision/LLaVA-Video checkpoint: found neither "
                        "'image_newline' + 'multi_modal_projector.*' (llava-hf) nor "
                        "'model.image_newline' + 'model.mm_projector.*' (LLaVA-NeXT)")


INFERENCE_ATTENTION_CHUNK = 1024


def config_from_checkpoint(hf: dict, delta: str = "paper") -> VideoLMConfig:
  """Our config from a llava config.json (llava-hf nested, or LLaVA-NeXT flat Qwen2 + mm_*)."""
  if "text_config" in hf:
    if hf["text_config"] is None:  # (transformers: null is the text model's defaults)
      hf = {**hf, "text_config": {}}
    if not isinstance(hf["text_config"], dict):
      raise CheckpointError(f"config.json's text_config is {hf['text_config']!r}, not an object")
    if not isinstance(hf.get("vision_config"), dict):  # (no default vision tower is assumed)
      raise CheckpointError("config.json has a text_config but no vision_config object: name "
                            "the SigLIP vision tower's settings there, as llava-hf's configs do")
    llm = qwen2_convert.config_from_hf(hf["text_config"],
                                       tie_word_embeddings=tied_embeddings(hf))
    vision = siglip_convert.config_from_hf(hf["vision_config"], post_layernorm=False)
    check_activation(hf, "projector_hidden_act", "gelu")  # (exact GELU: LLaVA's mlp2x_gelu)
    if hf.get("vision_feature_select_strategy", "full") != "full":  # ("default" drops a token)
      raise CheckpointError(f"vision_feature_select_strategy="
                            f"{hf['vision_feature_select_strategy']!r}: only 'full' (every patch "
                            "token, as LLaVA-OneVision's SigLIP has no class token) is supported")
    if hf.get("vision_feature_layer", -1) != -1:
      raise CheckpointError(f"vision_feature_layer={hf['vision_feature_layer']}: only -1 (the last "
                            "layer, as LLaVA-Video) is supported")
  elif "mm_vision_tower" in hf:
    llm = qwen2_convert.config_from_hf({**hf, "model_type": "qwen2"})
    if "siglip" not in hf["mm_vision_tower"]:
      raise CheckpointError(f"vision tower {hf['mm_vision_tower']!r}: only SigLIP is supported")
    vision = SIGLIP["paper"]  # so400m-patch14-384 with the last layer dropped
    check_llava_next_layout(hf)
  else:
    raise CheckpointError("neither text_config/vision_config (llava-hf) nor "
                          "mm_vision_tower (LLaVA-NeXT)")
  # Attention in blocks of 1024 queries, as the paper recipe trains: the same numbers, and a
  # long prompt (64 dense frames are 13,500 positions; the context 32,768) never holds all its
  # (L, L) scores per layer (20 GB in float32 at 13,500 for 28 heads). Shorter prompts: one block.
  llm = dataclasses.replace(llm, attention_chunk=INFERENCE_ATTENTION_CHUNK)
  return VideoLMConfig(vision, llm, dataclasses.replace(DELTA[delta], out_dim=vision.hidden_size))


# LLaVA-Video's token layout, which VideoLM implements: 2×2 bilinear pooling of each frame's
# grid, a newline after every row. A key left out means LLaVA-NeXT's own default (llava_arch:
# getattr(config, "mm_newline_position", "one_token"), "mm_patch_merge_type" "flat"; the
# projector builder's "mm_projector_type" "linear"), the layout that checkpoint was trained with;
# None: LLaVA-NeXT reads the key as an attribute (the pooling's, in its versions that pass the
# stride), so it must be there.
LLAVA_NEXT_LAYOUT = (("mm_projector_type", "linear", "mlp2x_gelu"),
                     ("mm_patch_merge_type", "flat", "spatial_unpad"),
                     ("mm_newline_position", "one_token", "grid"),
                     ("mm_spatial_pool_mode", None, "bilinear"),
                     ("mm_spatial_pool_stride", None, 2))


def check_llava_next_layout(hf: dict) -> None:
  """CheckpointError unless a LLaVA-NeXT config describes LLaVA-Video's token layout."""
  for key, default, expected in LLAVA_NEXT_LAYOUT:
    if key not in hf and default is None:
      raise CheckpointError(f"{key} is missing: LLaVA-NeXT needs it (LLaVA-Video's is "
                            f"{expected!r})")
    value = hf.get(key, default)
    if key == "mm_patch_merge_type":  # spatial, spatial_unpad, …: the frames' layout is the same
      matches = isinstance(value, str) and value.startswith("spatial")
    else:
      matches = value == expected
    if not matches:
      got = (f"{key} is missing (LLaVA-NeXT then uses {value!r})" if key not in hf
             else f"{key}={value!r}")
      raise CheckpointError(f"{got}: only {expected!r} (LLaVA-Video's layout) is supported")
  if hf.get("add_faster_video"):
    raise CheckpointError("add_faster_video=True: LLaVA-Video's slow-fast frames are not "
                          "supported (each frame's full grid only)")


def keep_vocabulary(params: dict, cfg: VideoLMConfig, rows: int) -> tuple[dict, VideoLMConfig]:
  """The first ``rows`` rows of the LLM's embedding and output head, and the config saying so."""
  llm = {**params["llm"], "embed_tokens": {"embedding": params["llm"]["embed_tokens"]
                                           ["embedding"][:rows]}}
  if "lm_head" in llm:
    llm["lm_head"] = {"kernel": llm["lm_head"]["kernel"][:, :rows]}
  return ({**params, "llm": llm},
          dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=rows)))


def tied_embeddings(hf: dict) -> bool:
  """Whether the LLM's output head is its input embedding (then a checkpoint stores no
  ``lm_head.weight``): either flag, the top level's or the text model's (transformers 5 ties
  by the top-level one)."""
  return bool(hf.get("tie_word_embeddings") or
              (hf.get("text_config") or {}).get("tie_word_embeddings"))


def convert(tensors: dict, cfg: VideoLMConfig, what: str = "checkpoint") -> dict:
  """Parameters for every VideoLM component except ``delta_encoder``."""
  layout = LAYOUTS[detect_layout(tensors)]
  src = TensorSource(tensors, what)
  prefix, head = layout["llm"]
  vision_prefix = siglip_convert.find_prefix(tensors, layout["vision"])
  d_vis, d_llm = cfg.vision.hidden_size, cfg.llm.hidden_size
  return {
      "llm": qwen2_convert.convert(src, cfg.llm, prefix=prefix, lm_head=head),
      "vision_tower": siglip_convert.convert(src, cfg.vision, vision_prefix),
      "projector": {"linear_1": src.linear(layout["projector"][0], d_vis, d_llm),
                    "linear_2": src.linear(layout["projector"][1], d_llm, d_llm)},
      "image_newline": src.get(layout["newline"], (d_llm,)),
  }
