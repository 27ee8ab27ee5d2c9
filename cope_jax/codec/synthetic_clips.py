"""Clips with known motion, written through the real encoders (tests, benchmarks, the demo data).

Photographic textures come from scikit-image's bundled images. ``pan_frames`` moves a virtual
camera over a texture at a constant velocity: the backward displacement of every pixel is then
``+velocity``. ``object_frames`` moves a textured square over a still background: inside the
square the backward displacement is ``-velocity``.
"""

from __future__ import annotations

import fractions
import itertools
import os
from typing import Iterable, Iterator

import av
import numpy as np


def texture(name: str = "astronaut") -> np.ndarray:
  """An RGB uint8 photograph bundled with scikit-image (astronaut, coffee, chelsea, …)."""
  from skimage import data  # pylint: disable=import-outside-toplevel  (slow import, rarely needed)
  img = getattr(data, name)()
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  return np.ascontiguousarray(img[..., :3])


def mirror_tiled(img: np.ndarray) -> np.ndarray:
  """Mirror-tiles an image so that indexing it modulo its size is continuous everywhere."""
  top = np.concatenate([img, img[:, ::-1]], axis=1)
  return np.concatenate([top, top[::-1]], axis=0)


def pan_frames(num_frames: int, height: int, width: int, velocity: tuple[int, int] = (2, 0),
               name: str = "astronaut", start: tuple[int, int] = (40, 60)) -> Iterator[np.ndarray]:
  """A camera panning over a photograph; the view moves by ``velocity`` (x, y) px per frame."""
  canvas = mirror_tiled(texture(name))
  ph, pw = canvas.shape[:2]
  ys, xs = np.arange(height), np.arange(width)
  for t in range(num_frames):
    y0 = start[1] + velocity[1] * t
    x0 = start[0] + velocity[0] * t
    yield canvas[np.ix_((y0 + ys) % ph, (x0 + xs) % pw)]


def object_frames(num_frames: int, height: int, width: int, velocity: tuple[int, int] = (3, 2),
                  start: tuple[int, int] = (40, 40), side: int = 96,
                  background: str = "coffee", sprite: str = "chelsea") -> Iterator[np.ndarray]:
  """A textured square moving at ``velocity`` px per frame over a still photograph."""
  bg = np.ascontiguousarray(next(pan_frames(1, height, width, (0, 0), background, (0, 0))))
  patch = texture(sprite)[60:60 + side, 140:140 + side]
  for t in range(num_frames):
    frame = bg.copy()
    x0, y0 = start[0] + velocity[0] * t, start[1] + velocity[1] * t
    ya, yb = max(y0, 0), min(y0 + side, height)
    xa, xb = max(x0, 0), min(x0 + side, width)
    if ya < yb and xa < xb:
      frame[ya:yb, xa:xb] = patch[ya - y0:yb - y0, xa - x0:xb - x0]
    yield frame


def write_clip(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 30,
               codec: str = "mpeg4", gop: int = 240, b_frames: int = 0,
               options: dict | None = None, rotation: int = 0,
               frame_times: Iterable[float] | None = None, audio: bool = False,
               quantizer: int = 3) -> str:
  """Encodes RGB frames with PyAV. ``frame_times`` (seconds) makes a variable-frame-rate file.

  ``quantizer`` fixes the quality of the MPEG-1/2/4 encoders (their default bit rate is so low
  that flat regions turn into skipped blocks with zero motion).

  ``rotation`` sets the display matrix (degrees counter-clockwise); ``audio`` adds a silent track.
  """
  path = os.fspath(path)
  frames = iter(frames)
  first = next(frames)
  h, w = first.shape[:2]
  out = av.open(path, "w")
  try:
    stream = out.add_stream(codec, rate=int(round(fps)))
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    cc = stream.codec_context
    cc.gop_size = gop
    cc.max_b_frames = b_frames
    opts = {}
    if codec in ("mpeg4", "mpeg1video", "mpeg2video"):
      cc.qmin = cc.qmax = quantizer
      cc.bit_rate = 100_000_000
      opts["sc_threshold"] = "1000000000"
    opts.update(options or {})
    cc.options = opts
    if rotation:
      stream.set_display_rotation(rotation)
    times = iter(frame_times) if frame_times is not None else None
    if times is not None:
      stream.codec_context.time_base = fractions.Fraction(1, 1000)
    astream = out.add_stream("aac", rate=16000) if audio else None
    for i, rgb in enumerate(itertools.chain([first], frames)):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
      if times is not None:
        frame.pts = int(round(next(times) * 1000))
        frame.time_base = stream.codec_context.time_base
      else:
        frame.pts = i
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode(None):
      out.mux(packet)
    if astream is not None:
      _write_silence(out, astream, seconds=1.0)
  finally:
    out.close()
  return path


def _write_silence(out, astream, seconds: float) -> None:
  samples = np.zeros((1, int(astream.rate * seconds)), np.float32)
  frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
  frame.sample_rate = astream.rate
  for packet in astream.encode(frame):
    out.mux(packet)
  for packet in astream.encode(None):
    out.mux(packet)
