"""The codec tools' two error types for bad input: VideoError (an unusable video) and
ConfigError (settings that make no sense)."""

from __future__ import annotations

import os


class VideoError(Exception):
  """A video cannot be used; ``str(err)`` is one line naming the file and the reason."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


def one_line(e: BaseException) -> str:
  """An exception's message on one line (libraries such as Orbax write several)."""
  return " ".join(str(e).split())


class ConfigError(ValueError):
  """Settings that make no sense together (e.g. a GOP not divisible by the fusion window)."""
