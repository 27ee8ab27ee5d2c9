"""``python -m cope_jax.bench``: its help, usage errors and bad values; TTFT's settings and signs."""

import dataclasses
import subprocess
import sys

import numpy as np

from cope_jax.bench.__main__ import BENCHMARKS
from cope_jax.bench.ttft_bench import _change, compute_dtype, measure, settings, token_table
from cope_jax.codec.sampling import (KEYFRAME_TOKENS, SamplingConfig, num_frames_for_duration,
                                     token_budget)
from cope_jax.models import presets


def _bench(*args):
  return subprocess.run([sys.executable, "-m", "cope_jax.bench", *args], capture_output=True,
                        text=True, timeout=120, check=False)


def test_help_lists_every_benchmark_and_exits_0():
  r = _bench("--help")
  assert r.returncode == 0, r.stderr
  listed = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")]
  assert listed == list(BENCHMARKS)


def test_unknown_benchmark_or_flag_is_one_error_line():
  r = _bench("nonesuch")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
  assert r.stderr.startswith("error: unknown benchmark 'nonesuch'") and "letter" in r.stderr
  r = _bench("flops", "--seconds", "abc")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
  assert r.stderr.startswith("error: argument --seconds: invalid float value: 'abc'")
  assert "python -m cope_jax.bench flops --help" in r.stderr
  r = _bench()
  assert r.returncode == 2 and "usage: python -m cope_jax.bench" in r.stderr
  assert r.stderr.splitlines()[-1] == "error: name a benchmark"


def test_a_benchmark_takes_its_own_help():
  r = _bench("flops", "--help")
  assert r.returncode == 0, r.stderr
  assert "--text-tokens" in r.stdout and "(default 80)" in r.stdout


def test_bad_values_are_one_error_line_with_status_2(tmp_path):
  """Each benchmark refuses a non-positive size before running, and a bad input video is an
  ``error:`` line, not a traceback."""
  for args, flag in ((("ttft", "--seconds", "0"), "--seconds"),
                     (("flops", "--preset", "tiny", "--seconds", "-1"), "--seconds"),
                     (("data", "--batches", "0"), "--batches"),
                     (("codec", "--seconds", "0"), "--seconds"),
                     (("letter", "--questions", "q", "--tokenizer", "t", "--steps", "0"),
                      "--steps")):
    r = _bench(*args)
    assert r.returncode == 2, (args, r.stderr)
    assert f"error: {flag} must be " in r.stderr.splitlines()[-1], (args, r.stderr)
  r = _bench("train", "--config", "configs/finetune.py:tiny", "--peak-tflops", "inf")
  assert r.returncode == 2  # not an MFU of 0.0 % after the steps
  assert "error: --peak-tflops must be a finite number > 0, got inf" in r.stderr.splitlines()[-1]
  r = _bench("adaptive", "--thresholds", "0,300")
  assert r.returncode == 2 and "grey levels within 0-255" in r.stderr.splitlines()[-1]
  r = _bench("adaptive", "--workdir", str(tmp_path), "--thresholds", "0")
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "finished demo" in r.stderr
  r = _bench("adaptive", "--thresholds", "0", "--out", str(tmp_path / "no" / "x.json"))
  assert r.returncode == 2 and r.stderr == (f"error: --out {tmp_path / 'no' / 'x.json'}: its "
                                            "folder does not exist\n")  # before the clip
  r = _bench("ttft", "--plot", str(tmp_path / "no" / "x.png"))
  assert r.returncode == 2 and r.stdout == "" and r.stderr == (
      f"error: --plot {tmp_path / 'no' / 'x.png'}: its folder does not exist\n")
  text = tmp_path / "notes.mp4"
  text.write_text("not a video")
  r = _bench("codec", "--video", str(text))
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
  assert r.stderr.startswith(f"error: {text}: not a readable video file")
  r = _bench("codec", "--size", "20")
  assert r.returncode == 2 and r.stderr.startswith("error: size must be a positive multiple of 16")
  r = _bench("codec", "--fusion", "7", "--video", str(text))  # before any video is read
  assert r.returncode == 2 and r.stderr.startswith("error: --fusion 7: gop (240) must be divisible")


def test_ttft_computes_in_bfloat16_on_accelerators_only_by_default():
  assert compute_dtype("auto") == np.float32  # (this CPU)
  assert compute_dtype("bfloat16").name == "bfloat16" and compute_dtype("float32") == np.float32


def test_ttft_changes_are_signed():
  assert (_change(0.908), _change(-0.12), _change(0.0)) == ("−90.8%", "+12.0%", "±0.0%")


def test_ttft_measures_every_setting_with_the_budget_s_frame_counts():
  """The tiny preset end to end: the keyframes and Δ-frames of each setting are the token
  budget's (``codec budget``), Δ-frames at the keyframes' side, dense the reference."""
  cfg = presets.video_lm("tiny")
  # positions for the longest prompt (dense: 80 text tokens, the placeholder replaced by 64
  # frames' tokens) and the 2 new tokens, no more: the visual tokens were counted twice
  longest = 80 - 1 + 64 * cfg.keyframe_tokens
  cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, max_positions=longest + 2))
  rows = measure(cfg, 16, new_tokens=2, repeats=1)
  assert [r["setting"] for r in rows] == ["dense 64 frames", "CoPE K=1", "CoPE K=2", "CoPE K=4"]
  assert rows[0]["visual_tokens"] == 64 * cfg.keyframe_tokens and rows[0]["ttft_reduction"] == 0
  for r, k in zip(rows[1:], (1, 2, 4)):
    budget = token_budget(num_frames_for_duration(16, 30), SamplingConfig(keyframes_per_gop=k))
    assert (r["keyframes"], r["delta_frames"]) == (budget["keyframes"], budget["delta_frames"])
    assert r["visual_tokens"] == (r["keyframes"] * cfg.keyframe_tokens
                                  + r["delta_frames"] * cfg.delta_tokens)
    assert 0 < r["ttft_s"] <= r["e2e_s"] and r["delta_side"] == cfg.vision.image_size == 64


