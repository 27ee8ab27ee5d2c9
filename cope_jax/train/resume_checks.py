"""What a resumed training run must share with the run that saved its checkpoints: the model,
the data order (its saved data position is a batch count) and the checkpoints it started from."""

from __future__ import annotations

import glob
import hashlib
import os
import warnings

from cope_jax.codec.errors import ConfigError
from cope_jax.data.build import shard_dir
from cope_jax.json_files import read_json


# What decides which examples make each batch: the saved data position is a batch count, so a
# resume with any of these changed would silently skip or repeat data.
DATA_ORDER_KEYS = ("batch_size", "seed", "split", "group_by_length")


DATA_ORDER = "data_order.json"  # in the workdir: the records the run's data position counts


def split_records(config) -> dict:
  """What the split a run reads holds: its shard lengths (dataset_info.json) and a digest of its
  shard files (every file's name and size, the first and the last file's first and last 64 KiB:
  other records change them, a move or a copy does not) — a data position saved against other
  records means other examples."""
  shards = shard_dir(config.data_dir, config.stage)
  info = read_json(os.path.join(shards, "dataset_info.json"))
  split = next((s for s in info.get("splits", []) if s.get("name") == config.split), {})
  files = sorted(glob.glob(os.path.join(glob.escape(shards), f"*-{config.split}.array_record-*")))
  digest = hashlib.sha256()
  for path in files:
    digest.update(f"{os.path.basename(path)} {os.path.getsize(path)}\n".encode())
  for path in dict.fromkeys(files[:1] + files[-1:]):
    with open(path, "rb") as f:
      digest.update(f.read(1 << 16))
      f.seek(max(0, os.path.getsize(path) - (1 << 16)))
      digest.update(f.read())
  return {"split": config.split, "shard_lengths": [int(n) for n in split.get("shardLengths", [])],
          "content": digest.hexdigest()[:16]}


def check_same_data_order(config, workdir: str) -> None:
  """ConfigError if the run being resumed (its ``train_config.json``) batched its data otherwise,
  or read other records (its ``data_order.json``: the data may move, not change)."""
  path = os.path.join(workdir, "train_config.json")
  if not os.path.exists(path):
    return
  before = read_json(path)
  changed = [f"{k} {before[k]!r} → {config.get(k)!r}" for k in DATA_ORDER_KEYS
             if k in before and before[k] != config.get(k)]
  if changed:
    raise ConfigError(f"the run in {workdir} batched its data otherwise ({', '.join(changed)}): "
                      "its saved data position would mean other examples; resume with its "
                      "settings, or use another --workdir")
  order = os.path.join(workdir, DATA_ORDER)
  if not os.path.exists(order):
    return
  was, now = read_json(order), split_records(config)
  if any(was[k] != now[k] for k in set(was) & set(now)):
    def records(r):
      return (f"{sum(r['shard_lengths'])} records in {len(r['shard_lengths'])} shards, "
              f"content {r.get('content', '?')}")
    raise ConfigError(f"the run in {workdir} read other data ({records(was)}) than "
                      f"{config.data_dir} now holds for split {config.split!r} ({records(now)}): "
                      "its saved data position would mean other examples: resume on the shards "
                      "it read (they may move), or use another --workdir")


def _saved_config(workdir: str) -> dict:
  """The run's ``train_config.json``, or {} where it has none readable."""
  try:
    return read_json(os.path.join(workdir, "train_config.json"))
  except (OSError, ValueError):
    return {}


def _has_steps(workdir: str) -> bool:
  steps = os.path.join(workdir, "checkpoints")
  return os.path.isdir(steps) and any(n.isdigit() for n in os.listdir(steps))


# Where a run's parts start from: on a resume its trained parts come from its own checkpoint,
# only its frozen ones from these.
SOURCE_KEYS = ("init_checkpoint", "stage1_checkpoint", "vision_checkpoint")


def check_same_sources(config, workdir: str) -> None:
  """Before anything is loaded, on a resume (a saved step in ``workdir``): ConfigError if the run
  started from a checkpoint and this one from none, or the reverse (a stage 2 first run without
  ``stage1_checkpoint``, resumed with one, trained the random Δ-encoder on and said "Δ-encoder
  from stage 1"); a warning if a path differs (moved, or another checkpoint: the frozen parts
  come from the new path, the trained ones from the run's own)."""
  saved = os.path.join(workdir, "train_config.json")
  if not (os.path.exists(saved) and _has_steps(workdir)):
    return
  before = read_json(saved)
  if "trainable" in config and isinstance(before.get("trainable"), dict):
    from cope_jax.train.tasks import trained_part_names  # pylint: disable=import-outside-toplevel
    was, now = trained_part_names(before["trainable"]), trained_part_names(config.trainable)
    if was != now:  # (Orbax's refusal blamed other model settings)
      raise ConfigError(f"the run in {workdir} trained {sorted(was)}, and this one would train "
                        f"{sorted(now)}: its checkpoints hold the first; resume "
                        "with its trainable rates, or use another --workdir")
  for key in SOURCE_KEYS:
    was, now = before.get(key) or "", config.get(key) or ""
    if bool(was) != bool(now):
      raise ConfigError(
          f"the run in {workdir} started {f'from {key}={was}' if was else f'without {key}'}, "
          f"and its checkpoints hold the parts it trained from there: resume it "
          f"{f'with --config.{key}={was}' if was else f'without --config.{key}'}, or use "
          "another --workdir")
    if was != now:
      warnings.warn(f"{key}: the run in {workdir} started from {was}, resumed with {now} (moved? "
                    "frozen parts are loaded from it, trained ones from the run's checkpoint)",
                    RuntimeWarning)


def check_same_model_config(config, task, workdir: str) -> None:
  """Before anything is built, on a resume (a saved step in ``workdir``): ConfigError naming the
  settings where the run's model (its ``model_config.json``) differs from this one's. Orbax
  refused other shapes only after the model was built and compiled, without saying which; a
  model of the same shapes that computes otherwise (another norm's eps) would train on."""
  from cope_jax.models import config_io  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import model_differences  # pylint: disable=import-outside-toplevel
  saved = os.path.join(workdir, "model_config.json")
  if not (_has_steps(workdir) and os.path.exists(saved)):
    return
  try:
    before = config_io.load(saved)
  except (OSError, ValueError):  # (left to the restore; rewritten once one fits)
    return
  # (scanned layers are one stacked parameter each: not the checkpoint's tree unscanned)
  differ = model_differences(task.cfg, before, task.model_parts,
                             may_differ={"dtype", "remat", "attention_chunk"})
  if not differ:
    return
  listed = "; ".join(f"{name} {theirs!r} → {ours!r}" for name, ours, theirs in differ[:6])
  listed += f" and {len(differ) - 6} more" if len(differ) > 6 else ""
  model = _saved_config(workdir).get("model") or {}
  presets = {k: model[k] or "" for k in ("preset", "delta") if k in model}
  if presets and all(v == (config.model.get(k) or "") for k, v in presets.items()):
    hint = ("its presets are this run's, so their definition changed since (an older cope_jax "
            "wrote the run): resume it with the version that trained it")
  else:
    settings = " ".join(f"--config.model.{k}={v}" for k, v in presets.items())
    hint = f"resume with its settings ({settings or 'its --config.model.*'})"
  raise ConfigError(f"the run in {workdir} trained another model ({listed}): its checkpoints "
                    f"hold that one; {hint}, or use another --workdir")
