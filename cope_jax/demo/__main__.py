"""Entry point of ``python -m cope_jax.demo``; see the package docstring."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import cope_jax.demo as demo_package
from cope_jax.codec.errors import ConfigError, VideoError
from cope_jax.demo.recipe import FULL, QUICK, Paths
from cope_jax.demo.stages import StageStopped
from cope_jax.json_files import earlier_settings, write_json


def _machine() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
          "devices": jax.device_count()}


def _earlier_seconds(results_path: str) -> float:
  """Time spent on this workdir by earlier runs (a resumed demo reports both)."""
  try:
    with open(results_path) as f:
      earlier = json.load(f)
    return float(earlier.get("elapsed_s_all_runs", earlier.get("elapsed_s", 0.0)))
  except (OSError, ValueError):
    return 0.0


def _check_workdir(root: str, made_with: dict) -> None:
  """A workdir resumes only with the settings it was made with: stale data, checkpoints and
  cached evaluations of a --quick run must not show up in a full run's results."""
  earlier = earlier_settings(os.path.join(root, "settings.json"), made_with)
  if earlier is not None:
    was = "--quick" if earlier.get("quick") else "the full settings"
    now = "--quick" if made_with["quick"] else "the full settings"
    raise ConfigError(f"{root} was made with {was}" + (" (other sizes)" if was == now else "")
                      + f"; this run asks for {now}: use another --workdir")


def run(workdir: str, quick: bool, video: str | None) -> dict:
  from cope_jax.demo import report, stages  # pylint: disable=import-outside-toplevel
  from cope_jax.demo.codec_stage import run_codec_stage  # pylint: disable=import-outside-toplevel
  from cope_jax.demo.recipe import base_config, stage1_config, stage2_config  # pylint: disable=import-outside-toplevel
  settings = QUICK if quick else FULL
  paths = Paths(os.path.abspath(workdir))
  _check_workdir(paths.root, {"quick": quick, **settings.__dict__})
  out = os.path.join(paths.root, "results.json")
  start, earlier = time.perf_counter(), _earlier_seconds(out)
  results = {"quick": quick, "settings": settings.__dict__, "machine": _machine(),
             "stages_run": []}

  def save() -> None:  # after every stage, so that a run stopped later still counts its time
    results["elapsed_s"] = round(time.perf_counter() - start, 1)  # this run
    results["elapsed_s_all_runs"] = round(earlier + time.perf_counter() - start, 1)
    write_json(out, results)

  def done(stage: str, value) -> None:
    results[stage] = value
    results["stages_run"].append(stage)
    save()

  done("codec", run_codec_stage(paths.root, video, settings.codec_seconds))
  done("data", stages.make_data(settings, paths))
  training = results["training"] = {}
  base = base_config(settings, paths)
  try:  # a stopped stage's time counts too
    training["base"] = stages.train_stage("base", base, paths.base)
    save()
    stages.export_base(paths, base)
    training["stage1"] = stages.train_stage("stage1", stage1_config(settings, paths),
                                            paths.stage1)
    save()
    training["stage2"] = stages.train_stage("stage2", stage2_config(settings, paths),
                                            paths.stage2)
  except stages.StageStopped:
    save()
    raise
  done("training", training)
  # Each held-out video's frames per mode, extracted once, and each model, loaded once, for every
  # evaluation (the two models share their compiled programs: one model configuration).
  frames, models = {}, {}
  motion = results["data"]["motion_families"]
  modes = report.evaluate_modes(settings, paths, motion, frames=frames, models=models)
  done("evaluation", modes)
  probes = {}
  for answer_format, key in (("open", "open_ended"), ("ranked", "ranked_options")):
    probes[answer_format] = report.evaluate_modes(settings, paths, motion, answer_format, frames,
                                                    models)
    done(key, probes[answer_format])
  letter = report.letter_step(paths)
  done("letter_step", letter)
  ret = report.retrieval(paths)
  done("retrieval", ret)
  ttft = report.ttft_interleaved(settings, paths, frames, models)
  done("ttft", ttft)
  results["targets"] = report.targets(modes, ret, ttft)
  results["plots"] = report.plots(training, modes, paths.root, probes)
  done("report", {"table": report.table(modes, ret, probes, ttft, letter).splitlines()})
  results["targets"]["time"] = report.time_target(results["elapsed_s_all_runs"], quick)
  save()
  return results


def _measured(key: str, value: float) -> str:
  """One measured value of a target, as the tables print it: seconds as ms, counts whole."""
  if key.endswith("_s"):
    return f"{key[:-2]} {value * 1e3:.1f} ms"
  if value > 1:  # token counts and minutes; accuracies and ratios stay fractions
    return f"{key} {value:.0f}" if value == round(value) else f"{key} {value:.1f}"
  return f"{key} {value:.3f}"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cope_jax.demo",
                                   description=demo_package.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="folder for every output (resumable)")
  parser.add_argument("--quick", action="store_true",
                      help="a few videos and steps: checks the whole path in minutes (CI)")
  parser.add_argument("--video", help="use this video in the codec stage instead of the "
                                      "generated clip")
  args = parser.parse_args(argv)
  try:
    if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
      raise ConfigError(f"--workdir {args.workdir} is a file, not a folder")
    if args.video:  # before the workdir is made: a typo leaves nothing behind
      from cope_jax.codec.probe import inspect_video  # pylint: disable=import-outside-toplevel
      inspect_video(args.video)
    os.makedirs(args.workdir, exist_ok=True)
    results = run(args.workdir, args.quick, args.video)
  except (VideoError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except StageStopped as e:  # checkpointed: the next run resumes there
    print(f"stopped: {e}", file=sys.stderr)
    return e.status
  print("\n" + "\n".join(results["report"]["table"]))
  for name, t in results["targets"].items():
    print(f"target {name}: {'met' if t['met'] else 'MISSED'} ({t['need']}; "
          + ", ".join(_measured(k, v) for k, v in t.items() if isinstance(v, float)) + ")")
  if not args.quick and not all(t["met"] for t in results["targets"].values()):
    print("why the missed targets are missed, measured: README.md, 'The demo' (the letter step "
          "and the text prompt at this size); every experiment: docs/demo_findings.md")
  took = f"{results['elapsed_s'] / 60:.1f} min"
  if results["elapsed_s_all_runs"] > results["elapsed_s"]:
    took += f"; {results['elapsed_s_all_runs'] / 60:.1f} min with the earlier runs it resumed"
  print(f"\nresults: {os.path.join(args.workdir, 'results.json')}; plots: "
        f"{results['plots']['losses']}, {results['plots']['pareto']} ({took})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
