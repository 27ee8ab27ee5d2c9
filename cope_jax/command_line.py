"""The argument parser every ``python -m cope_jax.…`` command uses.

A bad flag or value is bad input like any other: one line on stderr that starts with ``error:``,
exit status 2 (argparse prints its whole usage block first; ``--help`` still shows it).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose usage errors are one line; sub-commands inherit it."""

  def error(self, message: str) -> NoReturn:
    print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
    sys.exit(2)
