"""Entry point of ``python -m cope_jax.demo``; see the package docstring."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import sys
import time

import cope_jax.demo as demo_package
from cope_jax.codec.errors import ConfigError, VideoError
from cope_jax.codec.sampling import SamplingConfig
from cope_jax.command_line import ArgumentParser, clear_pending_stop, stop_by_signal
from cope_jax.demo.margins import shown_missed
from cope_jax.demo.recipe import FULL, QUICK, Paths
from cope_jax.demo.stages import StageStopped
from cope_jax.train import PREEMPTED
from cope_jax.json_files import earlier_settings, write_json


def _machine() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
          "devices": jax.device_count()}


def _earlier_results(results_path: str) -> dict:
  """The results an earlier run of this workdir saved (the same settings: checked first), or
  {}."""
  try:
    with open(results_path) as f:
      earlier = json.load(f)
    return earlier if isinstance(earlier, dict) else {}
  except (OSError, ValueError):
    return {}


def _flags(settings: dict) -> str:
  return (("--quick" if settings.get("quick") else "the full settings")
          + (f" and --min-change {settings['min_change']:g}" if settings.get("min_change") else "")
          + (f" and --seed {settings['seed']}" if settings.get("seed") else ""))


# The synthetic data's format, recorded with the settings (2: the entries start "<image>Q", not
# "<image>\nQ", whose line break the training prompt now keeps as LLaVA-NeXT's does; 3: questions
# about frame 0's objects say so, `direction` asked with room every way; 4: the absent objects
# among the options drawn as the scene's pair is; 5: a corner hit is one bounce, and its object
# not asked how many times it bounced): a workdir of another format would go on training on
# prompts its finished stages never saw.
DATA_FORMAT = 5


def _check_workdir(root: str, made_with: dict) -> None:
  """A workdir resumes only with the settings it was made with: stale data, checkpoints and
  cached evaluations of a --quick run must not show up in a full run's results."""
  made_with = {**made_with, "data_format": DATA_FORMAT}
  try:
    earlier = earlier_settings(os.path.join(root, "settings.json"), made_with)
  except OSError as e:  # a folder that is there but not this user's to write in (or read-only)
    raise ConfigError(f"--workdir {root}: cannot write there ({e.strerror})") from None
  if earlier is not None and earlier.get("data_format", 1) != DATA_FORMAT:
    raise ConfigError(f"{root} was made by an earlier version of the demo, whose training "
                      "prompts differ from this one's: use another --workdir")
  if earlier is not None:
    was, now = _flags(earlier), _flags(made_with)
    raise ConfigError(f"{root} was made with {was}" + (" (other sizes)" if was == now else "")
                      + f"; this run asks for {now}: use another --workdir")


