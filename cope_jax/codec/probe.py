"""Opening videos safely and describing them (the ``inspect`` command)."""

from __future__ import annotations

import contextlib
import fractions
import itertools
import os
import warnings
from typing import Iterator

import av

from cope_jax.codec.errors import VideoError
from cope_jax.command_line import raise_pending_stop

# Larger declared sizes are treated as corrupt headers, not as videos (8K is 7680×4320).
MAX_SIDE = 16384
MAX_PIXELS = 8192 * 8192

_PICT = {av.video.frame.PictureType.I: "I", av.video.frame.PictureType.P: "P",
         av.video.frame.PictureType.B: "B"}


def check_path(path: str | os.PathLike) -> str:
  """Fails with a clear VideoError for paths that cannot be a video file."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise VideoError(path, "no such file")
  if os.path.isdir(path):
    raise VideoError(path, "is a directory, not a video file")
  if os.path.getsize(path) == 0:
    raise VideoError(path, "empty file (0 bytes)")
  return path


@contextlib.contextmanager
def open_video(path: str | os.PathLike,
               decoder_options: dict | None = None) -> Iterator[tuple[av.container.InputContainer,
                                                                       av.video.stream.VideoStream]]:
  """Opens ``path`` and yields (container, its main video stream), with all failures as
  VideoError."""
  path = check_path(path)
  try:
    container = av.open(path, metadata_errors="ignore")
  except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
    raise VideoError(path, f"not a readable video file ({_short(e)})") from None
  try:
    if container.format.name == "tty":  # FFmpeg renders .txt/.nfo/.asc/… files as "video"
      raise VideoError(path, "not a video file (a text file, which FFmpeg would render)")
    if not container.streams.video:
      kinds = sorted({s.type for s in container.streams}) or ["no"]
      raise VideoError(path, f"no video stream (has {', '.join(kinds)} streams only)")
    # libavformat's choice (av_find_best_stream): not a cover picture or thumbnail stream that
    # a file may list first. (FFmpeg's command line picks the largest picture instead.)
    stream = container.streams.best("video") or container.streams.video[0]
    w, h = stream.codec_context.width, stream.codec_context.height
    if w <= 0 or h <= 0:
      raise VideoError(path, f"video stream declares no frame size ({w}x{h})")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
      raise VideoError(path, f"absurd declared frame size {w}x{h} (limit {MAX_SIDE} per side, "
                             f"{MAX_PIXELS} pixels)")
    if decoder_options:
      stream.codec_context.options = dict(decoder_options)
    stream.thread_type = "AUTO"
    yield container, stream
  finally:
    container.close()


def packets(container: av.container.InputContainer,
            stream: av.video.stream.VideoStream) -> Iterator[av.Packet]:
  """The stream's packets; a SIGTERM taken meanwhile is raised here even where PyAV dropped it
  (see ``command_line.stop_by_signal``)."""
  for packet in container.demux(stream):
    raise_pending_stop()
    yield packet


def decode_frames(path: str, container: av.container.InputContainer,
                  stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
  """Decodes the video stream, turning mid-stream corruption into a clean stop.

  A packet the decoder rejects ends decoding (the frames before it are kept, with a warning); a
  stream with no decodable frame at all is a VideoError.
  """
  count = 0
  try:
    for packet in packets(container, stream):
      for frame in packet.decode():
        count += 1
        yield frame
  except av.error.FFmpegError as e:
    if count == 0:
      raise VideoError(path, f"decoding failed after {count} frames ({_short(e)})") from None
    warnings.warn(f"{path}: stream damaged after {count} frames ({_short(e)}); "
                  "using the frames before the damage", RuntimeWarning, stacklevel=2)
  if count == 0:
    raise VideoError(path, "no decodable video frames")


# Raw elementary streams: no container timestamps, and the demuxer's average rate is its
# assumption (25 fps), not the stream's; the rate the bitstream declares is FFmpeg's guess.
ELEMENTARY_FORMATS = {"h264", "hevc", "vvc", "m4v", "mpegvideo", "mjpeg", "cavsvideo", "vc1",
                      "dirac", "obu", "avs2", "avs3"}


def stream_rate(stream: av.video.stream.VideoStream) -> fractions.Fraction | None:
  """Frames per second: the container's average, or for a raw elementary stream the rate its
  bitstream declares (None if neither is known)."""
  rates = (stream.average_rate, stream.guessed_rate, stream.base_rate)
  if stream.container.format.name in ELEMENTARY_FORMATS:
    rates = (stream.guessed_rate, stream.average_rate, stream.base_rate)
  return next((fractions.Fraction(r) for r in rates if r), None)


def stream_fps(stream: av.video.stream.VideoStream) -> float:
  rate = stream_rate(stream)
  return float(rate) if rate else 0.0


_TIMING_WINDOW = 8  # frames read before the timestamps are chosen (B-frame reordering shows)
# In formats whose times may restart or jump (FFmpeg's ts_discont: MPEG-TS and -PS, Ogg, live
# FLV, HLS, …), a step back of more than _BACK_S or a jump of more than _JUMP_S is a
# discontinuity, as FFmpeg's command line takes them (its dts_delta_threshold is 10 s).
_BACK_S, _JUMP_S = 0.1, 10


def _count_steps_back(frame: av.VideoFrame, faults: dict, last: dict) -> None:
  """Adds a frame to the counts of how often its stream's pts and dts went back (or stood)."""
  for name in ("pts", "dts"):
    value = getattr(frame, name)
    if value is not None:
      faults[name] += last[name] is not None and value <= last[name]
      last[name] = value


