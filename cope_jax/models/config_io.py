"""VideoLMConfig ↔ JSON (stored beside checkpoints so they can be loaded without the recipe)."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp

from cope_jax.models.delta_encoder import DeltaEncoderConfig
from cope_jax.models.llava import VideoLMConfig
from cope_jax.models.qwen2 import Qwen2Config
from cope_jax.models.siglip import SiglipConfig

_PARTS = {"vision": SiglipConfig, "llm": Qwen2Config, "delta": DeltaEncoderConfig}


def to_dict(cfg: VideoLMConfig) -> dict:
  out = {}
  for part in _PARTS:
    d = dataclasses.asdict(getattr(cfg, part))
    d["dtype"] = jnp.dtype(d["dtype"]).name
    out[part] = d
  return out


def from_dict(d: dict) -> VideoLMConfig:
  parts = {}
  for part, cls in _PARTS.items():
    fields = dict(d[part])
    # jnp's scalar type, as the presets hold it: equal to np.dtype but hashed otherwise, so a
    # loaded config would miss every cache keyed by the preset's (and compile again)
    fields["dtype"] = getattr(jnp, jnp.dtype(fields.get("dtype", "float32")).name)
    if "resnet_widths" in fields:
      fields["resnet_widths"] = tuple(fields["resnet_widths"])
    parts[part] = cls(**fields)
  return VideoLMConfig(**parts)


def save(cfg: VideoLMConfig, path: str) -> None:
  with open(path, "w") as f:
    json.dump(to_dict(cfg), f, indent=2)


def load(path: str) -> VideoLMConfig:
  """ValueError naming ``path`` if it is not a model config this version writes."""
  with open(path) as f:
    try:
      return from_dict(json.load(f))
    except (KeyError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
      raise ValueError(f"{path}: not a model config written by cope_jax "
                       f"({type(e).__name__}: {e})") from None
