"""Writing JSON result files atomically (a reader never sees half a file, an interrupted run
leaves the old one)."""

from __future__ import annotations

import json
import os


def earlier_settings(path: str, settings: dict) -> dict | None:
  """For a folder a later run resumes: records ``settings`` at ``path`` on the first run, and
  returns what an earlier run recorded there when it differs (None when it matches)."""
  settings = json.loads(json.dumps(settings))  # tuples as lists, as they read back
  if not os.path.exists(path):
    write_json(path, settings)
    return None
  with open(path) as f:
    earlier = json.load(f)
  return earlier if earlier != settings else None


def write_json(path: str, value, indent: int | None = 2) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=indent)
  os.replace(tmp, path)