def presentation_timed(frames: Iterator[av.VideoFrame], stream: av.video.stream.VideoStream,
                       container_format: av.format.ContainerFormat | None = None,
                       fallback_fps: float = 30.0) -> Iterator[av.VideoFrame]:
  """The decoded frames, each ``pts`` its presentation time, in order.

  Where the decoder's pts go backwards more often than the dts, the dts (FFmpeg's best-effort
  timestamp does the same): AVI stores no presentation times, and an H.264 stream with B-frames
  in it decodes with decode-order pts (1, 3, 4, 2, …), which the frame-rate filter took at their
  word — every B-frame dropped, the frame before it shown twice. Decided over the first frames,
  then as the counts go (B-frames may start late: one frame shown twice where it switches); in
  AVI, which stores decoding times only, the dts throughout. In formats whose times may restart
  or jump (MPEG-TS and -PS: files joined end to end, broadcast segments), a time that goes back
  by more than ``_BACK_S`` or on by more than ``_JUMP_S`` goes on one frame after the previous:
  the filter dropped every frame until the times caught up, or filled the jump with copies of
  the last one. Elsewhere a duplicate or backward time is left to the filter (which drops
  that frame), as FFmpeg leaves it. Raw streams without timestamps: the rate the stream declares (or
  ``fallback_fps``)."""
  head = [f for _, f in zip(range(_TIMING_WINDOW), frames)]
  faults, seen = {"pts": 0, "dts": 0}, {"pts": None, "dts": None}
  for frame in head:
    _count_steps_back(frame, faults, seen)
  rate = stream_rate(stream) or fallback_fps
  tick = max(1, round(1 / (rate * stream.time_base)))
  flags = container_format.flags if container_format is not None else 0
  discontinuous = bool(flags & av.format.Flags.ts_discont.value)
  back, jump = round(_BACK_S / stream.time_base), round(_JUMP_S / stream.time_base)
  dts_only = container_format is not None and container_format.name == "avi"
  last, offset = None, 0
  for index, frame in enumerate(itertools.chain(head, frames)):
    if index >= len(head):  # (the head's are counted)
      _count_steps_back(frame, faults, seen)
    use_dts = dts_only or faults["pts"] > faults["dts"]
    t = frame.dts if use_dts else frame.pts
    if t is not None:
      t += offset
      if discontinuous and last is not None and (t < last - back or t - last > jump):
        offset += last + tick - t
        t = last + tick
    elif last is not None and use_dts:  # the frames flushed at the end have no dts
      t = last + tick
    else:
      t = int(index / (rate * stream.time_base))
    frame.pts = last = t
    yield frame


def inspect_video(path: str | os.PathLike) -> dict:
  """Describes a video: codec, size, rate, frame types and GOP structure (decodes every frame)."""
  path = os.fspath(path)
  with open_video(path) as (container, stream):
    types, pts, durations, rotation = [], [], [], 0
    size = (stream.codec_context.width, stream.codec_context.height)
    # (timed as re-encoding times them: joined files, decode-order times)
    for frame in presentation_timed(decode_frames(path, container, stream), stream,
                                    container.format):
      if not types:  # (the first frame's size: a stream may change it later, the context with it)
        rotation, size = display_rotation(frame), (frame.width, frame.height)
      types.append(_PICT.get(frame.pict_type, "?"))
      pts.append(frame.pts)
      durations.append(frame.duration)
    fps = stream_fps(stream)
    frame_types = "".join(types)
    info = {
        "path": path,
        "codec": stream.codec_context.name,
        "width": size[0],
        "height": size[1],
        "fps": round(fps, 4),
        "num_frames": len(types),
        "duration_s": round(_duration(stream, pts, durations, fps), 4),
        "has_b_frames": "B" in frame_types,
        "frame_types": frame_types,
        "gop_starts": [i for i, t in enumerate(frame_types) if t == "I"],
        "rotation": rotation,
        "pix_fmt": stream.codec_context.pix_fmt,
        "audio_streams": len(container.streams.audio),
        "size_bytes": os.path.getsize(path),
        "container": container.format.name,
    }
  return info


def _duration(stream, pts: list, durations: list, fps: float) -> float:
  """From the first frame's start to the last one's end: the last frame lasts its own duration
  where the stream gives one (a variable-rate GIF's last frame is not 1 / the average rate)."""
  n = len(pts)
  if stream.time_base and n and None not in pts:
    last = max(range(n), key=pts.__getitem__)
    span = float((pts[last] - min(pts)) * stream.time_base)
    if durations[last]:
      return span + float(durations[last] * stream.time_base)
    return span + (1.0 / fps if fps else 0.0)
  return n / fps if fps else 0.0


def display_rotation(frame: av.VideoFrame) -> int:
  """Counter-clockwise display rotation of a decoded frame in degrees: 0, 90, 180 or 270."""
  return int(round(frame.rotation / 90.0)) * 90 % 360


def _short(e: Exception) -> str:
  msg = str(e).splitlines()[0] if str(e) else type(e).__name__
  return msg[:200]

