"""Any decodable input becomes the conformant MPEG-4 Part 2 stream; conformant input is kept."""

import os
import tempfile

import numpy as np
import pytest

from cope_jax.codec import synthetic_clips
from cope_jax.codec.probe import inspect_video
from cope_jax.codec.reencode import EncodeSpec, conformance_problems, conformant_video

SPEC = EncodeSpec(size=384, fps=30, gop=30)  # a short GOP so that 2.5 s clips have several

# name: (codec, file suffix, frame size, fps, extra write_clip arguments)
INPUTS = {
    "mpeg1": ("mpeg1video", ".mpg", (160, 96), 25, {}),
    "mpeg2_bframes": ("mpeg2video", ".mpg", (160, 96), 25, {"b_frames": 2}),
    "mpeg4_bframes": ("mpeg4", ".avi", (160, 96), 24, {"b_frames": 2}),
    "h264_bframes": ("libx264", ".mp4", (160, 96), 30, {"b_frames": 3}),
    "h265": ("libx265", ".mp4", (160, 96), 30, {"options": {"x265-params": "log-level=none"}}),
    "vp8": ("libvpx", ".webm", (160, 96), 30, {}),
    "vp9_odd_size": ("libvpx-vp9", ".webm", (161, 97), 30, {}),
    "av1": ("libsvtav1", ".mkv", (160, 96), 30, {}),
    "mjpeg": ("mjpeg", ".avi", (160, 96), 15, {}),
    "h264_audio": ("libx264", ".mp4", (160, 96), 30, {"audio": True}),
    "h264_60fps": ("libx264", ".mp4", (160, 96), 60, {}),
}


def _write(tmp_path, name, seconds=2.5):
  codec, suffix, (w, h), fps, extra = INPUTS[name]
  path = tmp_path / f"{name}{suffix}"
  frames = synthetic_clips.pan_frames(int(seconds * fps), h, w, (1, 1), "coffee")
  synthetic_clips.write_clip(path, frames, fps=fps, codec=codec, gop=12, **extra)
  return path


def _check_conformant(path, seconds):
  info = inspect_video(path)
  assert info["codec"] == "mpeg4"
  assert (info["width"], info["height"]) == (384, 384)
  assert info["fps"] == 30
  assert not info["has_b_frames"] and set(info["frame_types"]) <= {"I", "P"}
  assert info["gop_starts"] == list(range(0, info["num_frames"], SPEC.gop))
  assert abs(info["num_frames"] - seconds * 30) <= 2
  assert info["audio_streams"] == 0 and info["rotation"] == 0
  assert conformance_problems(path, SPEC) == []


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
  """Temporary files go to a folder of this test, so we can see that they are cleaned up."""
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  return scratch


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_any_input_becomes_conformant(tmp_path, private_tmp, name):
  src = _write(tmp_path, name)
  assert conformance_problems(src, SPEC)
  with conformant_video(src, SPEC) as (path, reencoded):
    assert reencoded and path != str(src)
    _check_conformant(path, 2.5)
  assert os.listdir(private_tmp) == []  # the re-encoded file is gone


def _frames_shown(video, frames, size=128) -> list[int]:
  """Which of ``frames`` each frame of ``video`` (re-encoded at ``size``) shows: the nearest."""
  import av  # pylint: disable=import-outside-toplevel
  import cv2  # pylint: disable=import-outside-toplevel
  small = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
           for f in frames]
  with av.open(str(video)) as container:
    got = [f.to_ndarray(format="rgb24").astype(np.float32) for f in container.decode(video=0)]
  return [int(np.argmin([np.abs(s - g).mean() for s in small])) for g in got]


def test_b_frames_in_avi_keep_every_frame_in_order(tmp_path, private_tmp):
  """AVI stores no presentation times: H.264 with B-frames decodes with decode-order pts (1, 3, 4,
  2, …), and the re-encode dropped every B-frame and showed the frame before it twice."""
  frames = list(synthetic_clips.pan_frames(60, 240, 320, (2, 1), "chelsea"))
  path = tmp_path / "bframes.avi"
  synthetic_clips.write_clip(path, iter(frames), fps=30, codec="libx264", b_frames=2)
  with conformant_video(path, EncodeSpec(size=128, fps=30, gop=30)) as (out, reencoded):
    assert reencoded and _frames_shown(out, frames) == list(range(60))


def _write_segment(path, frames, first_pts, codec="libx264", fmt=None, opts=None, plain=0,
                   times=None):
  """``frames`` at 30 fps from ``first_pts`` (in frames), or at ``times`` (in frames); the first
  ``plain`` ones I and P."""
  import av  # pylint: disable=import-outside-toplevel
  with av.open(str(path), "w", format=fmt) as out:
    s = out.add_stream(codec, rate=30)
    s.height, s.width = frames[0].shape[:2]
    s.pix_fmt, s.codec_context.gop_size, s.codec_context.max_b_frames = "yuv420p", 250, 2
    s.codec_context.options = opts or {}
    for i, rgb in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
      frame.pts = first_pts + i if times is None else times[i]
      if i < plain:
        frame.pict_type = av.video.frame.PictureType.I if i == 0 else av.video.frame.PictureType.P
      for packet in s.encode(frame):
        out.mux(packet)
    for packet in s.encode(None):
      out.mux(packet)


