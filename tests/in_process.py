"""A command's ``main`` run in the test's own process, returned as ``subprocess.run`` returns the
finished command: each subprocess start costs seconds of imports and compilations on 2 cores.
(Each command's own ``python -m`` path is tested in its test file.)"""

import contextlib
import importlib
import io
import subprocess
import sys
import warnings

# Python's defaults hide these outside __main__; a fresh process would not print them.
_HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def _to_stderr(message, category, filename, lineno, file=None, line=None):
  del file
  sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_main(module: str, *args: str) -> subprocess.CompletedProcess:
  """``python -m module args`` as ``module.main(args)``: its exit status, stdout and stderr,
  warnings printed to stderr as a fresh process prints them (pytest would record them)."""
  main = importlib.import_module(module).main
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
      warnings.catch_warnings():
    warnings.resetwarnings()
    warnings.simplefilter("always")  # (every call a fresh process: no "once per location")
    for category in _HIDDEN:
      warnings.simplefilter("ignore", category)
    warnings.showwarning = _to_stderr
    try:
      status = main(list(args))
    except SystemExit as e:
      status = e.code
  if isinstance(status, str):  # sys.exit("message"): printed, status 1
    err.write(status + "\n")
    status = 1
  return subprocess.CompletedProcess([module, *args], status or 0, out.getvalue(), err.getvalue())
