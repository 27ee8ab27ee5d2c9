"""Benchmarks: ``python -m cope_jax.bench {codec,data,ttft,flops,train,letter,adaptive}``; each
prints figures measured in one run."""

import argparse
import math


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     *names: str) -> None:
  """``parser.error`` (one ``error:`` line, exit 2) unless each named flag is finite and > 0."""
  for name in names:
    value = getattr(args, name.lstrip("-").replace("-", "_"))
    if value is not None and not 0 < value < math.inf:
      parser.error(f"{name} must be a finite number > 0, got {value}")


def masked_attention_flops(llm, batch: int, length: int) -> float:
  """FLOPs of the masked half of a causal forward pass's attention scores (QKᵀ and AV, 2 FLOPs
  per multiply-add): what XLA counts and MaxText (SPEC §8's bar) does not — it counts causal
  attention as half the L² product. A training step's is three times this."""
  return 0.5 * 4 * batch * length**2 * llm.num_heads * llm.head_dim * llm.num_layers


def require_video_seconds(parser: argparse.ArgumentParser, seconds: float) -> None:
  """``parser.error`` unless ``--seconds`` is a video length ``codec budget`` accepts too (inf
  and 1e300 overflowed the sampler)."""
  from cope_jax.codec.sampling import MAX_VIDEO_SECONDS  # pylint: disable=import-outside-toplevel
  if not seconds > 0:
    parser.error(f"--seconds must be > 0, got {seconds}")
  if not seconds <= MAX_VIDEO_SECONDS:
    parser.error(f"--seconds must be at most {MAX_VIDEO_SECONDS:g} (11 days), got {seconds}")
