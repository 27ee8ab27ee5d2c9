"""Re-encoding any decodable video into the stream the method expects.

Target: MPEG-4 Part 2, constant ``fps``, a GOP of exactly ``gop`` frames (no scene-cut
I-frames), no B-frames, squashed to ``size``×``size`` (like LLaVA's resize, no crop), display
rotation applied, audio dropped. Frame-rate conversion is FFmpeg's ``fps`` filter (nearest
frame in time, so variable-frame-rate inputs come out evenly spaced), resizing is ``scale`` with
bicubic filtering. A file that already conforms is used as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import os
import tempfile
from typing import Callable, Iterator

import av
import av.filter

from cope_jax.codec.errors import ConfigError, VideoError
from cope_jax.codec.motion import MAX_SIZE
from cope_jax.codec.probe import (decode_frames, display_rotation, open_video, packets,
                                  presentation_timed)
from cope_jax.codec.sampling import MAX_FPS, MAX_GOP

# FFmpeg filter chains that turn a frame rotated by the key (degrees counter-clockwise, as PyAV
# reports the display matrix) upright.
_UPRIGHT = {0: [], 90: [("transpose", "cclock")], 180: [("hflip", ""), ("vflip", "")],
            270: [("transpose", "clock")]}


@dataclasses.dataclass(frozen=True)
class EncodeSpec:
  """The re-encoded stream. ``quantizer`` is MPEG-4's fixed quantiser (2 = best, 31 = worst)."""
  size: int = 384
  fps: int = 30
  gop: int = 240
  quantizer: int = 3

  def validate(self) -> "EncodeSpec":
    if self.size < 16 or self.size % 16:
      raise ConfigError(f"size must be a positive multiple of 16 (macroblock grid), got {self.size}")
    if self.size > MAX_SIZE:
      raise ConfigError(f"size must be at most {MAX_SIZE} (motion-vector positions are int16 "
                        f"quarter-pels), got {self.size}")
    if not 1 <= self.fps <= MAX_FPS:
      raise ConfigError(f"fps must be in [1, {MAX_FPS}], got {self.fps}")
    if not 1 <= self.gop <= MAX_GOP:  # (beyond it the encoder would put I-frames elsewhere)
      raise ConfigError(f"gop must be in [1, {MAX_GOP}] (FFmpeg's MPEG-4 encoder puts an I-frame "
                        f"at least every {MAX_GOP} frames), got {self.gop}")
    if not 2 <= self.quantizer <= 31:
      raise ConfigError(f"quantizer must be in [2, 31], got {self.quantizer}")
    return self


def conformance_problems(path: str | os.PathLike, spec: EncodeSpec) -> list[str]:
  """Why ``path`` must be re-encoded for ``spec`` (empty if it can be used as it is).

  Reads packet headers only (plus the first frame for the rotation), so it is cheap.
  """
  path = os.fspath(path)
  with open_video(path) as (container, stream):
    cc = stream.codec_context
    problems = []
    if cc.name != "mpeg4":
      problems.append(f"codec {cc.name} is not mpeg4")
    if (cc.width, cc.height) != (spec.size, spec.size):
      problems.append(f"size {cc.width}x{cc.height} is not {spec.size}x{spec.size}")
    if problems:
      return problems  # no need to read packets
    keys, pts = [], []
    try:
      for packet in packets(container, stream):
        if packet.size == 0:
          continue
        keys.append(packet.is_keyframe)
        pts.append(packet.pts)
    except av.error.FFmpegError as e:
      return [f"damaged stream ({e})"]
    if not pts or any(p is None for p in pts):
      return ["packets without timestamps"]
    if any(b <= a for a, b in zip(pts, pts[1:])):
      problems.append("frames are reordered (B-frames)")
    # Frame i at i / fps, to the time base's rounding (Matroska's 1 ms ticks give steps of 33,
    # 33 and 34 at 30 fps).
    ticks = 1 / (stream.time_base * spec.fps)
    if any(abs(p - pts[0] - i * ticks) > 0.5 for i, p in enumerate(pts)):
      problems.append(f"not constant {spec.fps} fps")
    if [i for i, k in enumerate(keys) if k] != list(range(0, len(keys), spec.gop)):
      problems.append(f"I-frames are not exactly every {spec.gop} frames")
    container.seek(0)
    try:
      for frame in container.decode(stream):
        if display_rotation(frame):
          problems.append("has display rotation")
        break
    except av.error.FFmpegError as e:  # (re-encoding then says where decoding fails)
      problems.append(f"damaged stream ({e})")
  return problems