def test_ttft_dense_of_a_short_clip_is_every_frame_as_the_budget_counts_it():
  """A 1 s clip was timed as 64 dense frames (1 280 tokens, −95 %) where ``codec budget``
  counts its 30 frames."""
  dense = settings(1.0)
  name, (frames, deltas, kinds) = next(iter(dense.items()))
  budget = token_budget(num_frames_for_duration(1.0, 30), SamplingConfig())
  assert (name, frames, deltas, len(kinds)) == ("dense 30 frames", 30, 0, 30)
  assert frames * KEYFRAME_TOKENS == budget["dense_tokens"]
  assert next(iter(settings(64.0))) == "dense 64 frames"


def test_the_token_table_covers_every_setting_up_to_an_hour():
  """Its all-GOPs column asked for more GOPs than the sampler allows: the command failed."""
  rows = token_table()
  assert [r["seconds"] for r in rows][-1] == 3600
  for r in rows:
    assert r["K=1 (all GOPs)"] >= r["K=1"] > 0 and r["dense_64"] == 64 * 210
  assert rows[-1]["K=1 (all GOPs)"] > rows[-1]["K=1"]


def test_a_video_length_past_eleven_days_or_a_trainer_refusal_is_one_error_line(tmp_path):
  """inf and 1e300 seconds overflowed the sampler; bench train built any mesh and batch."""
  for args in (("flops", "--preset", "tiny", "--seconds", "inf"),
               ("ttft", "--seconds", "1e300")):
    r = _bench(*args)
    assert r.returncode == 2 and "error: --seconds must be at most 1e+06" in r.stderr, r.stderr
  r = _bench("train", "--config=configs/finetune.py:tiny", "--steps", "1",
             "--config.batch_size=3")
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr
  assert "batch_size 3" in r.stderr and "Traceback" not in r.stderr
  # a prompt past the model's positions: refused before the settings before it were measured
  r = _bench("ttft", "--seconds", "512", "--plot", str(tmp_path / "t.png"))
  assert r.returncode == 2 and "K=4 needs 56464 positions" in r.stderr, r.stderr
  assert r.stdout == "" and not (tmp_path / "t.png").exists()


def test_flops_are_counted_where_the_backend_gives_no_cost_analysis(monkeypatch):
  """JAX asks no PJRT plugin (CUDA, TPU) for a cost analysis: its None counted 0 FLOPs, and
  `bench train` printed a negative MFU on the hardware its bar is about."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax._src import stages  # pylint: disable=import-outside-toplevel
  from cope_jax.bench.train_bench import step_flops  # pylint: disable=import-outside-toplevel
  lowered = jax.jit(lambda a, b: jnp.tanh(a @ b)).lower(
      jax.ShapeDtypeStruct((64, 128), jnp.float32), jax.ShapeDtypeStruct((128, 32), jnp.float32))
  counted = step_flops(lowered)
  assert counted >= 2 * 64 * 128 * 32
  monkeypatch.setattr(stages.Lowered, "cost_analysis", lambda self: None)
  assert step_flops(lowered) == counted


def test_mfu_peaks_by_device_kind():
  from cope_jax.bench.train_bench import peak_tflops  # pylint: disable=import-outside-toplevel
  assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert peak_tflops("TPU v4") == 275.0 and peak_tflops("cpu") is None
  assert peak_tflops("NVIDIA H100 NVL") == peak_tflops("NVIDIA H200 NVL") == 835.0


def test_letter_bench_runs_one_step_and_refuses_lines_it_cannot_use(tmp_path):
  """One step crashed in optax's schedule (its warm-up took the whole run); a line without
  `family` failed after the training, a question past the 160-token rows in a numpy
  broadcast."""
  import json  # pylint: disable=import-outside-toplevel
  from cope_jax.data.tokenizer import train_small_tokenizer  # pylint: disable=import-outside-toplevel
  colours = ["red", "green", "blue", "yellow"]
  questions = [{"question": f"What colour is square {i}?", "options": colours,
                "answer": "ABCD"[i % 4], "open_answer": colours[i % 4], "family": "appearance",
                "split": "train" if i < 8 else "test"} for i in range(12)]
  tokenizer = tmp_path / "tok.json"
  train_small_tokenizer([json.dumps(q) for q in questions]).save(str(tokenizer))
  def write(name, lines):
    (tmp_path / name).write_text("".join(json.dumps(q) + "\n" for q in lines))
    return str(tmp_path / name)
  args = ("letter", "--tokenizer", str(tokenizer), "--batch", "4", "--layers", "1")
  r = _bench(*args, "--questions", write("q.jsonl", questions), "--steps", "1")
  assert r.returncode == 0, r.stderr[-2000:]
  r = _bench(*args, "--questions", write("nofamily.jsonl", [
      {k: v for k, v in q.items() if k != "family"} for q in questions]), "--steps", "1")
  assert r.returncode == 2 and "needs question, options, answer, open_answer, split, family" \
      in r.stderr.splitlines()[-1], r.stderr
  long = dict(questions[0], question="Which? " * 200)
  r = _bench(*args, "--questions", write("long.jsonl", [long] + questions[1:]), "--steps", "1")
  assert r.returncode == 2 and "more than the benchmark's 160" in r.stderr.splitlines()[-1], \
      r.stderr
