"""The shards a recipe reads, checked against it before anything compiles: how they were built
(their build report) and how long their videos are."""

from __future__ import annotations

import os

from cope_jax.codec.errors import ConfigError
from cope_jax.json_files import read_json


def build_report(data_dir: str, stage: str) -> dict:
  """The report of the build that wrote ``stage``'s shards: the copy in the shard folder (renamed
  into place with them); for shards built before it was, ``report_<stage>.json``, or
  ``report.json`` when the last build was that stage's; else {}."""
  from cope_jax.data.build import BUILD_REPORT, shard_dir  # pylint: disable=import-outside-toplevel
  for path in (os.path.join(shard_dir(data_dir, stage), BUILD_REPORT),
               os.path.join(data_dir, f"report_{stage}.json"),
               os.path.join(data_dir, "report.json")):
    if os.path.exists(path):
      r = read_json(path)
      if r.get("stage", stage) == stage:
        return r
  return {}


def check_shards(config, shards: str) -> None:
  """ConfigError where ``config.stage``'s shards (in ``shards``) do not fit the recipe."""
  r = build_report(config.data_dir, config.stage)
  sampling = r.get("sampling", {})
  if sampling and sampling["gop"] % sampling["fusion"]:
    raise ConfigError(f"shards in {config.data_dir}: GOP {sampling['gop']} is not divisible by "
                      f"the fusion window {sampling['fusion']}")
  if r.get("size") and r["size"] != config.codec_size:
    raise ConfigError(f"shards in {config.data_dir} have frames of {r['size']} px but "
                      f"codec_size is {config.codec_size}")
  if config.stage == "finetune":
    _check_keyframes_per_gop(config, sampling.get("keyframes_per_gop"))
    _check_sequence_lengths(config, shards)


def _check_keyframes_per_gop(config, built: int | None) -> None:
  """Stage 2 trains at the K the shards were built with; a recipe that names its K (the paper's:
  4) refuses shards of another, which would otherwise train silently at the build's default 1."""
  want = config.get("keyframes_per_gop", 0)  # (>= 0: check_settings)
  if want and built is not None and built != want:
    raise ConfigError(f"the shards in {config.data_dir} were built with --keyframes-per-gop "
                      f"{built}, the recipe trains at K = {want}: rebuild them with "
                      f"--keyframes-per-gop {want}, or pass --config.keyframes_per_gop={built} "
                      "(0 takes the shards' own)")


def _check_sequence_lengths(config, shards: str) -> None:
  """Every video of the split trained on has keyframes and Δ-frames that fit the batch's slots
  (else the input pipeline would stop the run when it reaches the longest one)."""
  from cope_jax.data.pipeline import read_sequence_index  # pylint: disable=import-outside-toplevel
  rows = read_sequence_index(shards, config.split) or []  # [video, conversations, keyframes, Δ]
  for column, name, key in ((2, "keyframes", "max_keyframes"),
                            (3, "Δ-frames", "max_delta_frames")):
    longest = max(rows, key=lambda row, c=column: row[c], default=None)
    if longest is not None and longest[column] > config[key]:
      raise ConfigError(f"{longest[0]} has {longest[column]} {name}, more than {key}="
                        f"{config[key]}: raise --config.{key}, or rebuild the shards with fewer "
                        "--max-gops")
