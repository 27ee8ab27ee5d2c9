"""Model sizes by name: ``tiny`` (CPU tests, the demo), ``small`` (Qwen2-0.5B shapes), ``1.5b``,
``paper`` (LLaVA-Video-7B).

``python -m cope_jax.models.presets`` prints parameter counts per component for each preset
(computed with ``jax.eval_shape``: nothing is allocated).
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cope_jax.codec.errors import ConfigError
from cope_jax.models.delta_encoder import DeltaEncoderConfig, Stage1Predictor
from cope_jax.models.llava import VideoLMConfig
from cope_jax.models.qwen2 import Qwen2Config
from cope_jax.models.siglip import SiglipConfig

SIGLIP = {
    "tiny": SiglipConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         patch_size=8, image_size=64),
    "small": SiglipConfig(hidden_size=384, intermediate_size=1536, num_layers=12, num_heads=6,
                          patch_size=16, image_size=224),
    "paper": SiglipConfig(),  # so400m-patch14-384, 26 of 27 layers, before post_layernorm
}
QWEN2 = {
    # vocab ≥ the small tokenizer's 1027 and divisible by the tensor axis
    "tiny": Qwen2Config(vocab_size=1032, hidden_size=128, intermediate_size=256, num_layers=2,
                        num_heads=4, num_kv_heads=2, rope_theta=10000.0),
    "small": Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_layers=24, num_heads=14, num_kv_heads=2,
                         tie_word_embeddings=True),  # Qwen2-0.5B shapes
    "1.5b": Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                        num_layers=28, num_heads=12, num_kv_heads=2, tie_word_embeddings=True),
    "paper": Qwen2Config(),  # Qwen2-7B
}
_TINY_DELTA = DeltaEncoderConfig(out_dim=64, width=64, num_layers=2, num_heads=4,
                                 resnet_widths=(16, 32, 64), motion_norm="scale", max_grid=32)
DELTA = {
    "tiny": _TINY_DELTA,
    # The tiny one shrunk so that a Δ-frame costs less than a keyframe, as in the paper (XLA's
    # FLOP counts: 0.65× the tiny SigLIP's keyframe; "tiny" 2.3×; appendix B's vs so400m: 0.28×).
    "demo": dataclasses.replace(_TINY_DELTA, width=32, num_layers=1, num_heads=2,
                                resnet_widths=(8, 16, 32)),
    "compact": DeltaEncoderConfig(width=256, num_heads=4, resnet_widths=(32, 64, 128, 256)),
    "paper": DeltaEncoderConfig(),  # appendix B: 4 layers, d = 1152, 9 heads, full ResNet-18
}


# Each preset's LLM (QWEN2), vision encoder (SIGLIP) and default Δ-encoder (DELTA): LLaVA-Video
# and LLaVA-OneVision pair Qwen2-1.5B and -7B with the so400m encoder (`1.5b`, `paper`); `small`
# keeps a ViT-S-sized encoder (21.7 M) so that it stays small.
PRESETS = {"tiny": ("tiny", "tiny", "tiny"), "small": ("small", "small", "compact"),
           "1.5b": ("1.5b", "paper", "compact"), "paper": ("paper", "paper", "paper")}


def video_lm(name: str, delta: str | None = None, dtype=jnp.float32, remat: bool = False,
             scan: bool = True, **llm_overrides) -> VideoLMConfig:
  """A VideoLM preset (``PRESETS``); ``delta`` picks another Δ-encoder (``DELTA``). ``dtype``
  (compute; parameters stay float32) and ``remat`` apply to every component, and the
  Δ-encoder's output width follows the vision encoder's."""
  if name not in PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; one of {sorted(PRESETS)}")
  if delta and delta not in DELTA:
    raise ConfigError(f"unknown Δ-encoder preset {delta!r}; one of {sorted(DELTA)}")
  llm_name, vision_name, delta_name = PRESETS[name]
  common = dict(dtype=dtype, remat=remat, scan=scan)
  vision = dataclasses.replace(SIGLIP[vision_name], **common)
  delta_cfg = dataclasses.replace(DELTA[delta or delta_name], out_dim=vision.hidden_size,
                                  **common)
  llm = dataclasses.replace(QWEN2[llm_name], **common, **llm_overrides)
  return VideoLMConfig(vision, llm, delta_cfg)


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def parameter_counts(cfg: VideoLMConfig, codec_size: int = 384) -> dict[str, int]:
  """Parameters per component (abstract init, no memory used)."""
  from cope_jax.models.llava import VideoLM, init_inputs  # pylint: disable=import-outside-toplevel
  args = init_inputs(cfg, codec_size)
  shapes = jax.eval_shape(lambda: VideoLM(cfg).init(jax.random.key(0), *args))["params"]
  shapes = jax.tree_util.tree_map(lambda x: x.value if hasattr(x, "value") else x, shapes,
                                  is_leaf=lambda x: hasattr(x, "value"))
  counts = {k: count(v) for k, v in shapes.items()}
  grid = codec_size // 16
  stage1 = jax.eval_shape(lambda: Stage1Predictor(cfg.delta).init(
      jax.random.key(0), jnp.zeros((1, cfg.vision.num_patches, cfg.vision.hidden_size)),
      jnp.zeros((1, grid * 16, grid * 16, 2)), jnp.zeros((1, grid * 16, grid * 16, 3))))["params"]
  counts["stage1_reference_and_warped"] = count(stage1) - counts["delta_encoder"]
  counts["total_videolm"] = sum(v for k, v in counts.items() if k != "stage1_reference_and_warped")
  return counts


def main() -> None:
  for name, (_, _, default_delta) in PRESETS.items():
    for delta in dict.fromkeys((default_delta, "compact")):
      counts = parameter_counts(video_lm(name, delta), codec_size=384 if name != "tiny" else 64)
      print(f"{name} (Δ-encoder {delta}): " + ", ".join(f"{k} {v / 1e6:.2f}M"
                                                        for k, v in counts.items()))
  sys.stdout.flush()


if __name__ == "__main__":
  main()
