"""Time to first token and end-to-end latency: 64 dense frames vs CoPE at K = 1, 2, 4 (Fig. 4a),
on the same model in one run; plus the token table of Tab. 1's settings and Fig. 4b's plot.

Weights are random: TTFT does not depend on their values, only on the shapes. The default
``--preset bench`` keeps the paper's token geometry (SigLIP grid 27 → 210 tokens per keyframe,
10 per Δ-frame, 384² codec frames) with narrow layers so that it runs on a CPU; ``--preset
paper`` is LLaVA-Video-7B's shapes (for accelerators). Δ-frames have the keyframes' side (the
preset's vision input: 384 for bench and paper, 64 for tiny). TTFT is measured from primitives in
memory (model inputs on the host) to the first token, after one warm-up call per setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from cope_jax.bench import require_positive, require_video_seconds
from cope_jax.codec.sampling import (DENSE_FRAMES, MAX_GOPS, SamplingConfig,
                                     num_frames_for_duration, plan_positions, token_budget)
from cope_jax.command_line import ArgumentParser, check_results_file
from cope_jax.models import presets
from cope_jax.models.llava import VideoLMConfig


def bench_config(dtype=jnp.float32) -> VideoLMConfig:
  vision = dataclasses.replace(presets.SIGLIP["paper"], hidden_size=64, intermediate_size=128,
                               num_layers=2, num_heads=4, dtype=dtype)
  llm = dataclasses.replace(presets.QWEN2["tiny"], hidden_size=256, intermediate_size=768,
                            num_layers=4, num_heads=8, num_kv_heads=2, dtype=dtype)
  delta = dataclasses.replace(presets.DELTA["tiny"], out_dim=64, dtype=dtype)
  return VideoLMConfig(vision, llm, delta)


def compute_dtype(name: str):
  """``--dtype``: auto is bfloat16 on an accelerator (what a 7B model is served in, and what its
  FLOP bound counts) and float32 on a CPU (which has no fast bfloat16 matrix units)."""
  if name == "auto":
    name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return jnp.dtype(name)


def settings(seconds: float) -> dict[str, tuple[int, int, np.ndarray]]:
  """name → (keyframes, Δ-frames, kinds) for a video of ``seconds``; dense is 64 frames, or
  every frame of a shorter clip (as ``codec budget`` counts it)."""
  frames = num_frames_for_duration(seconds, 30)
  dense = min(DENSE_FRAMES, frames)
  out = {f"dense {dense} frames": (dense, 0, np.zeros(dense, np.int32))}
  for k in (1, 2, 4):
    plan = plan_positions(frames, SamplingConfig(keyframes_per_gop=k))
    out[f"CoPE K={k}"] = (plan.num_keyframes, plan.num_delta_frames, plan.kinds.astype(np.int32))
  return out


PROMPT_TEXT_TOKENS = 80  # system prompt + time instruction + a question


def visual_tokens(cfg: VideoLMConfig, keyframes: int, delta_frames: int) -> int:
  return keyframes * cfg.keyframe_tokens + delta_frames * cfg.delta_tokens


def too_long(cfg: VideoLMConfig, seconds: float, new_tokens: int) -> dict[str, int]:
  """The settings whose prompt and answer do not fit the model's positions, with their lengths
  (found out only after minutes of measuring the settings before them)."""
  lengths = {name: PROMPT_TEXT_TOKENS + visual_tokens(cfg, k, p) + new_tokens
             for name, (k, p, _) in settings(seconds).items()}
  return {name: n for name, n in lengths.items() if n > cfg.llm.max_positions}


def measure(cfg: VideoLMConfig, seconds: float, new_tokens: int, repeats: int,
            codec_size: int | None = None) -> list[dict]:
  """``codec_size``: the Δ-frames' side (default: the keyframes', as in the paper: 384 both)."""
  from cope_jax.infer.generation import Generator  # pylint: disable=import-outside-toplevel
  from cope_jax.infer.sampling import SamplingOptions  # pylint: disable=import-outside-toplevel
  from cope_jax.models.llava import VideoLM, init_inputs  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  s = cfg.vision.image_size
  c = codec_size or s
  rows, params = [], None
  for name, (k, p, kinds) in settings(seconds).items():
    visual = visual_tokens(cfg, k, p)
    length = PROMPT_TEXT_TOKENS + visual
    ids = rng.integers(0, 1000, (1, length)).astype(np.int32)
    ids[0, 10] = -200
    # The prompt's text fills the first slots; the splice moves what follows <image> past the
    # visual tokens, into the slots left free (a text mask over every slot claimed the visual
    # tokens' slots as text too: the length check then counted them twice).
    text_mask = np.zeros((1, length), bool)
    text_mask[:, :PROMPT_TEXT_TOKENS] = True
    host = (ids, text_mask, rng.standard_normal((1, k, s, s, 3), np.float32),
            rng.standard_normal((1, p, c, c, 2), np.float32),
            rng.integers(-30, 30, (1, p, c, c, 3)).astype(np.int16), kinds[None])
    if params is None:
      params = nn.meta.unbox(jax.jit(VideoLM(cfg).init)(jax.random.key(0),
                                                        *init_inputs(cfg, c))["params"])
      gen = Generator(cfg, params, eos_id=-1)
    best = None
    for i in range(repeats + 1):  # the first call compiles
      start = time.perf_counter()
      _, t, _ = gen.generate(tuple(map(jnp.asarray, host)), SamplingOptions(new_tokens),
                             start=start)
      if i and (best is None or t["ttft_s"] < best["ttft_s"]):
        best = t
    rows.append({"setting": name, "keyframes": k, "delta_frames": p, "delta_side": c,
                 "visual_tokens": visual,
                 "ttft_s": best["ttft_s"], "e2e_s": best["e2e_s"]})
  dense = rows[0]
  for r in rows:
    r["ttft_reduction"] = 1 - r["ttft_s"] / dense["ttft_s"]
    r["e2e_reduction"] = 1 - r["e2e_s"] / dense["e2e_s"]
  return rows


def token_table(lengths=(16, 32, 64, 128, 256, 512, 1024, 3600)) -> list[dict]:
  rows = []
  for seconds in lengths:
    n = num_frames_for_duration(seconds, 30)
    row = {"seconds": seconds, "dense_64": token_budget(n, SamplingConfig())["dense_tokens"]}
    for k in (1, 2, 4):
      row[f"K={k}"] = token_budget(n, SamplingConfig(keyframes_per_gop=k))["cope_tokens"]
    row["K=1 (all GOPs)"] = token_budget(n, SamplingConfig(max_gops=MAX_GOPS))["cope_tokens"]
    rows.append(row)
  return rows


def plot_tokens(rows: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4))
  x = [r["seconds"] for r in rows]
  for key in [k for k in rows[0] if k != "seconds"]:
    ax.plot(x, [r[key] for r in rows], marker="o", label=key)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("video length (s)")
  ax.set_ylabel("visual tokens")
  ax.set_title("Visual tokens vs video length (cf. paper Fig. 4b)")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: list[str] | None = None) -> None:
  parser = ArgumentParser(prog="python -m cope_jax.bench ttft", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="bench", choices=["bench", *presets.PRESETS],
                      help="model size (default bench: the paper's token geometry, narrow layers)")
  parser.add_argument("--seconds", type=float, default=64.0,
                      help="video length (default 64; a length whose prompts and new tokens pass "
                      "the model's positions is refused before anything is measured)")
  parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated (default 64)")
  parser.add_argument("--repeats", type=int, default=2,
                      help="timed runs per setting after a compiling one; the best is kept "
                      "(default 2)")
  parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                      help="compute dtype (parameters stay float32; default auto: bfloat16 on an "
                      "accelerator, float32 on a CPU)")
  parser.add_argument("--plot", default="tokens_vs_length.png",
                      help="where to save the tokens-vs-video-length plot "
                      "(default tokens_vs_length.png)")
  args = parser.parse_args(argv)
  require_positive(parser, args, "--repeats", "--new-tokens")
  require_video_seconds(parser, args.seconds)
  if not args.plot.endswith(".png"):
    parser.error(f"--plot must name a .png file, got {args.plot}")
  check_results_file("--plot", args.plot)  # before the table and the measurements
  dtype = compute_dtype(args.dtype)
  cfg = (bench_config(dtype) if args.preset == "bench" else
         presets.video_lm(args.preset, dtype=dtype))
  if over := too_long(cfg, args.seconds, args.new_tokens):
    parser.error(f"--seconds {args.seconds:g}: " + ", ".join(
        f"{name} needs {n} positions" for name, n in over.items())
        + f" (prompt and new tokens), past the model's {cfg.llm.max_positions}; use a shorter "
        "video")
  table = token_table()
  print("visual tokens (Tab. 1 settings; dense = 64 frames × 210):")
  print("  " + " | ".join(f"{k:>14}" for k in table[0]))
  for r in table:
    print("  " + " | ".join(f"{v:>14}" for v in r.values()))
  plot_tokens(table, args.plot)
  print(f"wrote {args.plot}")
  device = jax.devices()[0]
  print(f"\nTTFT on {device.device_kind} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores), preset {args.preset}, {args.seconds:g} s video, "
        f"{args.new_tokens} new tokens, {dtype.name}, best of {args.repeats}:")
  for r in measure(cfg, args.seconds, args.new_tokens, args.repeats):
    print(f"  {r['setting']:16s} {r['visual_tokens']:6d} visual tokens  TTFT {r['ttft_s']:7.3f} s "
          f"({_change(r['ttft_reduction'])} vs dense)  end-to-end {r['e2e_s']:7.3f} s "
          f"({_change(r['e2e_reduction'])})")


def _change(reduction: float) -> str:
  """A reduction as a signed change: −90.8 % is faster than dense, +12.0 % slower."""
  return f"{'−' if reduction > 0 else '+' if reduction < 0 else '±'}{abs(reduction):.1%}"