def run(workdir: str, quick: bool, video: str | None, min_change: float = 0.0,
        seed: int = 0) -> dict:
  start = time.perf_counter()  # (the imports' seconds are the run's too)
  from cope_jax.demo import plots, report, stages  # pylint: disable=import-outside-toplevel
  from cope_jax.demo.codec_stage import run_codec_stage  # pylint: disable=import-outside-toplevel
  from cope_jax.demo.margins import describe as describe_margins  # pylint: disable=import-outside-toplevel
  from cope_jax.demo.margins import motion_margins  # pylint: disable=import-outside-toplevel
  from cope_jax.demo.recipe import base_config, stage1_config, stage2_config  # pylint: disable=import-outside-toplevel
  settings = dataclasses.replace(QUICK if quick else FULL, min_change=min_change, seed=seed)
  paths = Paths(os.path.abspath(workdir))
  _check_workdir(paths.root, {"quick": quick, **settings.recorded()})
  out = os.path.join(paths.root, "results.json")
  earlier_results = _earlier_results(out)
  earlier = float(earlier_results.get("elapsed_s_all_runs", earlier_results.get("elapsed_s", 0)))
  # A re-run starts from what the workdir holds, each stage replaced as it is done again: one
  # stopped early must not leave a finished workdir's results.json with its first stages only.
  results = {**earlier_results, "quick": quick, "settings": settings.__dict__,
             "machine": None, "stages_run": list(earlier_results.get("stages_run", []))}

  def save() -> None:  # after every stage, so that a run stopped later still counts its time
    results["elapsed_s"] = round(time.perf_counter() - start, 1)  # this run
    results["elapsed_s_all_runs"] = round(earlier + time.perf_counter() - start, 1)
    write_json(out, results)

  def done(stage: str, value) -> None:
    results[stage] = value
    if stage not in results["stages_run"]:
      results["stages_run"].append(stage)
    save()

  try:  # however the run stops (SIGTERM, Ctrl-C, an error), its time counts: saved
    results["machine"] = _machine()  # (it imports JAX: a SIGTERM may land there)
    done("codec", run_codec_stage(paths.root, video, settings.codec_seconds,
                                  earlier_results.get("codec")))
    done("data", stages.make_data(settings, paths))
    training = results["training"] = dict(results.get("training", {}))  # (each stage replaced)
    base = base_config(settings, paths)
    training["base"] = stages.train_stage("base", base, paths.base)
    save()
    stages.export_base(paths, base)
    training["stage1"] = stages.train_stage("stage1", stage1_config(settings, paths), paths.stage1)
    save()
    training["stage2"] = stages.train_stage("stage2", stage2_config(settings, paths), paths.stage2)
    done("training", training)
    # Each held-out video's frames per mode, extracted once, and each model, loaded once, for
    # every evaluation (the two models share their compiled programs: one model configuration).
    frames, models = {}, {}
    motion = results["data"]["motion_families"]
    modes = report.evaluate_modes(settings, paths, motion, frames=frames, models=models)
    done("evaluation", modes)
    probes = {}
    for answer_format, key in (("open", "open_ended"), ("ranked", "ranked_options")):
      probes[answer_format] = report.evaluate_modes(settings, paths, motion, answer_format,
                                                    frames, models)
      done(key, probes[answer_format])
    letter = report.letter_step(paths)
    done("letter_step", letter)
    trained = report.trained_letters(settings, paths, frames, models)
    done("trained_letters", trained)
    ret = report.retrieval(paths)
    done("retrieval", ret)
    ttft = report.ttft_interleaved(settings, paths, frames, models)
    done("ttft", ttft)
    results["targets"] = report.targets(modes, ret, ttft)
    results["motion_margins"] = motion_margins(modes, probes["ranked"], probes["open"], motion)
    results["plots"] = plots.plots(training, modes, paths.root, probes)
    table = (report.table(modes, ret, probes, ttft, letter, trained) + "\n\n"
             + describe_margins(results["motion_margins"]))
    done("report", {"table": table.splitlines()})
    results["targets"]["time"] = report.time_target(results["elapsed_s_all_runs"], quick)
  finally:
    save()
  return results


def _measured(key: str, value: float, need: str = "", met: bool = True) -> str:
  """One measured value of a target, as the tables print it: seconds as ms, counts whole. The
  value a missed target compares with a number (``need`` 'ratio <= 0.25') never prints on the
  line (0.2504 as 0.251, not 0.250; a miss on accuracies is a question or more, past rounding)."""
  lhs, op, rhs = (need.split(maxsplit=2) + ["", "", ""])[:3]
  digits, scale, unit = ((1, 1e3, " ms") if key.endswith("_s") else
                         (0, 1, "") if value > 1 and value == round(value) else
                         # (two decimals: 30.05 minutes must not print as 30.0 beside a miss)
                         (2, 1, "") if value > 1 else (3, 1, ""))  # accuracies, ratios: fractions
  shown = value * scale
  if not met and key == lhs and rhs.replace(".", "", 1).isdigit():
    shown = shown_missed(shown, digits, float(rhs), up=op.startswith("<"))
  return f"{key.removesuffix('_s')} {shown:.{digits}f}{unit}"


