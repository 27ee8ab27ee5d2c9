"""Benchmarks: ``python -m cope_jax.bench {codec,data,ttft,flops,train,letter}``; each prints
figures measured in one run."""

import argparse


MAX_SECONDS = 1e6


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     *names: str) -> None:
  """``parser.error`` (one ``error:`` line, exit 2) unless each named flag is > 0."""
  for name in names:
    value = getattr(args, name.lstrip("-").replace("-", "_"))
    if value is not None and not value > 0:
      parser.error(f"{name} must be > 0, got {value}")
  seconds = getattr(args, "seconds", None)  # (as `codec budget --duration`: inf and 1e300 overflow)
  if "--seconds" in names and seconds is not None and not seconds <= MAX_SECONDS:
    parser.error(f"--seconds must be at most {MAX_SECONDS:g} (11 days), got {seconds}")
