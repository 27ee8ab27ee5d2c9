"""Streams records into a TFDS ArrayRecord dataset folder, in generation order.

TFDS's own ``download_and_prepare`` holds a split in memory up to 1 GiB and then spills it to
buckets through ``tf.io.gfile`` — TensorFlow, which we do not depend on — so a paper-scale
split (a stage-2 record at 384 px is a few MB) could not be written. This writer serializes
each example with the builder's features as TFDS does, appends it to the current shard (a new
one every ``shard_bytes``), and writes TFDS's metadata at the end, so ``tfds.builder_from_
directory`` and Grain read the folder as before.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from tensorflow_datasets.core import example_serializer, naming

from cope_jax.command_line import bars_disabled

SHARD_BYTES = 1 << 30  # a new shard after 1 GiB, as TFDS sizes them
_SUFFIX = "array_record"
# A record is one protobuf message, which cannot pass 2 GiB; past it, serializing fails with
# "Wire format was corrupt" after using several times the record in memory. (Headroom for the
# message's own framing, a few bytes per value.)
MAX_RECORD_BYTES = (1 << 31) - (1 << 24)


def _payload_bytes(example: dict) -> int:
  """The bytes an example's values hold: its encoded frames, arrays and strings."""
  def size(value) -> int:
    if isinstance(value, str):
      return len(value.encode())
    if isinstance(value, bytes):
      return len(value)
    if isinstance(value, np.ndarray) and value.dtype == object:
      return sum(size(v) for v in value.flat)
    if isinstance(value, (list, tuple)):
      return sum(size(v) for v in value)
    return np.asarray(value).nbytes
  return sum(size(v) for v in example.values())


class RecordTooLarge(ValueError):
  """An example that one record cannot hold."""


def _template(folder: str, name: str, split: str | None = None) -> naming.ShardedFileTemplate:
  return naming.ShardedFileTemplate(data_dir=folder, template=naming.DEFAULT_FILENAME_TEMPLATE,
                                    dataset_name=name, split=split, filetype_suffix=_SUFFIX)


def write_dataset(folder: str, name: str, features: dict, description: str,
                  splits: Iterable[tuple[str, Iterator[dict]]],
                  version: str = "1.0.0", shard_bytes: int | None = None,
                  progress: bool = True) -> dict[str, int]:
  """Writes each (split, examples) into ``folder`` (new or empty) as the TFDS dataset ``name``;
  returns the records per split. A split with no examples is left out of the dataset (TFDS
  refuses empty ones)."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  shard_bytes = shard_bytes or SHARD_BYTES
  features = tfds.features.FeaturesDict(features)
  serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
  os.makedirs(folder, exist_ok=True)
  infos, counts = [], {}
  for split, examples in splits:
    lengths, paths, num_bytes, writer, shard_bytes_now = [], [], 0, None, 0
    for example in tqdm(examples, desc=f"writing {name} {split}", unit=" records",
                        disable=bars_disabled(progress), leave=False):
      # (deterministic: a map's entries in key order, not the process's hash order, so that the
      # same examples make the same bytes, which resuming checks)
      if (size := _payload_bytes(example)) > MAX_RECORD_BYTES:
        raise RecordTooLarge(f"{example.get('video', 'a')} record of {split} holds "
                             f"{size / (1 << 30):.2f} GiB, more than one record can (about 2 GiB)")
      record = serializer.get_tf_example(features.encode_example(example)).SerializeToString(
          deterministic=True)
      if writer is None or shard_bytes_now >= shard_bytes:
        if writer is not None:
          writer.close()
        paths.append(os.path.join(folder, f"{name}-{split}.{_SUFFIX}.part{len(paths):05d}"))
        writer, shard_bytes_now = ArrayRecordWriter(paths[-1], "group_size:1"), 0
        lengths.append(0)
      writer.write(record)
      lengths[-1] += 1
      shard_bytes_now += len(record)
    if writer is None:
      counts[split] = 0
      continue
    writer.close()
    template = _template(folder, name, split)
    for i, path in enumerate(paths):  # the final names need the shard count
      final = template.sharded_filepath(shard_index=i, num_shards=len(paths))
      os.replace(path, final)
      num_bytes += os.path.getsize(final)
    infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=num_bytes,
                                     filename_template=template))
    counts[split] = sum(lengths)
  if infos:
    tfds.folder_dataset.write_metadata(
        data_dir=folder, features=features, split_infos=infos, version=version,
        filename_template=_template(folder, name), check_data=False, disable_shuffling=True,
        description=description)
  return counts
