"""Extraction on clips with known motion: displacement (sign included), residual size, exactness."""

import numpy as np
import pytest

from cope_jax.codec import synthetic_clips
from cope_jax.codec.extract import extract_primitives, iter_sampled_frames
from cope_jax.codec.motion import reconstruct, warp_reference
from cope_jax.codec.reencode import EncodeSpec, conformant_video
from cope_jax.codec.sampling import DELTA, SamplingConfig


def _delta_frames(path, fusion, size=384):
  spec = EncodeSpec(size=size)
  with conformant_video(path, spec) as (conformant, reencoded):
    assert reencoded  # H.264/MPEG-2 sources always go through the re-encoder
    return [f for f in iter_sampled_frames(conformant, SamplingConfig(fusion=fusion),
                                           keep_rgb=True) if f.kind == DELTA]


def _within_10_percent(measured, expected):
  return abs(measured - expected) <= 0.1 * abs(expected)


@pytest.mark.parametrize("fusion", [1, 30])
def test_pan_displacement_residual_and_reconstruction(pan_clip, fusion):
  frames = _delta_frames(pan_clip, fusion)
  assert len(frames) == (119 if fusion == 1 else 3)
  vx, vy = 2 * fusion, 1 * fusion  # the view moves by (2, 1) px/frame: mv = +velocity
  for f in frames:
    # Ignore the border band the camera uncovers (no valid prediction exists there).
    inner = f.mv[8:-8 - vy, 8:-8 - vx]
    assert _within_10_percent(np.median(inner[..., 0]), vx), (f.time_s, np.median(inner[..., 0]))
    assert _within_10_percent(np.median(inner[..., 1]), vy), (f.time_s, np.median(inner[..., 1]))
    plain = np.abs(f.target_rgb.astype(np.int16) - f.reference_rgb).mean()
    assert np.abs(f.residual).mean() < 0.5 * plain
    np.testing.assert_array_equal(reconstruct(f.reference_rgb, f.mv, f.residual), f.target_rgb)
    np.testing.assert_array_equal(
        warp_reference(f.reference_rgb, f.mv).astype(np.int16) + f.residual, f.target_rgb)


def test_wrong_sign_would_be_worse(pan_clip):
  """The sign convention check: the opposite sign predicts far worse."""
  frames = _delta_frames(pan_clip, 30)
  assert len(frames) == 3
  for f in frames:
    right = np.abs(f.residual).mean()
    wrong = np.abs(f.target_rgb.astype(np.int16) - warp_reference(f.reference_rgb, -f.mv)).mean()
    assert right < 0.5 * wrong


@pytest.mark.parametrize("fusion", [1, 30])
def test_moving_object(object_clip, fusion):
  frames = _delta_frames(object_clip, fusion)
  assert [f.frame_index for f in frames] == (list(range(1, 61)) if fusion == 1 else [30, 60])
  vx, vy = 3 * fusion, 2 * fusion
  for f in frames:
    t = int(round(f.time_s * 30))
    # The square's interior in frame t (minus a margin for block boundaries).
    x0, y0 = 40 + 3 * t, 40 + 2 * t
    inner = f.mv[y0 + 16:y0 + 80, x0 + 16:x0 + 80]
    # Inside the object the content came from p − velocity: mv = −velocity.
    assert _within_10_percent(np.median(inner[..., 0]), -vx), np.median(inner[..., 0])
    assert _within_10_percent(np.median(inner[..., 1]), -vy), np.median(inner[..., 1])
    # The still background does not move.
    assert np.median(f.mv[300:, :200]) == 0
    # Where the object is, motion compensation explains most of the change.
    box = np.s_[y0:y0 + 96, x0:x0 + 96]
    plain = float(np.abs(f.target_rgb[box].astype(np.int16) - f.reference_rgb[box]).mean())
    residual = float(np.abs(f.residual[box]).mean())
    assert residual < 0.5 * plain, (f.time_s, residual, plain)
    np.testing.assert_array_equal(reconstruct(f.reference_rgb, f.mv, f.residual), f.target_rgb)


def test_resize_and_frame_rate_conversion_scale_the_motion(clip_dir):
  """768×768 at 60 fps moving (2, 2) px/frame → 384×384 at 30 fps: (2, 2) px per output frame."""
  path = clip_dir / "pan_768_60fps.mp4"
  synthetic_clips.write_clip(path, synthetic_clips.pan_frames(120, 768, 768, (2, 2), "coffee"),
                             fps=60, codec="libx264")
  prims = extract_primitives(path, sampling=SamplingConfig(fusion=30))
  assert prims.reencoded and prims.num_frames == 60
  assert len(prims.mv) == 1
  inner = prims.mv[0][16:-48, 16:-48]
  assert _within_10_percent(np.median(inner[..., 0]), 60)
  assert _within_10_percent(np.median(inner[..., 1]), 60)


def test_mpeg4_4mv_at_a_size_not_a_multiple_of_16(clip_dir):
  """An MPEG-4 file with 4MV whose height ends 8 rows into its last macroblock row (read as it
  is, through the library): the last rows move with the pan like every other row."""
  path = synthetic_clips.write_clip(
      clip_dir / "pan_mpeg4_4mv_200x120.mp4",
      synthetic_clips.pan_frames(31, 120, 200, (2, 1), "chelsea"), codec="mpeg4",
      options={"flags": "+mv4"})
  frames = [f for f in iter_sampled_frames(path, SamplingConfig(fusion=5), keep_rgb=True)
            if f.kind == DELTA]
  assert len(frames) == 6 and frames[0].mv.shape == (120, 200, 2)
  for f in frames:
    for rows in (slice(8, 104), slice(112, 120)):  # the inner rows, the last 8
      x, y = np.median(f.mv[rows, 8:-16], axis=(0, 1))
      assert _within_10_percent(x, 10) and _within_10_percent(y, 5), (f.time_s, rows, x, y)
    np.testing.assert_array_equal(reconstruct(f.reference_rgb, f.mv, f.residual), f.target_rgb)
