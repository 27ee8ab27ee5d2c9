"""Everything checked (and the tiny recipes' data made) before anything compiles."""

from __future__ import annotations

import fcntl
import math
import os
import sys

from cope_jax.codec.errors import ConfigError
from cope_jax.json_files import read_json
from cope_jax.data.tokenizer import cache_dir, qwen2_tokenizer_file
from cope_jax.train.shard_checks import check_shards

STAGE2_PARTS = ("vision_tower", "projector", "delta_encoder", "llm", "image_newline")


def synthetic_data(config) -> str:
  """Generates (once, cached) the embedded synthetic dataset and both stages' shards."""
  from cope_jax.codec.sampling import SamplingConfig  # pylint: disable=import-outside-toplevel
  from cope_jax.data.build import build, load_items, shard_dir  # pylint: disable=import-outside-toplevel
  from cope_jax.data.primitive_cache import ExtractSettings  # pylint: disable=import-outside-toplevel
  from cope_jax.data.synthetic import SCENES_VERSION  # pylint: disable=import-outside-toplevel
  s = config.synthetic
  # v8: the synthetic questions of 2026-12-07 (frame 0's objects named so, `direction` with
  # room every way); the scenes' own version is in the name too (a cache of version-2 scenes
  # was used on after version 3): older caches are rebuilt
  out = os.path.join(cache_dir(), "synthetic", f"v8_scenes{SCENES_VERSION}_videos{s.videos}"
                                               f"_seed{s.seed}_size{config.codec_size}")
  done = lambda: all(os.path.exists(os.path.join(shard_dir(out, st), "dataset_info.json"))  # noqa: E731
                     for st in ("pretrain", "finetune"))
  if done():
    return out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + ".lock", "w") as lock:  # several runs may start on a fresh machine at once
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done():
      print(f"making the synthetic dataset ({s.videos} videos) in {out} (once; cached)",
            flush=True)
      items = load_items("synthetic", out, None, None, s.videos, s.seed, config.codec_size, None,
                         progress=True)
      for stage in ("pretrain", "finetune"):
        build(stage, items, out, ExtractSettings(config.codec_size, SamplingConfig()),
              progress=True)
  return out


def resolve(config) -> None:
  """Fills ``data_dir`` (and the tokenizer for stage 2) in place; makes tiny data if asked."""
  with config.unlocked():
    if not config.data_dir and config.synthetic.videos > 0:
      config.data_dir = synthetic_data(config)
    if config.stage == "finetune" and not config.tokenizer:
      synthetic_tok = os.path.join(config.data_dir, "synthetic", "tokenizer.json")
      if config.model.preset == "tiny" and os.path.exists(synthetic_tok):
        config.tokenizer = synthetic_tok
      else:
        config.tokenizer = qwen2_tokenizer_file()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (``--config`` and its overrides), with a recipe that does not load, an
  unknown variant or config key, or a bad value, as one ``error:`` line and exit status 2 rather
  than a traceback."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  argv = [argv[0]] + ["--help" if a == "-h" else a for a in argv[1:]]  # (as argparse CLIs take)
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS.config is not None:
      flags.FLAGS.config.keys()  # a recipe that did not load says so only when first read
    return rest
  except SystemExit as e:  # absl's --help prints the usage, then exits with status 1
    if e.code == 1 and set(argv[1:]) & {"--help", "--helpshort", "--helpfull"}:
      sys.exit(0)
    raise
  except Exception as e:  # pylint: disable=broad-except  (ml_collections raises several kinds)
    if isinstance(e.__context__, KeyError):  # an unknown field of the recipe
      message = f"unknown config field {e.__context__.args[0]}"
    elif "Failed loading config file" in str(e):  # missing or unreadable: the last line says why
      message = f"--config: the recipe did not load ({str(e).strip().splitlines()[-1].strip()})"
    else:
      message = str(e)
    if "Traceback (most recent call last):" in message:  # a recipe's own error, as text
      head, tail = message.split("Traceback (most recent call last):", 1)
      message = head + tail.strip().splitlines()[-1]
    print(f"error: {' '.join(message.split())} (see --help)", file=sys.stderr)
    sys.exit(2)


