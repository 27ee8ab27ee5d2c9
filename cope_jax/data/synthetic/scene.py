"""Synthetic scenes: a camera panning over a photograph, and coloured sprites that start moving at
different times with piecewise-constant velocities, bouncing off the frame's walls.

Everything a question can ask is recorded in the ground truth (per-frame positions, camera track,
bounce events), and everything starts still: frame 0 — the first keyframe — shows where things
are, never how they move.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from cope_jax.codec.errors import ConfigError
from cope_jax.codec.synthetic_clips import mirror_tiled, texture

COLORS = {"red": (225, 35, 35), "green": (40, 190, 60), "blue": (40, 80, 235),
          "yellow": (240, 215, 30), "magenta": (215, 40, 200), "cyan": (30, 205, 215)}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Backgrounds textured everywhere: a camera pan must change the picture between positions one
# second apart (the cameraman photo's and the rocket's flat skies hid 26 of 475 pans, under
# 1 grey level: now at least 4, tested).
TEXTURES = ("astronaut", "coffee", "chelsea", "grass", "immunohistochemistry", "gravel")


@dataclasses.dataclass
class Sprite:
  color: str
  shape: str
  side: int
  start_frame: int            # still before this frame
  positions: np.ndarray       # (T, 2) float, top-left corner (x, y) per frame
  bounces: list[tuple[int, str]]  # (frame, wall or corner: "top-left") in order

  @property
  def name(self) -> str:
    return f"{self.color} {self.shape}"

  def first_direction(self) -> str:
    return direction_of(self.positions[self.start_frame + 1] - self.positions[self.start_frame])

  def speed(self) -> float:
    """Mean speed while moving, px/frame."""
    moving = np.diff(self.positions[self.start_frame:], axis=0)
    return float(np.hypot(moving[:, 0], moving[:, 1]).mean()) if len(moving) else 0.0


def direction_of(step) -> str:
  """The direction (a DIRECTIONS key) of a displacement (x, y): its larger component's."""
  if abs(step[0]) >= abs(step[1]):
    return "right" if step[0] > 0 else "left"
  return "down" if step[1] > 0 else "up"


@dataclasses.dataclass
class Scene:
  size: int
  fps: int
  num_frames: int
  texture: str
  camera: np.ndarray          # (T, 2) int, view offset into the texture per frame
  pan: str                    # "left" / "right" / "up" / "down" / "none": where the camera turns
  sprites: list[Sprite]
  visitor: Sprite | None = None  # enters the frame after the start (and may leave it)

  @property
  def everyone(self) -> list[Sprite]:
    """The objects in the order ``render`` draws them: the sprites, then any visitor."""
    return self.sprites + ([self.visitor] if self.visitor else [])

  @property
  def last_seen_frame(self) -> int:
    """The last frame at a whole second: the last one that sampling at one position per second
    (CoPE's default, and the keyframes mode) sees. Events after it are not asked about."""
    return (self.num_frames - 1) // self.fps * self.fps

  def to_json(self) -> dict:
    return {"size": self.size, "fps": self.fps, "num_frames": self.num_frames,
            "texture": self.texture, "pan": self.pan, "camera": self.camera.tolist(),
            "sprites": [_sprite_json(s) for s in self.sprites],
            "visitor": _sprite_json(self.visitor) if self.visitor else None}


def _sprite_json(s: Sprite) -> dict:
  return {"color": s.color, "shape": s.shape, "side": s.side, "start_frame": s.start_frame,
          "positions": np.round(s.positions, 3).tolist(), "bounces": s.bounces}


def visible(positions: np.ndarray, side: int, size: int) -> np.ndarray:
  """(T,) bool: whether any part of a sprite at these top-left corners is inside the frame."""
  return np.all((positions > -side) & (positions < size), axis=1)


