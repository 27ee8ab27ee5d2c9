"""Sampling plan and token budget: the paper's numbers and the partial-GOP rule."""

import json

import numpy as np
import pytest

from cope_jax.codec import __main__ as cli
from cope_jax.codec.errors import ConfigError
from cope_jax.codec.sampling import (DELTA, KEYFRAME, SamplingConfig, num_frames_for_duration,
                                     plan_positions, token_budget)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("seconds", [8, 64, 600])
def test_kinds_and_counts(seconds, k):
  cfg = SamplingConfig(keyframes_per_gop=k)
  plan = plan_positions(num_frames_for_duration(seconds, 30), cfg)
  gops_in_video = seconds * 30 // 240
  kept = min(gops_in_video, 64)
  assert plan.num_gops == -(-seconds * 30 // 240)
  assert len(np.unique(plan.gops)) == kept
  assert plan.num_keyframes == kept * k
  assert plan.num_delta_frames == kept * (8 - k)
  # Each GOP: keyframes evenly spaced, the first on the I-frame, then Δ-frames at 1 FPS.
  for g in np.unique(plan.gops):
    frames = plan.frames[plan.gops == g]
    kinds = plan.kinds[plan.gops == g]
    np.testing.assert_array_equal(frames, g * 240 + np.arange(8) * 30)
    assert kinds[0] == KEYFRAME
    np.testing.assert_array_equal(np.flatnonzero(kinds == KEYFRAME), np.arange(k) * (8 // k))
  np.testing.assert_allclose(plan.times, plan.frames / 30)
  assert np.all(np.diff(plan.frames) > 0)


def test_600s_keeps_64_gops_uniformly_including_first_and_last():
  plan = plan_positions(num_frames_for_duration(600, 30), SamplingConfig())
  gops = np.unique(plan.gops)
  assert plan.num_gops == 75 and len(gops) == 64
  assert gops[0] == 0 and gops[-1] == 74
  assert np.all(np.diff(gops) >= 1) and np.diff(gops).max() <= 2


@pytest.mark.parametrize("k,tokens", [(1, 2240), (2, 3840), (4, 7040)])
def test_token_budget_matches_paper_worked_example(k, tokens):
  budget = token_budget(num_frames_for_duration(64, 30), SamplingConfig(keyframes_per_gop=k))
  assert budget["cope_tokens"] == tokens
  assert budget["dense_tokens"] == 13440
  assert budget["gops"] == 8
  assert budget["keyframes"] == 8 * k and budget["delta_frames"] == 8 * (8 - k)
  assert budget["ratio"] == pytest.approx(tokens / 13440)


def test_partial_gop_rule():
  # 10 s = one full GOP + 60 frames: positions at offsets 0 and 30 of the second GOP (I + Δ).
  plan = plan_positions(300, SamplingConfig(keyframes_per_gop=2))
  np.testing.assert_array_equal(plan.frames, list(range(0, 240, 30)) + [240, 270])
  assert plan.kinds[-2:].tolist() == [KEYFRAME, DELTA]
  assert token_budget(300, SamplingConfig())["cope_tokens"] == 210 + 70 + 210 + 10
  # A video shorter than one fusion window has just its I-frame.
  assert plan_positions(20, SamplingConfig()).kinds.tolist() == [KEYFRAME]


def test_fusion_changes_positions_per_gop():
  plan = plan_positions(240, SamplingConfig(fusion=10))
  assert len(plan.frames) == 24 and plan.num_keyframes == 1
  # Tab. H.5: (196+14)·K + (8+2)·P per GOP.
  assert token_budget(240, SamplingConfig(fusion=10))["cope_tokens"] == 210 + 23 * 10


def test_dense_sampling_is_llava_videos_uniform_frames():
  """n frames at np.linspace(0, T − 1, n) rounded down, all keyframes, every GOP (LLaVA-Video's
  load_video with force_sample)."""
  plan = plan_positions(240, SamplingConfig(uniform_frames=20))
  np.testing.assert_array_equal(plan.frames, np.linspace(0, 239, 20).astype(int))
  assert plan.frames[:4].tolist() == [0, 12, 25, 37] and plan.frames[-1] == 239
  assert plan.num_keyframes == 20 and plan.num_delta_frames == 0
  long = plan_positions(18_000, SamplingConfig(uniform_frames=64))  # 10 min: past max_gops' 64
  assert len(long.frames) == 64 and long.frames[-1] == 17_999 and len(set(long.gops)) == 64
  assert plan_positions(5, SamplingConfig(uniform_frames=64)).frames.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", [dict(fusion=7), dict(keyframes_per_gop=9), dict(gop=0),
                                 dict(max_gops=0), dict(uniform_frames=-1),
                                 dict(uniform_frames=8, min_change=4),
                                 # FFmpeg's MPEG-4 encoder puts an I-frame every 600 frames at most
                                 dict(gop=720), dict(fps=241), dict(max_gops=4097)])
def test_invalid_sampling_is_rejected(bad):
  with pytest.raises(ConfigError):
    SamplingConfig(**bad).validate()


def test_budget_cli(capsys):
  assert cli.main(["budget", "--duration", "64", "--keyframes-per-gop", "2"]) == 0
  out = json.loads(capsys.readouterr().out)
  for key in ("cope_tokens", "dense_tokens", "ratio", "keyframes", "delta_frames", "gops"):
    assert key in out
  assert out["cope_tokens"] == 3840 and out["dense_tokens"] == 13440


@pytest.mark.parametrize("flags,tokens,gops", [
    # 64 s = 1920 frames in GOPs of 120: 16 GOPs of 4 one-second positions, K = 1.
    (["--gop", "120"], 16 * (210 + 3 * 10), 16),
    # 64 s at 15 fps = 960 frames: 4 GOPs of 240 frames, a Δ-frame every 15 (one second).
    (["--fps", "15", "--fusion", "15"], 4 * (210 + 15 * 10), 4),
    # 600 s = 75 GOPs, 8 of them kept.
    (["--max-gops", "8", "--duration", "600"], 8 * (210 + 7 * 10), 8),
])
def test_budget_cli_gop_fps_and_max_gops(capsys, flags, tokens, gops):
  assert cli.main(["budget", "--duration", "64", *flags]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["cope_tokens"] == tokens and out["gops"] == gops and out["dense_tokens"] == 13440


@pytest.mark.parametrize("flags,named", [
    (["--fusion", "7"], "fusion"), (["--fps", "10" + "0" * 20], "fps must be at most 240"),
    (["--gop", "1" + "0" * 30, "--fusion", "1" + "0" * 30], "gop must be at most 600"),
    (["--max-gops", "1000000000", "--gop", "1", "--fusion", "1"], "max_gops must be at most"),
])
def test_budget_cli_bad_config(capsys, flags, named):
  """Out-of-range values used to overflow NumPy or C longs, or allocate gigabytes."""
  assert cli.main(["budget", "--duration", "64", *flags]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:") and named in err[0], err


def test_a_gop_the_encoder_would_not_keep_is_refused_before_encoding():
  from cope_jax.codec.reencode import EncodeSpec  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match="gop must be in \\[1, 600\\]"):
    EncodeSpec(size=64, gop=720).validate()


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
  """Conformant 32×32 MPEG-4 clips of 8 s, 64 s and 600 s (tiny frames keep 600 s cheap)."""
  from cope_jax.codec import synthetic_clips  # pylint: disable=import-outside-toplevel
  folder = tmp_path_factory.mktemp("long")
  clips = {}
  for seconds in (8, 64, 600):
    clips[seconds] = folder / f"{seconds}s.mp4"
    synthetic_clips.write_clip(clips[seconds],
                               synthetic_clips.pan_frames(seconds * 30, 32, 32, (1, 0), "coffee"),
                               codec="mpeg4", gop=240)
  return clips


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("seconds", [8, 64, 600])
def test_extracted_kinds_and_counts(long_clips, seconds, k):
  from cope_jax.codec.extract import extract_primitives  # pylint: disable=import-outside-toplevel
  cfg = SamplingConfig(keyframes_per_gop=k, max_gops=64)
  prims = extract_primitives(long_clips[seconds], size=32, sampling=cfg)
  assert not prims.reencoded and prims.num_frames == seconds * 30
  plan = plan_positions(seconds * 30, cfg)
  kept = min(seconds // 8, 64)
  assert len(prims.rgb) == kept * k and len(prims.mv) == kept * (8 - k)
  np.testing.assert_array_equal(prims.kinds, plan.kinds)
  np.testing.assert_array_equal(prims.frame_index, plan.frames)
  np.testing.assert_allclose(prims.times, plan.frames / 30)
  budget = token_budget(prims.num_frames, cfg)
  assert budget["cope_tokens"] == 210 * len(prims.rgb) + 10 * len(prims.mv)


def test_extracted_dense_frames(long_clips):
  from cope_jax.codec.extract import extract_primitives  # pylint: disable=import-outside-toplevel
  prims = extract_primitives(long_clips[64], size=32, sampling=SamplingConfig(uniform_frames=20))
  frames = np.linspace(0, 64 * 30 - 1, 20).astype(int)
  np.testing.assert_array_equal(prims.frame_index, frames)
  assert prims.kinds.tolist() == [KEYFRAME] * 20 and len(prims.rgb) == 20 and not len(prims.mv)
  np.testing.assert_allclose(prims.times, frames / 30)
