"""Adaptive fusion (``SamplingConfig.min_change``): Δ positions that hardly changed are skipped and
their motion joins the next kept Δ-frame, which must then equal a fixed fusion over the longer
window and reconstruct its target exactly."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from cope_jax.codec import synthetic_clips
from cope_jax.codec.errors import ConfigError
from cope_jax.codec.extract import extract_primitives, iter_sampled_frames
from cope_jax.codec.motion import reconstruct
from cope_jax.codec.reencode import EncodeSpec, conformant_video
from cope_jax.codec.sampling import DELTA, SamplingConfig, frame_change

SIZE = 128


def test_frame_change_is_the_largest_patch_mean():
  ref = np.full((48, 64, 3), 100, np.uint8)
  assert frame_change(ref, ref) == 0.0
  moved = ref.copy()
  moved[16:32, 32:48] += 40  # one 16×16 patch brighter by 40 in every channel
  assert frame_change(moved, ref) == pytest.approx(40.0)
  assert frame_change(ref, moved) == pytest.approx(40.0)  # |difference|: either way round
  speck = ref.copy()
  speck[0, 0, 1] = 255  # one pixel of one channel in a 16×16×3 patch
  assert frame_change(speck, ref) == pytest.approx(155 / (16 * 16 * 3))
  border = np.pad(ref, ((0, 8), (0, 8), (0, 0)))
  changed_border = border.copy()
  changed_border[48:, :] = 255  # a band narrower than a patch is left out
  assert frame_change(changed_border, border) == 0.0
  with pytest.raises(ValueError, match="differ in shape"):
    frame_change(ref, border)
  with pytest.raises(ValueError, match="smaller than one"):
    frame_change(ref[:8], ref[:8])


@pytest.mark.parametrize("value", [-1.0, 256.0, float("nan")])
def test_min_change_out_of_range_is_refused(value):
  with pytest.raises(ConfigError, match="min_change"):
    SamplingConfig(min_change=value).validate()


@pytest.fixture(scope="module")
def still_then_pan(tmp_path_factory) -> str:
  """121 frames: the first 31 still, then the camera pans at (2, 1) px/frame, so frame 30 equals
  frame 0 and frame 60 shows 30 frames of motion."""
  path = tmp_path_factory.mktemp("adaptive") / "still_then_pan.mp4"
  frames = list(synthetic_clips.pan_frames(91, SIZE, SIZE, (2, 1), "chelsea"))
  synthetic_clips.write_clip(path, itertools.chain([frames[0]] * 30, frames), fps=30,
                             codec="libx264")
  return str(path)


def _deltas(path, sampling):
  with conformant_video(path, EncodeSpec(size=SIZE)) as (conformant, _):
    return [f for f in iter_sampled_frames(conformant, sampling, keep_rgb=True)
            if f.kind == DELTA]


def test_a_still_position_is_skipped_and_the_next_delta_fuses_the_longer_window(still_then_pan):
  fixed = _deltas(still_then_pan, SamplingConfig())
  adaptive = _deltas(still_then_pan, SamplingConfig(min_change=8))
  assert [f.frame_index for f in fixed] == [30, 60, 90, 120]
  assert frame_change(fixed[0].target_rgb, fixed[0].reference_rgb) < 8  # codec noise only
  assert [f.frame_index for f in adaptive] == [60, 90, 120]
  first = adaptive[0]
  # Anchored at the keyframe (frame 0), not at the skipped frame 30: the same Δ-frame as a fixed
  # fusion window of 60 frames, bit for bit, and an exact reconstruction of frame 60.
  long_window = _deltas(still_then_pan, SamplingConfig(fusion=60))[0]
  assert long_window.frame_index == 60
  np.testing.assert_array_equal(first.mv, long_window.mv)
  np.testing.assert_array_equal(first.residual, long_window.residual)
  np.testing.assert_array_equal(first.reference_rgb, fixed[0].reference_rgb)
  np.testing.assert_array_equal(reconstruct(first.reference_rgb, first.mv, first.residual),
                                first.target_rgb)
  inner = first.mv[8:-40, 8:-72]  # away from the band the camera uncovers
  assert np.median(inner[..., 0]) == pytest.approx(60, rel=0.1)
  assert np.median(inner[..., 1]) == pytest.approx(30, rel=0.1)
  # Moving frames are kept as in fixed fusion: the later Δ-frames are the same.
  for a, f in zip(adaptive[1:], fixed[2:]):
    np.testing.assert_array_equal(a.mv, f.mv)
    np.testing.assert_array_equal(a.residual, f.residual)


def test_keyframes_are_always_kept_and_a_huge_threshold_keeps_no_delta(still_then_pan):
  p = extract_primitives(still_then_pan, size=SIZE,
                         sampling=SamplingConfig(keyframes_per_gop=2, min_change=255))
  # 121 frames: positions 0, 30, 60, 90, 120; with K = 2 the keyframes are 0 and 120.
  assert p.kinds.tolist() == [0, 0] and p.frame_index.tolist() == [0, 120]
  assert len(p.mv) == len(p.residual) == 0 and len(p.rgb) == 2


def test_extract_cli_reports_the_skipped_positions(still_then_pan, tmp_path):
  out = tmp_path / "p.npz"
  r = subprocess.run([sys.executable, "-m", "cope_jax.codec", "extract", still_then_pan,
                      "--out", str(out), "--size", str(SIZE), "--min-change", "8", "--quiet"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "3 Δ-frames (1 of 4 Δ positions skipped by --min-change)" in r.stdout
  with np.load(out) as npz:
    assert npz["kinds"].tolist() == [0, 1, 1, 1]
    np.testing.assert_allclose(npz["times"], [0, 2, 3, 4])
    assert npz["mv"].shape == (3, SIZE, SIZE, 2)


def test_bad_min_change_exits_2_and_budget_has_no_such_flag(still_then_pan, tmp_path):
  out = tmp_path / "p.npz"
  r = subprocess.run([sys.executable, "-m", "cope_jax.codec", "extract", still_then_pan,
                      "--out", str(out), "--min-change", "300"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "min_change" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
  # The budget is the content-blind formula (the most an adaptive video can cost).
  r = subprocess.run([sys.executable, "-m", "cope_jax.codec", "budget", "--duration", "8",
                      "--min-change", "4"], capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "unrecognized arguments: --min-change" in r.stderr
  r = subprocess.run([sys.executable, "-m", "cope_jax.codec", "budget", "--duration", "8"],
                     capture_output=True, text=True, timeout=300)
  assert json.loads(r.stdout)["delta_frames"] == 7


def test_fixed_fusion_keeps_the_cache_keys_made_before_adaptive_fusion(tmp_path):
  import hashlib  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from cope_jax.data.primitive_cache import (  # pylint: disable=import-outside-toplevel
      ExtractSettings)
  video = tmp_path / "v.mp4"
  video.write_bytes(b"not decoded here")
  st = os.stat(video)
  before = json.dumps([os.path.abspath(video), st.st_size, st.st_mtime_ns, 64,
                       {"fps": 30, "gop": 240, "fusion": 30, "keyframes_per_gop": 1,
                        "max_gops": 64}, 3])  # the key's text before min_change existed
  assert ExtractSettings(64).key(str(video)) == hashlib.sha1(before.encode()).hexdigest()[:20]
  adaptive = ExtractSettings(64, SamplingConfig(min_change=4)).key(str(video))
  assert adaptive != ExtractSettings(64).key(str(video))
  # 4 from the Python API and 4.0 from the command line: one cache entry.
  assert ExtractSettings(64, SamplingConfig(min_change=4.0)).key(str(video)) == adaptive
  dense = ExtractSettings(64, SamplingConfig(uniform_frames=20)).key(str(video))
  assert dense not in (adaptive, ExtractSettings(64).key(str(video)))


def test_mode_sampling_keeps_adaptive_fusion_to_the_delta_modes():
  from cope_jax.infer import mode_sampling  # pylint: disable=import-outside-toplevel
  for mode in ("cope", "cope_zero_delta"):
    assert mode_sampling(mode, 2, 4.0) == SamplingConfig(keyframes_per_gop=2, min_change=4.0)
  for mode in ("dense", "keyframes"):
    assert mode_sampling(mode).min_change == 0
    with pytest.raises(ConfigError, match="modes with Δ-frames"):
      mode_sampling(mode, 1, 4.0)


@pytest.fixture(scope="module")
def intermittent_pan(tmp_path_factory):
  """400 frames (GOPs of 120, positions every 15 frames): the camera moves 1 px/frame only in
  frames 10–19, 50–52 and 75–104 of each GOP, and is still otherwise. Returns the conformant
  video (re-encoded once) and the view's x offset per frame."""
  canvas = synthetic_clips.mirror_tiled(synthetic_clips.texture("chelsea"))
  x, offsets = 0, []
  for t in range(400):
    x += (75 <= t % 120 < 105) or (10 <= t % 120 < 20) or (50 <= t % 120 < 53)
    offsets.append(x)
  ys, xs = np.arange(SIZE), np.arange(SIZE)
  frames = [canvas[np.ix_((40 + ys) % canvas.shape[0], (60 + o + xs) % canvas.shape[1])]
            for o in offsets]
  path = tmp_path_factory.mktemp("intermittent") / "pan.mp4"
  synthetic_clips.write_clip(path, frames, fps=30, codec="libx264")
  with conformant_video(str(path), EncodeSpec(size=SIZE, gop=120)) as (conformant, _):
    yield conformant, offsets