def test_b_frames_that_start_late_in_avi(tmp_path, private_tmp):
  """Whether to use the decoding times was decided on the first 8 frames: B-frames from frame 13
  on lost every third frame and showed others twice."""
  frames = list(synthetic_clips.pan_frames(60, 96, 160, (2, 1), "chelsea"))
  path = tmp_path / "late.avi"
  _write_segment(path, frames, 0, opts={"x264-params": "b-adapt=0:bframes=2"}, plain=12)
  with conformant_video(path, EncodeSpec(size=128, fps=30, gop=30)) as (out, _):
    assert _frames_shown(out, frames) == list(range(60))


def test_duplicate_times_outside_mpeg_ts_keep_the_timeline(tmp_path, private_tmp):
  """The joined-files rule, applied in every format, delayed every later frame by one at each
  duplicate time (90 frames with 9 duplicates came out 3.3 s long); outside the formats whose
  times may restart, the frame-rate filter drops the duplicate, as FFmpeg leaves it."""
  frames = list(synthetic_clips.pan_frames(90, 96, 160, (2, 1), "chelsea"))
  times = [i - (i % 10 == 9) for i in range(90)]  # every 10th frame at its predecessor's time
  path = tmp_path / "duplicates.mkv"
  _write_segment(path, frames, 0, times=times)
  with conformant_video(path, EncodeSpec(size=128, fps=30, gop=30)) as (out, _):
    shown = _frames_shown(out, frames)
  assert len(shown) == 90 and shown == sorted(shown)
  assert inspect_video(path)["duration_s"] == pytest.approx(3.0, abs=0.01)  # (1 ms ticks)


@pytest.mark.parametrize("second_part_pts", [0, 3000])
def test_joined_mpeg_ts_keeps_every_frame(tmp_path, private_tmp, second_part_pts):
  """Two MPEG-TS files joined end to end: the second's times start again (0) or jump 100 s on
  (broadcasts, HLS segments). The first lost every frame of the second part, the second became
  101 s of copies of one frame; ``inspect`` said 1 s or 101 s."""
  frames = list(synthetic_clips.pan_frames(60, 96, 160, (2, 1), "chelsea"))
  parts = [tmp_path / "a.ts", tmp_path / "b.ts"]
  _write_segment(parts[0], frames[:30], 0, fmt="mpegts")
  _write_segment(parts[1], frames[30:], second_part_pts, fmt="mpegts")
  joined = tmp_path / "joined.ts"
  joined.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())
  with conformant_video(joined, EncodeSpec(size=128, fps=30, gop=30)) as (out, _):
    assert _frames_shown(out, frames) == list(range(60))
  info = inspect_video(joined)  # (timed alike: it said 1 s, or 101 s)
  assert info["num_frames"] == 60 and info["duration_s"] == pytest.approx(2.0)


def test_variable_frame_rate(tmp_path, private_tmp):
  rng = np.random.default_rng(0)
  times = np.cumsum(rng.uniform(1 / 60, 1 / 15, 90))  # 15–60 fps, irregular
  times -= times[0]
  path = tmp_path / "vfr.mp4"
  synthetic_clips.write_clip(path, synthetic_clips.pan_frames(90, 96, 160, (1, 0), "coffee"),
                             codec="libx264", frame_times=times)
  with conformant_video(path, SPEC) as (out, _):
    _check_conformant(out, times[-1] + 1 / 30)


def test_rotation_metadata_is_applied(tmp_path):
  img = np.full((120, 200, 3), 40, np.uint8)
  img[:40, :50] = (255, 0, 0)  # a red block in the top-left corner of the coded frame
  path = tmp_path / "rotated.mp4"
  synthetic_clips.write_clip(path, [img] * 30, codec="libx264", rotation=90)
  assert inspect_video(path)["rotation"] == 90
  with conformant_video(path, SPEC) as (out, _):
    _check_conformant(out, 1.0)
    import av  # pylint: disable=import-outside-toplevel
    with av.open(out) as c:
      frame = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
  # Displayed upright (rotated 90° counter-clockwise), the block is in the bottom-left corner.
  upright = np.rot90(img)
  assert upright[-10, 10].tolist() == [255, 0, 0]
  red = (frame[..., 0] > 180) & (frame[..., 1] < 80)
  ys, xs = np.nonzero(red)
  assert ys.mean() > 384 * 0.6 and xs.mean() < 384 * 0.4


