"""Tiny random Hugging Face reference models, built once per test session from configs alone."""

import os

import numpy as np

# layer_norm_eps not the default (1e-6): a converter that ignored it would show
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=56, patch_size=14, layer_norm_eps=1e-3)


def qwen2_dir(root: str, vocab: int, heads: int, kv_heads: int, seed: int = 0,
              tied: bool = False) -> str:
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import Qwen2Config, Qwen2ForCausalLM  # pylint: disable=import-outside-toplevel
  path = os.path.join(root, f"qwen2_v{vocab}_h{heads}_kv{kv_heads}" + ("_tied" if tied else ""))
  if not os.path.exists(path):
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
        rope_theta=1e6, rms_norm_eps=1e-5))  # not the defaults: a parsing slip would show
    _randomise_norms_and_biases(model)
    model.save_pretrained(path)
  return path


def siglip_dir(root: str) -> str:
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import SiglipVisionConfig, SiglipVisionModel  # pylint: disable=import-outside-toplevel
  path = os.path.join(root, "siglip")
  if not os.path.exists(path):
    torch.manual_seed(1)
    model = SiglipVisionModel(SiglipVisionConfig(**VISION))
    _randomise_norms_and_biases(model)
    model.save_pretrained(path)
  return path


def onevision_dir(root: str) -> str:
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,  # pylint: disable=import-outside-toplevel
                            Qwen2Config, SiglipVisionConfig)
  path = os.path.join(root, "onevision")
  if not os.path.exists(path):
    torch.manual_seed(2)
    cfg = LlavaOnevisionConfig(
        text_config=Qwen2Config(vocab_size=1030, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                tie_word_embeddings=False, rope_theta=1e6,
                                rms_norm_eps=1e-5).to_dict(),
        vision_config=SiglipVisionConfig(**VISION).to_dict(), image_token_index=1029,
        video_token_index=1028, vision_feature_layer=-1)
    model = LlavaOnevisionForConditionalGeneration(cfg)
    _randomise_norms_and_biases(model)
    with torch.no_grad():
      model.model.image_newline.normal_()
      # GELU's inputs of order 1 (init std 0.02 left them near 0, where tanh's approximation
      # and the exact GELU differ by 2e-6)
      model.model.multi_modal_projector.linear_1.weight.mul_(20)
    model.save_pretrained(path)
  return path


def _randomise_norms_and_biases(model) -> None:
  """Norm weights start at 1 and biases at 0 (Qwen2's q/k/v biases too); random values catch a
  swapped or missing one."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))


def rng_inputs(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
