"""``python -m cope_jax.convert {hf-forward,llava-video}`` — checkpoint conversion.

  hf-forward   --hf-dir DIR --inputs IN.npz --out OUT.npz
               Loads a Hugging Face Qwen2ForCausalLM (IN: input_ids (B, L) → OUT: logits
               (B, L, V) float32) or SiglipVisionModel (IN: pixel_values (B, 3, H, W) float32,
               normalised → OUT: last_hidden_state (B, N, D), after post_layernorm) into our Flax
               modules and runs them.
  llava-video  --checkpoint DIR --out DIR [--delta paper|compact|tiny] [--seed 0]
               [--vocab-size N]
               Turns a LLaVA-Video / LLaVA-OneVision checkpoint (llava-hf or LLaVA-NeXT layout)
               into an Orbax checkpoint (params + config.json) that stage-2 training starts
               from; the Δ-encoder is initialised from --seed (stage 2 loads stage 1 over it).
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile

import numpy as np

from cope_jax.command_line import ArgumentParser, check_writable_folder, exit_on_sigterm
from cope_jax.convert.safetensors_io import CheckpointError, read_checkpoint, read_config


def check_npz_out(out: str) -> None:
  """OSError before any work unless ``out`` can be written as a file."""
  if os.path.isdir(out):
    raise IsADirectoryError(f"--out {out} is a folder; name the .npz file to write")
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"--out {out}: the folder {folder} does not exist")
  check_writable_folder("--out", out, folder)


def _hf_config(hf_dir: str):
  """(model_type, our config) of a Qwen2 or SigLIP folder; its config.json named in errors."""
  from cope_jax.convert import qwen2_convert, siglip_convert  # pylint: disable=import-outside-toplevel
  config = read_config(hf_dir)
  kind = config.get("model_type")
  try:
    if kind == "qwen2":
      return kind, qwen2_convert.config_from_hf(config)
    if kind in ("siglip_vision_model", "siglip"):
      return kind, siglip_convert.config_from_hf(config, post_layernorm=True)
  except CheckpointError as e:
    raise CheckpointError(f"{os.path.join(hf_dir, 'config.json')}: {e}") from None
  raise CheckpointError(f"{hf_dir}: model_type {kind!r} is neither qwen2 nor siglip_vision_model")


def _read_inputs(inputs: str) -> dict:
  try:
    loaded = np.load(inputs)
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a single .npy array
      raise CheckpointError(f"{inputs}: a single array, not a .npz of named arrays (input_ids "
                            "or pixel_values)")
    with loaded as f:
      return dict(f)
  except CheckpointError:
    raise
  except (ValueError, EOFError, zipfile.BadZipFile) as e:  # junk, pickles, a cut-short file
    raise CheckpointError(f"{inputs}: not a .npz of arrays ({e})") from None


def hf_forward(hf_dir: str, inputs: str, out: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cope_jax.convert import qwen2_convert, siglip_convert  # pylint: disable=import-outside-toplevel
  from cope_jax.convert.tree import TensorSource  # pylint: disable=import-outside-toplevel
  check_npz_out(out)
  kind, cfg = _hf_config(hf_dir)
  tensors = read_checkpoint(hf_dir)
  data = _read_inputs(inputs)
  if kind == "qwen2":
    from cope_jax.models.qwen2 import Qwen2  # pylint: disable=import-outside-toplevel
    ids = data.get("input_ids")
    if ids is None or ids.ndim != 2 or ids.dtype.kind not in "iu" or not ids.size:
      raise CheckpointError(f"{inputs}: a Qwen2 model needs integer 'input_ids' (B, L), B and L "
                            f"at least 1, got {None if ids is None else (ids.dtype, ids.shape)}")
    if ids.size and not 0 <= ids.min() <= ids.max() < cfg.vocab_size:
      raise CheckpointError(f"{inputs}: input_ids must lie in [0, {cfg.vocab_size}), got "
                            f"[{ids.min()}, {ids.max()}]")
    if ids.shape[1] > cfg.max_positions:
      raise CheckpointError(f"{inputs}: input_ids of {ids.shape[1]} positions exceed the "
                            f"model's {cfg.max_positions} (max_position_embeddings)")
    params = qwen2_convert.convert(TensorSource(tensors, hf_dir), cfg)
    with jax.default_matmul_precision("highest"):  # (float32 on GPUs/TPUs too, as torch's CPU)
      logits, _ = Qwen2(cfg).apply({"params": params}, jnp.asarray(ids))
    result = {"logits": np.asarray(logits, np.float32)}
  else:
    from cope_jax.models.siglip import Siglip  # pylint: disable=import-outside-toplevel
    pixels = data.get("pixel_values")
    want = (3, cfg.image_size, cfg.image_size)
    if (pixels is None or pixels.ndim != 4 or pixels.shape[1:] != want or not len(pixels)
        or pixels.dtype.kind not in "fiu"):
      raise CheckpointError(f"{inputs}: a SigLIP model needs numeric 'pixel_values' (B, "
                            f"{want[0]}, {want[1]}, {want[2]}), got "
                            f"{None if pixels is None else f'{pixels.dtype} {pixels.shape}'}")
    prefix = siglip_convert.find_prefix(tensors, ("vision_model.", ""))
    params = siglip_convert.convert(TensorSource(tensors, hf_dir), cfg, prefix)
    with jax.default_matmul_precision("highest"):
      hidden, _ = Siglip(cfg).apply({"params": params},
                                    jnp.asarray(pixels, jnp.float32).transpose(0, 2, 3, 1))
    result = {"last_hidden_state": np.asarray(hidden, np.float32)}
  tmp = f"{out}.tmp{os.getpid()}.npz"
  try:
    np.savez(tmp, **result)
    os.replace(tmp, out)
  finally:  # (a full disk: no partial file left)
    if os.path.exists(tmp):
      os.remove(tmp)
  print(f"wrote {out}: " + ", ".join(f"{k} {v.shape}" for k, v in result.items()))


def llava_video(checkpoint: str, out: str, delta: str, seed: int,
                vocab_size: int | None = None) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from cope_jax.convert import llava_convert  # pylint: disable=import-outside-toplevel
  from cope_jax.models import checkpoints  # pylint: disable=import-outside-toplevel
  if os.path.exists(out) and not os.path.isdir(out):  # (Orbax would hang on it)
    raise NotADirectoryError(f"--out {out} is a file; name a folder for the checkpoint")
  # Where it will be written, before minutes of converting (Orbax then hung for 5 minutes on an
  # unwritable folder; a file on the way gave "File exists" naming that file alone).
  made = os.path.dirname(os.path.abspath(out))
  while not os.path.exists(made):  # (missing folders are made)
    made = os.path.dirname(made)
  if not os.path.isdir(made):
    raise NotADirectoryError(f"--out {out}: {made} is a file, not a folder")
  check_writable_folder("--out", out, made)
  # The folder is replaced whole: only one an earlier conversion wrote (an --out equal to
  # --checkpoint destroyed the Hugging Face checkpoint; a training workdir became unloadable).
  held = set(os.listdir(out)) if os.path.isdir(out) else set()
  if held and ("params" not in held or not held <= {"params", "config.json"}):
    other = sorted(held - {"params"})
    raise FileExistsError(f"--out {out} holds other files ({', '.join(other[:4])}"
                          f"{', …' if len(other) > 4 else ''}): name a new or empty folder, or "
                          "one an earlier conversion wrote")
  hf = read_config(checkpoint)
  try:
    cfg = llava_convert.config_from_checkpoint(hf, delta)
  except CheckpointError as e:  # (the config's own words; say which file)
    raise CheckpointError(f"{os.path.join(checkpoint, 'config.json')}: {e}") from None
  if vocab_size is not None and not 1 <= vocab_size <= cfg.llm.vocab_size:
    raise CheckpointError(f"--vocab-size {vocab_size}: from 1 to the checkpoint's "
                          f"{cfg.llm.vocab_size} rows")
  params = llava_convert.convert(read_checkpoint(checkpoint), cfg, checkpoint)
  if vocab_size is not None:  # (the rows past it: llava-hf's padding and its <video> token)
    params, cfg = llava_convert.keep_vocabulary(params, cfg, vocab_size)
  params["delta_encoder"] = checkpoints.init_delta_encoder(cfg, jax.random.key(seed))
  checkpoints.save_params(out, params, cfg)
  print(f"wrote {out} (VideoLM parameters + config.json; Δ-encoder from seed {seed})")


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(prog="python -m cope_jax.convert", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  p = sub.add_parser("hf-forward", help="run a Hugging Face checkpoint through our modules")
  p.add_argument("--hf-dir", required=True,
                 help="a Qwen2ForCausalLM or SiglipVisionModel folder (config.json + safetensors)")
  p.add_argument("--inputs", required=True,
                 help="IN.npz: input_ids (B, L) for Qwen2, pixel_values (B, 3, H, W) for SigLIP")
  p.add_argument("--out", required=True,
                 help="OUT.npz: logits (B, L, V), or last_hidden_state (B, N, D)")
  p = sub.add_parser("llava-video", help="LLaVA-Video checkpoint → Orbax checkpoint for stage 2")
  p.add_argument("--checkpoint", required=True, help="folder with config.json + safetensors")
  p.add_argument("--out", required=True,
                 help="output folder (Orbax params + config.json, written whole): new, empty, or "
                 "an earlier conversion's, which it replaces; missing parent folders are made, and "
                 "where it goes is checked writable before converting")
  p.add_argument("--delta", default="paper", choices=["paper", "compact", "tiny"],
                 help="Δ-encoder size (default: paper, appendix B)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--vocab-size", type=int, default=None, metavar="N",
                 help="keep the first N rows of the embedding and output head: llava-hf's "
                      "LLaVA-Video-7B pads Qwen2's 152064 to 152128 (its <image> and <video> "
                      "tokens), which the paper recipe (152064) refuses; our tokenizer never "
                      "reaches the rows past it")
  args = parser.parse_args(argv)
  try:
    if args.command == "hf-forward":
      hf_forward(args.hf_dir, args.inputs, args.out)
    else:
      llava_video(args.checkpoint, os.path.abspath(args.out), args.delta, args.seed,
                  args.vocab_size)
  except (CheckpointError, OSError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  exit_on_sigterm()
  sys.exit(main())