# (Matroska stores times in 1 ms ticks: 30 fps frames are 33, 33 and 34 ticks apart)
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_conformant_input_is_not_reencoded(tmp_path, private_tmp, suffix):
  path = tmp_path / f"conformant{suffix}"
  synthetic_clips.write_clip(path, synthetic_clips.pan_frames(75, 384, 384, (1, 1), "coffee"),
                             codec="mpeg4", gop=SPEC.gop)
  assert conformance_problems(path, SPEC) == []
  with conformant_video(path, SPEC) as (out, reencoded):
    assert out == str(path) and not reencoded
  assert os.listdir(private_tmp) == []


def test_conformance_problems_name_the_reason(tmp_path):
  path = tmp_path / "gop12.mp4"
  synthetic_clips.write_clip(path, synthetic_clips.pan_frames(40, 384, 384, (1, 1), "coffee"),
                             codec="mpeg4", gop=12)
  assert any("I-frames" in p for p in conformance_problems(path, SPEC))
  assert any("size" in p for p in conformance_problems(path, EncodeSpec(size=192, gop=12)))


def mux_frames(out, stream, frames):
  """Encodes RGB ``frames`` (pts 0, 1, …) into ``stream`` of the open container ``out``."""
  import av  # pylint: disable=import-outside-toplevel
  for i, rgb in enumerate(frames):
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame.pts = i
    for packet in stream.encode(frame):
      out.mux(packet)
  for packet in stream.encode(None):
    out.mux(packet)


def _write_raw(path, fmt, codec, frames, fps):
  import av  # pylint: disable=import-outside-toplevel
  with av.open(str(path), "w", format=fmt) as out:
    s = out.add_stream(codec, rate=fps)
    s.height, s.width = frames[0].shape[:2]
    s.pix_fmt = "yuv420p"
    mux_frames(out, s, frames)


@pytest.mark.parametrize("fmt,codec", [("h264", "libx264"), ("m4v", "mpeg4")])
def test_raw_elementary_stream_keeps_its_rate(tmp_path, private_tmp, fmt, codec):
  # A raw stream has no container timestamps, and FFmpeg's demuxer assumes 25 fps: the rate the
  # bitstream declares is the stream's (60 frames at 30 fps were re-encoded as 72, 2.4 s).
  path = tmp_path / f"raw.{fmt}"
  _write_raw(path, fmt, codec, list(synthetic_clips.pan_frames(60, 96, 160, (1, 0), "coffee")), 30)
  info = inspect_video(path)
  assert info["fps"] == 30 and info["num_frames"] == 60 and info["duration_s"] == 2.0
  with conformant_video(path, SPEC) as (out, _):
    _check_conformant(out, 2.0)
    assert inspect_video(out)["num_frames"] == 60


def test_inspect_gives_the_first_frame_s_size_when_the_stream_changes_it(tmp_path):
  """The codec context's size after decoding every frame was the last frame's (160×120 for a
  stream that opens at 320×240)."""
  parts = []
  for i, (h, w) in enumerate(((240, 320), (120, 160))):
    parts.append(tmp_path / f"part{i}.h264")
    _write_raw(parts[-1], "h264", "libx264",
               list(synthetic_clips.pan_frames(30, h, w, (1, 0), "coffee")), 30)
  joined = tmp_path / "joined.h264"
  joined.write_bytes(b"".join(p.read_bytes() for p in parts))
  info = inspect_video(joined)
  assert (info["width"], info["height"], info["num_frames"]) == (320, 240, 60)


def test_the_main_video_stream_is_read(tmp_path):
  # A one-picture stream (cover art) listed before the video: FFmpeg's best stream is the video.
  import av  # pylint: disable=import-outside-toplevel
  path = tmp_path / "cover_first.mkv"
  with av.open(str(path), "w") as out:
    cover = out.add_stream("mjpeg", rate=1)
    cover.width = cover.height = 64
    cover.pix_fmt = "yuvj420p"
    video = out.add_stream("mpeg4", rate=30)
    video.width, video.height, video.pix_fmt = 160, 96, "yuv420p"
    mux_frames(out, cover, [np.full((64, 64, 3), 200, np.uint8)])
    mux_frames(out, video, synthetic_clips.pan_frames(45, 96, 160, (1, 0), "coffee"))
  info = inspect_video(path)
  assert (info["codec"], info["width"], info["height"]) == ("mpeg4", 160, 96)
  assert info["num_frames"] == 45


def test_a_variable_rate_clip_lasts_to_its_last_frame_s_end(tmp_path):
  """The last frame was given 1 / the average rate: a GIF whose frames show 1.0, 0.5, 2.0, 0.1
  and 0.1 s (3.7 s) was 4.34 s long to ``inspect``."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  path = tmp_path / "slides.gif"
  frames = [Image.fromarray(f) for f in synthetic_clips.pan_frames(5, 64, 64, (8, 0), "coffee")]
  frames[0].save(path, save_all=True, append_images=frames[1:],
                 duration=[1000, 500, 2000, 100, 100])
  info = inspect_video(path)
  assert info["num_frames"] == 5 and info["duration_s"] == pytest.approx(3.7), info
