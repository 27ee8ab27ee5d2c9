"""FLOPs per component of the prefill (time to first token), from XLA's cost analysis of the
lowered forward passes — no weights are allocated — and the FLOP-bound TTFT at a given peak.
Layers are unrolled for the count: XLA's cost analysis counts a scanned loop body only once.

  python -m cope_jax.bench flops --preset paper --seconds 64 --peak-tflops 989

Components: the vision tower on the keyframes, the Δ-encoder on the Δ-frames, the projector, and
the LLM prefill over the whole prompt (visual tokens + ``--text-tokens``), its causal attention
counted half (the masked scores are not useful work; MaxText counts them so).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp

from cope_jax.bench import masked_attention_flops, require_positive, require_video_seconds
from cope_jax.bench.train_bench import step_flops
from cope_jax.bench.ttft_bench import bench_config, settings
from cope_jax.command_line import ArgumentParser
from cope_jax.models import presets


def unscanned(cfg):
  """The same model with Python-loop layers (identical FLOPs; countable by XLA)."""
  return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, scan=False),
                             llm=dataclasses.replace(cfg.llm, scan=False),
                             delta=dataclasses.replace(cfg.delta, scan=False))


def _flops(fn, *shapes) -> float:
  return step_flops(jax.jit(fn).lower(*shapes))


def component_flops(cfg, keyframes: int, delta_frames: int, text_tokens: int,
                    codec_size: int | None = None) -> dict[str, float]:
  """FLOPs per component; Δ-frames of ``codec_size`` (default: the keyframes' side, as in the
  paper and ``bench ttft``)."""
  from cope_jax.models.delta_encoder import DeltaEncoder  # pylint: disable=import-outside-toplevel
  from cope_jax.models.llava import Projector  # pylint: disable=import-outside-toplevel
  from cope_jax.models.qwen2 import Qwen2  # pylint: disable=import-outside-toplevel
  from cope_jax.models.siglip import Siglip  # pylint: disable=import-outside-toplevel
  sds = jax.ShapeDtypeStruct
  s = cfg.vision.image_size
  c = codec_size or s
  params = lambda module, *args: jax.eval_shape(  # noqa: E731
      lambda *a: module.init(jax.random.key(0), *a), *args)
  out = {}
  vision = Siglip(cfg.vision)
  if keyframes:
    px = sds((keyframes, s, s, 3), jnp.float32)
    out["vision"] = _flops(lambda p, x: vision.apply(p, x)[0], params(vision, px), px)
  else:
    out["vision"] = 0.0
  delta = DeltaEncoder(cfg.delta)
  if delta_frames:
    mv, res = sds((delta_frames, c, c, 2), jnp.float32), sds((delta_frames, c, c, 3), jnp.int16)
    out["delta_encoder"] = _flops(lambda p, a, b: delta.apply(p, a, b)[0], params(delta, mv, res),
                                  mv, res)
  else:
    out["delta_encoder"] = 0.0
  proj = Projector(cfg.llm.hidden_size)
  n = keyframes * cfg.vision.num_patches + delta_frames * cfg.delta.num_tokens
  x = sds((1, n, cfg.vision.hidden_size), jnp.float32)
  out["projector"] = _flops(proj.apply, params(proj, x), x)
  length = keyframes * cfg.keyframe_tokens + delta_frames * cfg.delta_tokens + text_tokens
  llm = Qwen2(dataclasses.replace(cfg.llm, attention_chunk=0))  # (all L² scores, counted whole)
  ids = sds((1, length), jnp.int32)
  last = jnp.full((1,), length - 1)  # a prefill computes the logits of the last slot only
  out["llm_prefill"] = _flops(lambda p, i: llm.apply(p, i, logits_at=last)[0], params(llm, ids),
                              ids) - masked_attention_flops(cfg.llm, 1, length)
  out["total"] = sum(out.values())
  out["prompt_tokens"] = length
  return out


def main(argv: list[str] | None = None) -> None:
  parser = ArgumentParser(prog="python -m cope_jax.bench flops", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="bench", choices=["bench", *presets.PRESETS],
                      help="model size (default bench: the paper's token geometry, narrow layers)")
  parser.add_argument("--seconds", type=float, default=64.0, help="video length (default 64)")
  parser.add_argument("--delta", default=None, choices=list(presets.DELTA),
                      help="Δ-encoder preset (default: the preset's own)")
  parser.add_argument("--text-tokens", type=int, default=80,
                      help="text tokens in the prompt besides the visual ones (default 80)")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="per-device peak, for the FLOP-bound TTFT (e.g. 989 for H100 bf16)")
  args = parser.parse_args(argv)
  require_positive(parser, args, "--text-tokens", "--peak-tflops")
  require_video_seconds(parser, args.seconds)
  if args.preset == "bench" and args.delta:
    parser.error("--delta picks the Δ-encoder of a named preset; bench has its own (tiny)")
  cfg = unscanned(bench_config() if args.preset == "bench"
                  else presets.video_lm(args.preset, args.delta))
  delta = args.delta or (presets.PRESETS[args.preset][2] if args.preset != "bench" else "tiny")
  print(f"prefill FLOPs per component, preset {args.preset} (Δ-encoder {delta}), "
        f"{args.seconds:g} s video "
        f"(XLA cost analysis of the lowered forward passes):")
  rows = {name: component_flops(cfg, k, p, args.text_tokens)
          for name, (k, p, _) in settings(args.seconds).items()}
  dense_total = next(iter(rows.values()))["total"]
  # (TFLOP for the paper's shapes; a small preset's would all print 0.000)
  unit, scale = ("TFLOP", 1e12) if dense_total >= 1e12 else ("GFLOP", 1e9)
  for name, f in rows.items():
    parts = ", ".join(f"{key} {f[key] / scale:.3f}" for key in ("vision", "delta_encoder",
                                                                 "projector", "llm_prefill"))
    bound = (f"; FLOP-bound TTFT {f['total'] / (args.peak_tflops * 1e12) * 1e3:.3g} ms"
             if args.peak_tflops else "")
    past = (f" (past the model's {cfg.llm.max_positions} positions: it cannot take this prompt)"
            if f["prompt_tokens"] > cfg.llm.max_positions else "")
    print(f"  {name:16s} {f['prompt_tokens']:6d} tokens  {unit}: {parts}; total "
          f"{f['total'] / scale:.3f} ({f['total'] / dense_total - 1:+.1%} vs dense){bound}{past}")