def _simulate(rng: np.random.Generator, size: int, side: int, num_frames: int, start: int,
              direction: str, speed: float) -> tuple[np.ndarray, list[tuple[int, str]]]:
  """Straight-line motion with wall bounces; velocity is constant between bounces."""
  hi = size - side
  pos = rng.uniform(0.2 * hi, 0.8 * hi, 2)
  main = np.array(DIRECTIONS[direction], float)
  velocity = speed * (main + rng.uniform(-0.3, 0.3) * main[::-1])  # mostly along one axis
  positions, bounces = np.zeros((num_frames, 2)), []
  for t in range(num_frames):
    if t > start:
      pos = pos + velocity
      walls = []
      for axis, (low_wall, high_wall) in enumerate((("left", "right"), ("top", "bottom"))):
        if pos[axis] < 0 or pos[axis] > hi:
          pos[axis] = -pos[axis] if pos[axis] < 0 else 2 * hi - pos[axis]
          velocity[axis] = -velocity[axis]
          walls.append(low_wall if pos[axis] < hi / 2 else high_wall)
      if walls:  # both walls in one frame: a corner hit, one bounce ("top-left")
        bounces.append((t, "-".join(reversed(walls))))
    positions[t] = pos
  return positions, bounces


def start_candidates(fps: int, num_frames: int) -> np.ndarray:
  """Frames where an object may start moving: every 0.5 s from 0.5 s to 45 % of the video."""
  return np.arange(int(0.5 * fps), int(0.45 * num_frames), fps // 2)


def _starts_fit(seconds: float, num_sprites: int, fps: int) -> bool:
  """Whether the start window holds ``num_sprites`` starts 1.5 s (3 candidates) apart."""
  return len(start_candidates(fps, int(round(seconds * fps)))) >= 3 * (num_sprites - 1) + 1


def min_seconds(num_sprites: int = 2, fps: int = 30) -> float:
  """The shortest video, in half seconds, whose start window fits ``num_sprites`` starts."""
  seconds = 1.0
  while not _starts_fit(seconds, num_sprites, fps):
    seconds += 0.5
  return seconds


# The longest video: 64 GOPs of 8 s, what a build samples at most by default (the demo and the
# tests use 8 s, one GOP). Beyond it the codec keeps 64 GOPs spread over the video, while the
# questions are judged on every second (600 s: 88 seconds no sampled frame shows).
MAX_SECONDS = 512.0


def check_seconds(seconds: float, num_sprites: int = 2, fps: int = 30) -> None:
  """ConfigError unless ``seconds`` is from ``min_seconds`` to ``MAX_SECONDS``."""
  if not math.isfinite(seconds):
    raise ConfigError(f"the video length must be a finite number of seconds, got {seconds}")
  if seconds > MAX_SECONDS:
    raise ConfigError(f"the video length must be at most {MAX_SECONDS:g} s, got {seconds:g} s")
  if seconds < min_seconds(num_sprites, fps):  # (half seconds: the rule users are told)
    raise ConfigError(f"{seconds:g} s is too short for {num_sprites} objects that start moving "
                      f"1.5 s apart in the first 45 % of the video; use at least "
                      f"{min_seconds(num_sprites, fps):g} s")


# Drawn again until every object is shown (``objects_shown``): at most this many tries.
MAX_DRAWS = 1000


def sample_scene(rng: np.random.Generator, size: int = 96, fps: int = 30, seconds: float = 8.0,
                 num_sprites: int = 2) -> Scene:
  """A random scene whose events are well separated in time (so questions are unambiguous) and
  whose objects the sampled looks show (``objects_shown``; drawn again until they do)."""
  for _ in range(MAX_DRAWS):
    scene = _draw_scene(rng, size, fps, seconds, num_sprites)
    if objects_shown(scene):
      return scene
  raise ConfigError(f"no scene of {num_sprites} objects at {size} px shows them apart in "
                    f"{MAX_DRAWS} draws; use a larger size")


def _draw_scene(rng: np.random.Generator, size: int, fps: int, seconds: float,
                num_sprites: int) -> Scene:
  num_frames = int(round(seconds * fps))
  side = max(8, size // 4)
  colors = rng.choice(list(COLORS), num_sprites, replace=False)
  shapes = rng.choice(SHAPES, num_sprites, replace=num_sprites > len(SHAPES))
  # Start times at least 1.5 s apart, never at frame 0 (the keyframe must not reveal motion).
  check_seconds(seconds, num_sprites, fps)
  candidates = start_candidates(fps, num_frames)
  starts = np.sort(rng.choice(candidates, num_sprites, replace=False))
  while np.any(np.diff(starts) < 1.5 * fps):
    starts = np.sort(rng.choice(candidates, num_sprites, replace=False))
  # Speeds in frame widths per second; the sprites differ by at least 1.6x.
  speeds = rng.uniform(0.1, 0.4, num_sprites)
  while num_sprites > 1 and max(speeds) < 1.6 * min(speeds):
    speeds = rng.uniform(0.1, 0.4, num_sprites)
  sprites = []
  for color, shape, start, speed in zip(colors, shapes, starts, speeds):
    direction = rng.choice(list(DIRECTIONS))
    positions, bounces = _simulate(rng, size, side, num_frames, int(start), direction,
                                   speed * size / fps)
    sprites.append(Sprite(str(color), str(shape), side, int(start), positions, bounces))
  pan = str(rng.choice(["none"] + list(DIRECTIONS)))
  camera = np.zeros((num_frames, 2), np.int64)
  background = str(rng.choice(TEXTURES))
  if pan != "none":
    pan_start = int(rng.integers(fps // 2, num_frames // 2))
    step = np.array(DIRECTIONS[pan]) * pan_speed(size, fps, background)
    camera[pan_start:] = np.rint(np.arange(1, num_frames - pan_start + 1)[:, None] * step)
  visitor = None
  if rng.random() < 0.5:  # a third object that enters after the start, crossing the frame
    color = str(rng.choice([c for c in COLORS if c not in colors]))
    shape = str(rng.choice(SHAPES))
    start = int(rng.integers(fps, 4 * fps))
    direction = np.array(DIRECTIONS[str(rng.choice(list(DIRECTIONS)))], float)
    pos = np.where(direction != 0, np.where(direction > 0, -side - 1.0, size + 1.0),
                   rng.uniform(0, size - side))  # just outside, on the side it comes from
    speed = rng.uniform(0.3, 0.5) * size / fps
    steps = np.clip(np.arange(num_frames) - start, 0, None)[:, None]
    visitor = Sprite(color, shape, side, start, pos + steps * speed * direction, [])
  return Scene(size, fps, num_frames, background, camera, pan, sprites, visitor)


def pan_speed(size: int, fps: int, background: str) -> float:
  """The camera's px per frame: ``size // 64`` (at least 1), but at most half the frame and a
  quarter of the mirror-tiled background's period per second, so that looks a second apart
  share content and the pan cannot alias into the opposite direction (at 32 px one pixel a
  frame crossed the whole frame in a second; at 1024 px, 480 px a second matched a shorter
  shift the other way)."""
  return min(max(1, size // 64), size / 2 / fps, _period(background) / 4 / fps)


@functools.lru_cache(maxsize=None)
def _period(background: str) -> int:
  """The mirror-tiled background's shorter period, px (read once: loading a picture costs more
  than drawing a scene)."""
  return min(2 * side for side in texture(background).shape[:2])


def sampled_frames(scene: Scene) -> np.ndarray:
  """The frames one-per-second sampling sees, to the last look (the positions a Δ-frame's fused
  motion spans: one second of displacement each)."""
  return np.arange(0, scene.last_seen_frame + 1, scene.fps)


def _placement(sprite: Sprite, frame: int, size: int):
  """Where ``render`` draws ``sprite`` at ``frame`` (whole pixels, clipped to the frame): the
  frame's (rows, columns) slices and the matching ones of the sprite's own square, or None
  where it is wholly outside."""
  x, y = np.rint(sprite.positions[frame]).astype(int)
  x0, y0 = max(x, 0), max(y, 0)
  x1, y1 = min(x + sprite.side, size), min(y + sprite.side, size)
  if x0 >= x1 or y0 >= y1:
    return None
  return (slice(y0, y1), slice(x0, x1)), (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))


def shown_fractions(scene: Scene, frame: int, masks: list[np.ndarray] | None = None
                    ) -> list[float]:
  """Per object (the sprites, then any visitor), the share of its shape that ``render`` shows at
  ``frame``: not outside the frame nor under an object drawn after it. ``masks``: the objects'
  shapes, where the caller has them already."""
  everyone = scene.everyone
  masks = masks or [_mask(s.shape, s.side) for s in everyone]
  owner = np.full((scene.size, scene.size), -1, np.int16)
  for i, (s, mask) in enumerate(zip(everyone, masks)):
    if (placed := _placement(s, frame, scene.size)) is not None:
      where, inside = placed
      owner[where][mask[inside]] = i
  counts = np.bincount(owner[owner >= 0].ravel(), minlength=len(everyone))
  return [float(c) / int(m.sum()) for c, m in zip(counts, masks)]


# Of a sprite's shape, at least this share is shown at every look (under another object or not).
MIN_SHOWN = 0.5


def objects_shown(scene: Scene) -> bool:
  """Whether the looks one-per-second sampling sees show every object: frame 0 (the keyframe)
  each sprite whole, every later look each sprite at least ``MIN_SHOWN`` of it, and a visitor
  whole at some look after frame 0 (one that arrived after the last look, or was hidden at it,
  made an ``enters`` answer no frame shows; sprites placed on each other made a first mover
  that frame 0 and the first look after its start hid)."""
  frames = sampled_frames(scene)
  masks = [_mask(s.shape, s.side) for s in scene.everyone]
  first = shown_fractions(scene, 0, masks)
  if min(first[:len(scene.sprites)]) < 1.0:
    return False
  later = [shown_fractions(scene, int(t), masks) for t in frames[1:]]
  if any(min(f[:len(scene.sprites)]) < MIN_SHOWN for f in later):
    return False
  return scene.visitor is None or any(f[-1] == 1.0 for f in later)


def _mask(shape: str, side: int) -> np.ndarray:
  yy, xx = np.mgrid[0:side, 0:side] + 0.5
  if shape == "circle":
    return (xx - side / 2) ** 2 + (yy - side / 2) ** 2 <= (side / 2) ** 2
  if shape == "triangle":
    return (yy >= side * 0.1) & (np.abs(xx - side / 2) <= (yy - side * 0.1) * 0.55)
  return np.ones((side, side), bool)


def render(scene: Scene):
  """Yields the (size, size, 3) uint8 frames of a scene."""
  canvas = mirror_tiled(texture(scene.texture))
  ph, pw = canvas.shape[:2]
  idx = np.arange(scene.size)
  everyone = scene.everyone
  shading = {}
  for s in everyone:  # a little texture inside sprites gives the codec something to track
    yy, xx = np.mgrid[0:s.side, 0:s.side]
    pattern = 0.8 + 0.2 * ((xx // 3 + yy // 3) % 2)
    shading[s.name] = (pattern[..., None] * np.array(COLORS[s.color])).astype(np.uint8)
  masks = {s.name: _mask(s.shape, s.side) for s in everyone}
  for t in range(scene.num_frames):
    cx, cy = scene.camera[t]
    frame = canvas[np.ix_((40 + cy + idx) % ph, (40 + cx + idx) % pw)].copy()
    for s in everyone:
      if (placed := _placement(s, t, scene.size)) is None:  # (wholly outside)
        continue
      where, inside = placed
      m = masks[s.name][inside]
      frame[where][m] = shading[s.name][inside][m]
    yield frame