def check_folder(name: str, path: str) -> None:
  """ConfigError unless ``path`` is a folder or can be made one (no file on its way)."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f"{name}={path}: {existing} is a file, not a folder")
  if existing != os.path.abspath(path) and not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"{name}={path}: cannot create it ({existing} is not writable)")


def check_local_path(name: str, path: str) -> None:
  """Paths are read and written with the local file API: a bucket must be mounted."""
  if "://" in path:
    raise ConfigError(f"{name}={path}: URLs are not supported; mount the bucket with Cloud "
                      "Storage FUSE on every host (gcsfuse --implicit-dirs BUCKET /gcs/BUCKET) and "
                      "pass the mounted path")


def check_mesh_and_batch(config, device_count: int, process_count: int = 1) -> None:
  """The mesh fits the devices and the batch splits into whole rows per device, per
  accumulation step and per host (also checked by ``train.aot``, which has no data)."""
  from cope_jax.models.sharding import MESH_AXES  # pylint: disable=import-outside-toplevel
  for key in ("batch_size", "grad_accum_steps"):
    if config[key] < 1:
      raise ConfigError(f"{key} must be >= 1, got {config[key]}")
  sizes = [config.mesh.get(a, 1) for a in MESH_AXES]
  if any(s < 1 and s != -1 for s in sizes):
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: each axis is a size >= 1, or -1 for "
                      "the rest of the devices")
  if sizes.count(-1) > 1:
    rest = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: {' and '.join(rest)} are both -1, "
                      "and only one axis can take the rest of the devices (every recipe's data "
                      "axis is -1 unless set: add --config.mesh.data=1, say)")
  known = math.prod(s for s in sizes if s != -1)
  if device_count % known or (-1 not in sizes and known != device_count):
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} does not multiply to the "
                      f"{device_count} devices (use -1 for one axis to take the rest)")
  mesh = mesh_sizes(config, device_count)
  data_parallel = mesh["data"] * mesh["fsdp"]
  if config.batch_size % data_parallel:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the data-parallel "
                      f"size data × fsdp = {data_parallel}")
  if config.batch_size % (data_parallel * config.grad_accum_steps):
    # A micro-batch that does not split into whole rows per device leaves devices idle, and the
    # resharding it needs puts collective-permutes inside the accumulation loop, where XLA:CPU's
    # runtime deadlocked (8 emulated devices, batch 8, 2 steps: 4 hangs in 30 looped runs; none in
    # 48 with batch 16).
    raise ConfigError(f"batch_size {config.batch_size} over grad_accum_steps "
                      f"{config.grad_accum_steps} gives micro-batches that do not split into "
                      f"whole rows over the data × fsdp = {data_parallel} devices: use a "
                      f"batch_size that is a multiple of {data_parallel * config.grad_accum_steps}")
  if config.batch_size % process_count:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by {process_count} hosts")
  if (config.batch_size // process_count) % config.grad_accum_steps:
    raise ConfigError(f"the per-host batch {config.batch_size // process_count} is not divisible "
                      f"by grad_accum_steps {config.grad_accum_steps}")


def mesh_sizes(config, device_count: int) -> dict[str, int]:
  """The recipe's mesh axis sizes with its −1 resolved (once ``check_mesh_and_batch`` passed)."""
  from cope_jax.models.sharding import MESH_AXES  # pylint: disable=import-outside-toplevel
  sizes = {a: config.mesh.get(a, 1) for a in MESH_AXES}
  known = math.prod(s for s in sizes.values() if s != -1)
  return {a: device_count // known if s == -1 else s for a, s in sizes.items()}


def _warn_tensor_split(config, device_count: int, cfg) -> None:
  """A tensor axis that does not divide the attention heads is correct but slow: the heads'
  activations cannot be split, so XLA replicates and re-splits them in every layer (its
  "involuntary full rematerialization" warnings). Said once on stderr."""
  tensor = mesh_sizes(config, device_count)["tensor"]
  heads = {"LLM query": cfg.llm.num_heads, "LLM key/value": cfg.llm.num_kv_heads,
           "vision": cfg.vision.num_heads}
  uneven = [f"{name} heads {n}" for name, n in heads.items() if n % tensor]
  if tensor > 1 and uneven:
    print(f"warning: mesh tensor={tensor} does not divide the {', '.join(uneven)}: correct, but "
          "their attention is replicated and re-split in every layer (slower, more memory); "
          "a tensor size that divides them, or fsdp, avoids it", file=sys.stderr)


def check_batch_layout(mesh, batch_size: int) -> None:
  """Each batch row on the devices of one host only (ConfigError): every host feeds its own
  rows, and a row two hosts held would be two different rows in one replicated shard."""
  from cope_jax.models.sharding import hosts_sharing_batch_rows  # pylint: disable=import-outside-toplevel
  shared = hosts_sharing_batch_rows(mesh, batch_size)
  if shared:
    rows, hosts = shared[0]
    raise ConfigError(f"mesh {dict(mesh.shape)}: batch rows {rows.start}–{rows.stop - 1} are on "
                      f"devices of hosts {sorted(hosts)}, which feed different rows; keep the "
                      f"tensor axis within a host (more data or fsdp, less tensor)")


def _check_tokenizer(path: str, vocab_size: int) -> None:
  """A tokenizer whose ids the LLM's embedding table holds (the Qwen2 tokenizer's 151,646 ids
  do not fit the tiny LLM's 1,032: its lookups would read clipped rows, silently)."""
  if not path:
    return  # resolve() fills it; validate() alone (the tests) may not have run it
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  from cope_jax.data.tokenizer import ids_past_vocabulary  # pylint: disable=import-outside-toplevel
  try:
    tok = Tokenizer.from_file(path)
  except Exception as e:  # tokenizers raises its own Exception types
    raise ConfigError(f"--config.tokenizer {path}: not a tokenizer.json ({e})") from e
  if problem := ids_past_vocabulary(tok, vocab_size):
    raise ConfigError(f"--config.tokenizer {path} {problem}: pass the tokenizer this model's "
                      f"{vocab_size}-row embedding was made for (the tiny preset's: the "
                      "tokenizer.json that `data build --source synthetic` trains in "
                      "DATA_DIR/synthetic; Qwen2's needs a Qwen2-sized vocabulary)")


def validate(config, device_count: int, process_count: int = 1) -> None:
  """Raises ConfigError naming what is wrong and how to fix it: ``check_settings``, then
  ``check_inputs`` (``python -m cope_jax.train`` runs the first before ``resolve`` makes data)."""
  check_settings(config, device_count, process_count)
  check_inputs(config)


def _check_optimiser(config) -> None:
  """Values that would train uphill, not at all, or divide by zero — silently otherwise."""
  o = config.optim
  if config.stage == "finetune" and o.lr:  # (unread there: silently, another rate than asked)
    raise ConfigError(f"optim.lr ({o.lr}) is stage 1's learning rate; stage 2 trains each part at "
                      "its own: --config.trainable.PART=RATE for PART in "
                      f"{', '.join(config.trainable)}")
  rates = ({"optim.lr": o.lr} if config.stage == "pretrain" else
           {f"trainable.{k}": v for k, v in config.trainable.items()})
  for key, value in {**rates, "optim.clip_norm": o.clip_norm}.items():
    if key.startswith("trainable.") and value == 0:  # (a part frozen from the command line)
      continue
    # (nan too; an infinite rate too, clip_norm's inf being no clipping)
    if not value > 0 or (key != "optim.clip_norm" and math.isinf(value)):
      finite = "" if key == "optim.clip_norm" else " and finite"
      frozen = " (a part's: or 0, frozen)" if key.startswith("trainable.") else ""
      raise ConfigError(f"{key} must be > 0{finite}{frozen}, got {value}")
  if (config.stage == "finetune" and config.trainable
      and not any(v > 0 for v in config.trainable.values())):  # (none: check_settings says so)
    raise ConfigError("every trainable part's rate is 0 (frozen): nothing to train")
  if not (0 <= o.b1 < 1 and 0 <= o.b2 < 1 and o.weight_decay >= 0 and o.warmup_steps >= 0):
    raise ConfigError(f"optim.b1 and b2 must be in [0, 1), weight_decay and warmup_steps >= 0, "
                      f"got b1 {o.b1}, b2 {o.b2}, weight_decay {o.weight_decay}, warmup_steps "
                      f"{o.warmup_steps}")


DTYPES = ("float32", "bfloat16", "float16")  # the model's compute dtypes


def _check_loader(config) -> None:
  """Seeds, the data loader's sizes and the model's dtype (Grain, NumPy and JAX refuse them later
  with tracebacks, after the synthetic data is made)."""
  for key, seed in (("seed", config.seed), ("synthetic.seed", config.synthetic.seed)):
    if not 0 <= seed < 2**32:
      raise ConfigError(f"{key} must be from 0 to 2**32 - 1, got {seed}")
  for key in ("worker_count", "read_threads", "prefetch_batches"):
    if config[key] < 0:
      raise ConfigError(f"{key} must be >= 0, got {config[key]}")
  if config.model.dtype not in DTYPES:
    raise ConfigError(f"model.dtype must be one of {DTYPES}, got {config.model.dtype!r}")


def profile_range(profile_steps: str) -> tuple[int, int]:
  """``profile_steps`` ("FIRST:LAST", the steps as logged) as (FIRST, LAST)."""
  try:
    first, last = (int(x) for x in profile_steps.split(":"))
  except ValueError:
    first = last = -1
  if not 1 <= first <= last:
    raise ConfigError(f"profile_steps must be FIRST:LAST, the steps as logged, with 1 <= FIRST "
                      f"<= LAST (e.g. 5:8), got {profile_steps!r}")
  return first, last


def check_settings(config, device_count: int, process_count: int = 1) -> None:
  """The recipe's values alone, without its data (ConfigError): checked before any is made."""
  from cope_jax.train.tasks import model_config  # pylint: disable=import-outside-toplevel
  if config.stage not in ("pretrain", "finetune"):
    raise ConfigError(f"stage must be pretrain or finetune, got {config.stage!r}")
  if (config.stage == "finetune") != ("trainable" in config):  # (stage 2's per-part rates)
    raise ConfigError(f"stage {config.stage!r} is not this recipe's: the stage comes with its "
                      "recipe (configs/pretrain.py: stage 1, configs/finetune.py: stage 2); "
                      "pick the recipe, not --config.stage")
  # (batch_size and grad_accum_steps: check_mesh_and_batch; keep_checkpoints 0: Orbax would
  # delete even the last checkpoint)
  for key in ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
    if config[key] < 1:
      raise ConfigError(f"{key} must be >= 1, got {config[key]}")
  for key in ("attention_chunk", "loss_chunk"):  # (negative: a traceback at compile time)
    if config.model[key] < 0:
      raise ConfigError(f"model.{key} must be >= 0 (0 = one block), got {config.model[key]}")
  for key in ("data_dir", "init_checkpoint", "stage1_checkpoint", "vision_checkpoint",
              "tokenizer"):
    check_local_path(f"--config.{key}", str(config.get(key) or ""))
  if config.profile_steps:
    _, last = profile_range(config.profile_steps)
    if last > config.total_steps:  # (past the end: nothing traced, or the last save traced too)
      raise ConfigError(f"profile_steps {config.profile_steps} runs past total_steps "
                        f"{config.total_steps}: profile steps the run has")
  check_mesh_and_batch(config, device_count, process_count)
  _check_optimiser(config)
  _check_loader(config)
  cfg = model_config(config)
  _warn_tensor_split(config, device_count, cfg)
  if config.codec_size % cfg.delta.patch:
    raise ConfigError(f"codec_size {config.codec_size} is not a multiple of the Δ-encoder's "
                      f"{cfg.delta.patch}-pixel patches")
  if config.codec_size > cfg.delta.patch * cfg.delta.max_grid:  # (its position tables' rows)
    raise ConfigError(f"codec_size {config.codec_size} exceeds the Δ-encoder's "
                      f"{cfg.delta.patch * cfg.delta.max_grid} pixels ({cfg.delta.max_grid} "
                      f"patches of {cfg.delta.patch}: its grid position tables)")
  if config.stage != "finetune":
    return
  unknown = set(config.trainable) - set(STAGE2_PARTS)
  if unknown or not config.trainable:
    raise ConfigError(f"trainable parts must be a non-empty subset of {STAGE2_PARTS}, got "
                      f"{sorted(config.trainable)}")
  # A frozen part is loaded on every start and never saved: from nothing, it would be random in
  # training and missing (or another one) when inference loads the workdir.
  from cope_jax.train.tasks import trained_part_names  # pylint: disable=import-outside-toplevel
  for part in sorted(set(STAGE2_PARTS) - trained_part_names(config.trainable)):
    key = "stage1_checkpoint" if part == "delta_encoder" else "init_checkpoint"
    if not config.get(key) and not (part == "delta_encoder" and config.max_delta_frames == 0):
      later = ("taken from init_checkpoint's copy, which training ignores, when the workdir is "
               "loaded" if part == "delta_encoder" and config.get("init_checkpoint") else
               "missing when the workdir is loaded")
      raise ConfigError(f"{part} is frozen (not in trainable, or its rate 0) and no {key} gives "
                        f"it: it would stay random in training and be {later}; set "
                        f"--config.{key} or train it")
  # (refused by the data check otherwise, once the data is made; aot has no data check)
  if config.max_keyframes < 1 or config.max_delta_frames < 0:
    raise ConfigError(f"max_keyframes must be >= 1 and max_delta_frames >= 0 (0: RGB frames "
                      f"only), got {config.max_keyframes} and {config.max_delta_frames}")
  if config.get("keyframes_per_gop", 0) < 0:
    raise ConfigError(f"keyframes_per_gop must be >= 0 (0: the shards' own), got "
                      f"{config.keyframes_per_gop}")
  buckets = tuple(config.length_buckets)
  if not all(isinstance(b, int) and not isinstance(b, bool) for b in buckets):
    raise ConfigError(f"length_buckets must be whole numbers of positions, e.g. '(256,512)', "
                      f"got {buckets}")
  # The pipeline takes the first bucket that holds an example: out of order, it would cut
  # examples that a later, longer bucket holds.
  if not buckets or buckets[0] < 1 or any(b <= a for a, b in zip(buckets, buckets[1:])):
    raise ConfigError(f"length_buckets must be positive and ascending, got {buckets}")
  visual = (config.max_keyframes * cfg.keyframe_tokens
            + config.max_delta_frames * cfg.delta_tokens)
  longest = buckets[-1]
  if visual + 32 > longest:
    raise ConfigError(f"the visual tokens ({visual} = {config.max_keyframes} keyframes × "
                      f"{cfg.keyframe_tokens} + {config.max_delta_frames} Δ-frames × "
                      f"{cfg.delta_tokens}) leave no room for text in the longest length bucket "
                      f"({longest})")
  if longest > cfg.llm.max_positions:
    raise ConfigError(f"length bucket {longest} exceeds the LLM's {cfg.llm.max_positions} "
                      "positions")
  if config.group_by_length < 0:
    raise ConfigError(f"group_by_length must be >= 0 (0 = off, N = sort within windows of N "
                      f"batches), got {config.group_by_length}")


def check_inputs(config) -> None:
  """What the recipe reads — shards, checkpoints, stage 2's tokenizer — against it (ConfigError),
  after ``resolve``."""
  from cope_jax.data.build import shard_dir  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import model_config  # pylint: disable=import-outside-toplevel
  if not config.data_dir:
    raise ConfigError(f"no data_dir: build shards with `python -m cope_jax.data build --stage "
                      f"{config.stage} --source llava_video --annotations … --videos … --out DIR` "
                      f"and pass --config.data_dir=DIR (or try the :tiny variant)")
  shards = shard_dir(config.data_dir, config.stage)
  if not os.path.exists(os.path.join(shards, "dataset_info.json")):
    raise ConfigError(f"no {config.stage} shards in {config.data_dir} (expected {shards}): run "
                      f"`python -m cope_jax.data build --stage {config.stage} … --out "
                      f"{config.data_dir}` (or try the :tiny variant)")
  info = read_json(os.path.join(shards, "dataset_info.json"))
  splits = [s["name"] for s in info.get("splits", []) if isinstance(s, dict) and "name" in s]
  if config.split not in splits:
    raise ConfigError(f"split {config.split!r} is not in the shards in {config.data_dir}: they "
                      f"have {splits}")
  check_shards(config, shards)
  for key in ("vision_checkpoint", "init_checkpoint", "stage1_checkpoint"):
    path = config.get(key, "")
    if path and not os.path.isdir(path):
      raise ConfigError(f"{key} {path!r} does not exist")
  if config.stage == "pretrain" and config.model.preset != "tiny" and not config.vision_checkpoint:
    raise ConfigError("stage 1 needs the frozen vision encoder: --config.vision_checkpoint=DIR "
                      "from `python -m cope_jax.convert llava-video` (or try :tiny)")
  if config.stage == "finetune":
    if config.model.preset != "tiny" and not config.init_checkpoint:
      raise ConfigError("stage 2 starts from LLaVA-Video: --config.init_checkpoint=DIR from "
                        "`python -m cope_jax.convert llava-video` (or try :tiny)")
    _check_tokenizer(config.tokenizer, model_config(config).llm.vocab_size)