@pytest.mark.parametrize("keyframes,max_gops", [(1, 64), (2, 64), (3, 64), (1, 2), (2, 2)])
def test_across_gops_keyframes_and_gop_sampling(intermittent_pan, keyframes, max_gops):
  """Each kept Δ-frame is anchored at the previous kept position (a keyframe or Δ-frame, in
  this GOP), reconstructs its target exactly and carries the true shift since that anchor;
  keyframes are fixed fusion's; some still positions are skipped."""
  conformant, offsets = intermittent_pan
  base = dict(gop=120, fusion=15, keyframes_per_gop=keyframes, max_gops=max_gops)
  fixed = list(iter_sampled_frames(conformant, SamplingConfig(**base)))
  adaptive = list(iter_sampled_frames(conformant, SamplingConfig(**base, min_change=6),
                                      keep_rgb=True))
  assert ([f.frame_index for f in adaptive if f.kind != DELTA] ==
          [f.frame_index for f in fixed if f.kind != DELTA])
  kept = [f.frame_index for f in adaptive if f.kind == DELTA]
  # a strict subset, not an empty one: the pan moves in some windows
  assert kept and set(kept) < {f.frame_index for f in fixed if f.kind == DELTA}, kept
  checked = 0
  for previous, f in zip(adaptive, adaptive[1:]):
    if f.kind != DELTA:
      continue
    checked += 1
    assert previous.frame_index // 120 == f.frame_index // 120  # no chain across a GOP
    anchor = previous.rgb if previous.kind != DELTA else previous.target_rgb
    np.testing.assert_array_equal(f.reference_rgb, anchor)
    np.testing.assert_array_equal(reconstruct(f.reference_rgb, f.mv, f.residual), f.target_rgb)
    shift = offsets[f.frame_index] - offsets[previous.frame_index]
    assert abs(np.median(f.mv[16:-16, 16:-48, 0]) - shift) <= max(1, 0.1 * shift), (
        f.frame_index, previous.frame_index, shift)
  assert checked == len(kept)  # (a video starts with a keyframe: every Δ-frame was checked)
