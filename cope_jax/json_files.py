"""Writing JSON result files atomically (a reader never sees half a file, an interrupted run
leaves the old one), and reading back the ones a run left (a damaged one named as such)."""

from __future__ import annotations

import json
import os

from cope_jax.codec.errors import ConfigError, one_line


def read_json(path: str, kind: type = dict):
  """The JSON value in ``path``, of type ``kind``; ConfigError naming the file if it is not
  JSON or holds another type (a file a run wrote, edited or cut short since)."""
  try:
    with open(path) as f:
      value = json.load(f)
  except FileNotFoundError:  # (nothing to restore or remove)
    raise ConfigError(f"{path}: no such file") from None
  except (OSError, ValueError) as e:  # a folder, no permission; (JSONDecodeError and
    raise ConfigError(f"{path}: not a readable JSON file ({one_line(e)}); restore or remove "
                      "it") from None  # UnicodeDecodeError are ValueErrors)
  if not isinstance(value, kind):
    raise ConfigError(f"{path}: holds a JSON {type(value).__name__}, not a "
                      f"{'JSON object' if kind is dict else kind.__name__}; restore or remove it")
  return value


def earlier_settings(path: str, settings: dict) -> dict | None:
  """For a folder a later run resumes: records ``settings`` at ``path`` on the first run, and
  returns what an earlier run recorded there when it differs (None when it matches)."""
  settings = json.loads(json.dumps(settings))  # tuples as lists, as they read back
  if not os.path.exists(path):
    write_json(path, settings)
    return None
  earlier = read_json(path)
  return earlier if earlier != settings else None


def write_json(path: str, value, indent: int | None = 2) -> None:
  _write_whole(path, lambda f: json.dump(value, f, indent=indent))


def write_jsonl(path: str, rows) -> None:
  """One JSON object per line, written whole as ``write_json`` writes."""
  _write_whole(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows))


def _write_whole(path: str, write) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    write(f)
  os.replace(tmp, path)