def reencode(path: str | os.PathLike, out_path: str | os.PathLike, spec: EncodeSpec,
             on_frame: Callable[[str], None] | None = None) -> int:
  """Re-encodes ``path`` into ``out_path`` (an .mp4) per ``spec``; returns the frames written."""
  path, out_path = os.fspath(path), os.fspath(out_path)
  spec.validate()
  with open_video(path) as (container, stream):
    out = av.open(out_path, "w")
    try:
      ostream = out.add_stream("mpeg4", rate=spec.fps)
      ostream.width = ostream.height = spec.size
      ostream.pix_fmt = "yuv420p"
      occ = ostream.codec_context
      occ.gop_size = spec.gop
      occ.max_b_frames = 0
      occ.qmin = occ.qmax = spec.quantizer  # fixed quality; the bit rate below is only a ceiling
      occ.bit_rate = 100_000_000
      # sc_threshold: no extra I-frames at scene cuts; mv4: 8×8 motion vectors where they help.
      occ.options = {"sc_threshold": "1000000000", "flags": "+mv4"}
      written = 0
      graph = None
      for frame in presentation_timed(decode_frames(path, container, stream), stream,
                                      container.format, spec.fps):
        if graph is None:
          graph = _build_graph(stream, frame, spec)
        graph.push(frame)
        written += _drain(graph, ostream, out, written, on_frame)
      if graph is not None:
        graph.push(None)
        written += _drain(graph, ostream, out, written, on_frame)
      for packet in ostream.encode(None):
        out.mux(packet)
    finally:
      out.close()
  if written == 0:
    raise VideoError(path, "no frames left after frame-rate conversion")
  return written


def _build_graph(stream, first_frame: av.VideoFrame, spec: EncodeSpec) -> av.filter.Graph:
  graph = av.filter.Graph()
  src = graph.add_buffer(width=first_frame.width, height=first_frame.height,
                         format=first_frame.format.name, time_base=stream.time_base)
  chain = [graph.add(name, args) for name, args in _UPRIGHT[display_rotation(first_frame)]]
  chain += [graph.add("fps", f"fps={spec.fps}:round=near"),
            graph.add("scale", f"{spec.size}:{spec.size}:flags=bicubic"),
            graph.add("format", "yuv420p"),
            graph.add("buffersink")]
  node = src
  for f in chain:
    node.link_to(f)
    node = f
  graph.configure()
  return graph


def _drain(graph, ostream, out, start: int, on_frame: Callable[[str], None] | None) -> int:
  n = 0
  while True:
    try:
      frame = graph.pull()
    except (av.error.BlockingIOError, av.error.EOFError):
      return n
    frame.pts = start + n  # constant rate from frame 0, whatever the input's first timestamp
    # The decoder's I/P/B label survives filtering and the encoder would obey it, copying the
    # source's GOP structure; clear it so that only gop_size places I-frames.
    frame.pict_type = av.video.frame.PictureType.NONE
    frame.time_base = fractions.Fraction(1, ostream.average_rate)
    for packet in ostream.encode(frame):
      out.mux(packet)
    n += 1
    if on_frame is not None:
      on_frame("re-encode")


@contextlib.contextmanager
def conformant_video(path: str | os.PathLike, spec: EncodeSpec,
                     on_frame: Callable[[str], None] | None = None) -> Iterator[tuple[str, bool]]:
  """Yields (path of a conformant video, whether it was re-encoded); temporary files are removed."""
  path = os.fspath(path)
  spec.validate()
  if not conformance_problems(path, spec):
    yield path, False
    return
  with tempfile.TemporaryDirectory(prefix="cope_reencode_") as tmp:
    out_path = os.path.join(tmp, "reencoded.mp4")
    reencode(path, out_path, spec, on_frame=on_frame)
    yield out_path, True
