"""Inference: KV-cache generation, the three-line API, answer-letter parsing, next-frame
retrieval."""

from cope_jax.codec.errors import ConfigError
from cope_jax.codec.sampling import SamplingConfig

# What the model sees of a video (the CLIs' --mode; importing this module imports no JAX).
MODES = ("cope", "keyframes", "dense", "cope_zero_delta")
DELTA_MODES = ("cope", "cope_zero_delta")  # the modes that read Δ-frames
DENSE_FRAMES = 64  # frames --mode dense samples uniformly by default: LLaVA-Video's


class PromptTooLong(ValueError):
  """A prompt (its text and its frames' visual tokens) and the tokens to follow it need more
  positions than the model has."""


def mode_sampling(mode: str, keyframes_per_gop: int = 1, min_change: float = 0.0) -> SamplingConfig:
  """The codec sampling of ``mode`` (ConfigError if it makes no sense): adaptive fusion
  (``min_change``) applies to the modes that read Δ-frames only."""
  if min_change and mode not in DELTA_MODES:
    raise ConfigError(f"min_change (--min-change) applies to the modes with Δ-frames "
                      f"{DELTA_MODES}, not {mode!r}")
  return SamplingConfig(keyframes_per_gop=keyframes_per_gop, min_change=min_change).validate()


def settle_mode_flags(args) -> None:
  """The CLIs' --keyframes-per-gop (the GOP sampling, which --mode dense does not use) and
  --dense-frames (dense mode's only): given to a mode that ignores it, a warning on stderr (a
  harness may pass one set of flags to every mode; silently unused, it read as a setting of the
  run); then their defaults (1 and LLaVA-Video's 64)."""
  import sys  # pylint: disable=import-outside-toplevel
  if args.mode == "dense" and args.keyframes_per_gop is not None:
    print("warning: --keyframes-per-gop sets the keyframes per GOP of the cope, keyframes and "
          "cope_zero_delta modes; --mode dense samples --dense-frames frames and ignores it",
          file=sys.stderr)
  if args.mode != "dense" and args.dense_frames is not None:
    print(f"warning: --dense-frames applies to --mode dense; {args.mode} samples by GOP "
          "(--keyframes-per-gop) and ignores it", file=sys.stderr)
  # (ignored in dense mode as the warning says: not then refused as out of range)
  args.keyframes_per_gop = (1 if args.keyframes_per_gop is None or args.mode == "dense"
                            else args.keyframes_per_gop)
  args.dense_frames = DENSE_FRAMES if args.dense_frames is None else args.dense_frames