def _stop(signum, frame) -> None:
  """SIGTERM outside a training loop (data, compiling, evaluation): the run's finished stages
  and time are saved on the way out, and the exit status says to run it again."""
  del signum, frame
  stop_by_signal(StageStopped("SIGTERM: the finished stages and this run's time are saved; "
                              "re-run the same command to resume", PREEMPTED))


def _nothing_done(workdir: str) -> bool:
  """Whether a workdir this run made holds no finished stage."""
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      return not json.load(f).get("stages_run")
  except (OSError, ValueError):
    return True


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(prog="python -m cope_jax.demo",
                          description=demo_package.__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="folder for every output (resumable)")
  parser.add_argument("--quick", action="store_true",
                      help="a few videos and steps: checks the whole path in minutes (CI)")
  parser.add_argument("--video", help="use this video in the codec stage instead of the "
                                      "generated clip")
  parser.add_argument("--min-change", type=float, default=0.0,
                      help="adaptive fusion (see codec extract --help) for the CoPE shards of "
                      "stages 1 and 2 and the cope modes' evaluations; a workdir resumes only "
                      "with the value it was made with (default 0: the paper's fixed fusion)")
  parser.add_argument("--seed", type=int, default=0,
                      help="seeds the synthetic videos, their questions and split, every "
                      "initialisation and the data order: another seed is another sample of the "
                      "demo's figures (one run is one; a workdir resumes only with its own seed; "
                      "default 0, the README's run of record)")
  args = parser.parse_args(argv)
  fresh = not os.path.exists(args.workdir)
  previous = signal.signal(signal.SIGTERM, _stop)  # (a training loop saves at its next step)
  try:
    if not fresh and not os.path.isdir(args.workdir):
      raise ConfigError(f"--workdir {args.workdir} is a file, not a folder")
    SamplingConfig(min_change=args.min_change).validate()
    if not 0 <= args.seed < 2**31:
      raise ConfigError(f"--seed {args.seed}: a seed is from 0 to {2**31 - 1}")
    if args.video:  # before the workdir is made: a typo leaves nothing behind
      from cope_jax.codec.probe import inspect_video  # pylint: disable=import-outside-toplevel
      inspect_video(args.video)
    try:
      os.makedirs(args.workdir, exist_ok=True)
    except OSError as e:
      raise ConfigError(f"--workdir {args.workdir}: cannot create it ({e.strerror})") from None
    results = run(args.workdir, args.quick, args.video, args.min_change, args.seed)
  except (VideoError, ConfigError) as e:
    if fresh and _nothing_done(args.workdir):  # (a --video the codec refuses): leave nothing
      shutil.rmtree(args.workdir, ignore_errors=True)
    print(f"error: {e}", file=sys.stderr)
    return 2
  except StageStopped as e:  # checkpointed: the next run resumes there
    print(f"stopped: {e}", file=sys.stderr)
    return e.status
  finally:
    signal.signal(signal.SIGTERM, previous)
    clear_pending_stop()
  if args.min_change:
    print(f"\nadaptive fusion: --min-change {args.min_change:g} (the CoPE shards of stages 1 and "
          "2, and the cope modes)")
  print("\n" + "\n".join(results["report"]["table"]))
  for name, t in results["targets"].items():
    print(f"target {name}: {'met' if t['met'] else 'MISSED'} ({t['need']}; "
          + ", ".join(_measured(k, v, t["need"], t["met"]) for k, v in t.items()
                      if isinstance(v, float)) + ")")
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
  status = main()
  if status == PREEMPTED:
    # Stopped by SIGTERM with everything saved (results.json; checkpoints closed). One that
    # landed inside an XLA compile leaves native state that crashed the interpreter's teardown
    # (exit 139, not 75): leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)
