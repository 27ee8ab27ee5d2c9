"""The argument parser every ``python -m cope_jax.…`` command uses.

A bad flag or value is bad input like any other: one line on stderr that starts with ``error:``,
exit status 2 (argparse prints its whole usage block first; ``--help`` still shows it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose usage errors are one line; sub-commands inherit it."""

  def error(self, message: str) -> NoReturn:
    print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
    sys.exit(2)

  def parse_args(self, args=None, namespace=None):
    # argparse reports a flag no (sub-)parser knows from the top parser, whose --help lists no
    # sub-command's flags: name the sub-command the flag was given to instead.
    parsed, extras = self.parse_known_args(args, namespace)
    if extras:
      prog = getattr(parsed, _HELP_PROG, None) or self.prog
      print(f"error: unrecognized arguments: {' '.join(extras)} (see {prog} --help)",
            file=sys.stderr)
      sys.exit(2)
    if hasattr(parsed, _HELP_PROG):
      delattr(parsed, _HELP_PROG)
    return parsed

  def add_subparsers(self, **kwargs):
    action = super().add_subparsers(**kwargs)
    add_parser = action.add_parser

    def add_named_parser(name, **parser_kwargs):
      parser = add_parser(name, **parser_kwargs)
      parser.set_defaults(**{_HELP_PROG: parser.prog})
      return parser

    action.add_parser = add_named_parser
    return action


_HELP_PROG = "_cope_help_prog"  # the sub-command a parse used (removed before returning)


def bars_disabled(progress: bool) -> bool | None:
  """tqdm's ``disable`` for a progress bar: None shows it on a terminal only (through a pipe its
  carriage-return frames garbled the log and ran into the next line), True never."""
  return None if progress else True


@contextlib.contextmanager
def new_folders_left_empty_removed(*folders: str):
  """Of ``folders`` (innermost first), those that are not there yet are removed on the way out
  of a job that stops with an exception while they are still empty: a run refused, or stopped,
  before it wrote anything leaves no empty folder behind (what it did write stays)."""
  made = [f for f in folders if not os.path.isdir(f)]
  try:
    yield
  except BaseException:
    for folder in made:
      if os.path.isdir(folder) and not os.listdir(folder):
        with contextlib.suppress(OSError):
          os.rmdir(folder)
    raise


def check_results_file(flag: str, path: str) -> None:
  """OSError unless ``path`` can be written as a results file: its folder exists and it is not
  a folder itself. Checked before any work, so that a typo does not cost the whole job."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{flag} {path}: its folder does not exist")
  if os.path.isdir(path):
    raise IsADirectoryError(f"{flag} {path} is a folder; name the results file")
  check_writable_folder(flag, path, folder)


def check_writable_folder(flag: str, path: str, folder: str) -> None:
  """OSError unless a file can be made in ``folder`` (read-only mounts, permissions): tried, as
  ``os.access`` says yes to root on a read-only file system."""
  try:
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    raise PermissionError(f"{flag} {path}: cannot write in its folder {folder} "
                          f"({e.strerror or e})") from None


_pending_stop: BaseException | None = None  # a SIGTERM's exception, until the process ends


def stop_by_signal(exception: BaseException) -> NoReturn:
  """Raises ``exception`` from a SIGTERM handler, and again at the next packet a decoding loop
  reads (``raise_pending_stop``): PyAV drops an exception raised while its own error check runs
  (about one SIGTERM in 50 during a re-encode), and the command would then finish its work."""
  global _pending_stop  # pylint: disable=global-statement
  drop_unraisable(_is_lost_stop)
  _pending_stop = exception
  raise exception


def _is_lost_stop(info) -> bool:
  """A SIGTERM's exception raised where Python cannot raise it (a garbage-collection callback
  of JAX's): printed with a traceback, though raised again at the next check."""
  return info.exc_value is not None and info.exc_value is _pending_stop


_DROPPED_UNRAISABLE: list = []  # what drop_unraisable was asked to drop


def drop_unraisable(predicate) -> None:
  """Python prints an exception it cannot raise (in a finalizer, a garbage-collection callback)
  through ``sys.unraisablehook``: the events ``predicate`` accepts are dropped, every other goes
  to the hook before. One hook a process, however many ask (pytest puts its own back after each
  test: installed again where it is missing)."""
  if predicate not in _DROPPED_UNRAISABLE:
    _DROPPED_UNRAISABLE.append(predicate)
  if getattr(sys.unraisablehook, "cope_jax_drops", False):
    return
  previous = sys.unraisablehook

  def hook(info) -> None:
    if not any(dropped(info) for dropped in _DROPPED_UNRAISABLE):
      previous(info)

  hook.cope_jax_drops = True
  sys.unraisablehook = hook


def raise_pending_stop() -> None:
  """Raises a SIGTERM's exception (see ``stop_by_signal``) if one was taken."""
  if _pending_stop is not None:
    raise _pending_stop


def clear_pending_stop() -> None:
  """For a process that goes on after its handler's exception was dealt with (the demo's
  ``main``, called in-process by tests and notebooks)."""
  global _pending_stop  # pylint: disable=global-statement
  _pending_stop = None


def exit_on_sigterm() -> None:
  """A SIGTERM (``kill``, ``timeout``, a scheduler) ends the command as Ctrl-C does, by an
  exception, so that its ``finally`` blocks run: temporary files (a re-encoded video, a results
  file half written) are removed and worker processes stopped. By default it kills the process
  where it stands. Called by the commands' ``__main__`` blocks (not by ``main``, which tests and
  notebooks call in their own process); a second SIGTERM kills. Ctrl-C raises its
  KeyboardInterrupt as before, and again should PyAV drop it (see ``stop_by_signal``)."""

  def stop(signum, _frame):
    signal.signal(signum, signal.SIG_DFL)
    print("stopped by SIGTERM", file=sys.stderr)
    stop_by_signal(SystemExit(128 + signum))

  def interrupt(_signum, _frame):
    stop_by_signal(KeyboardInterrupt())

  signal.signal(signal.SIGTERM, stop)
  if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not where it is ignored)
    signal.signal(signal.SIGINT, interrupt)
