"""Writing JSON result files atomically (a reader never sees half a file, an interrupted run
leaves the old one)."""

from __future__ import annotations

import json
import os


def write_json(path: str, value, indent: int | None = 2) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=indent)
  os.replace(tmp, path)
