"""The codec CLI: real clips, the .npz contract, visualisation and every bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cope_jax.codec import synthetic_clips


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "cope_jax.codec", *map(str, args)],
                        capture_output=True, text=True, timeout=300)


def _check_npz(path, n_frames):
  with np.load(path) as d:
    kinds, times, rgb, mv, res = d["kinds"], d["times"], d["rgb"], d["mv"], d["residual"]
  assert kinds.dtype == np.uint8 and times.dtype == np.float32
  assert rgb.dtype == np.uint8 and mv.dtype == np.float32 and res.dtype == np.int16
  positions = -(-n_frames // 30)  # one per second, all in the first (partial) GOP
  assert kinds.tolist() == [0] + [1] * (positions - 1)
  np.testing.assert_allclose(times, np.arange(positions), atol=1e-6)
  assert rgb.shape == (1, 384, 384, 3)
  assert mv.shape == (positions - 1, 384, 384, 2) and res.shape == (positions - 1, 384, 384, 3)
  assert np.abs(mv).max() > 0 and np.abs(res).max() > 0


@pytest.mark.parametrize("clip,expected", [
    ("city_clip", dict(codec="mpeg2video", width=720, height=405, fps=25.0, num_frames=190,
                       duration_s=7.6, has_b_frames=False, audio_streams=0)),
    ("bunny_clip", dict(codec="h264", width=1280, height=720, fps=25.0, num_frames=132,
                        duration_s=5.28, has_b_frames=False, audio_streams=1)),
])
def test_real_clips_inspect_and_extract(clip, expected, request, tmp_path):
  path = request.getfixturevalue(clip)
  r = run_cli("inspect", path)
  assert r.returncode == 0, r.stderr
  info = json.loads(r.stdout)
  for key in ("codec", "width", "height", "fps", "num_frames", "duration_s", "has_b_frames",
              "frame_types", "gop_starts"):
    assert key in info
  for key, value in expected.items():
    assert info[key] == pytest.approx(value), key
  assert len(info["frame_types"]) == info["num_frames"]
  assert info["gop_starts"][0] == 0
  assert all(info["frame_types"][i] == "I" for i in info["gop_starts"])

  out = tmp_path / "prims.npz"
  r = run_cli("extract", path, "--out", out, "--quiet")
  assert r.returncode == 0, r.stderr
  _check_npz(out, int(round(expected["duration_s"] * 30)))


def test_extract_flags(pan_clip, tmp_path):
  out = tmp_path / "k2.npz"
  r = run_cli("extract", pan_clip, "--out", out, "--size", 192, "--fusion", 10,
              "--keyframes-per-gop", 2, "--quiet")
  assert r.returncode == 0, r.stderr
  with np.load(out) as d:
    # 4 s = 120 frames, one partial GOP: positions every 10 frames. The second keyframe of a
    # full GOP would be at frame 120 (position 12 of 24), past the end: partial-GOP rule.
    assert d["kinds"].tolist() == [0] + [1] * 11
    assert d["mv"].shape == (11, 192, 192, 2)
    # Fusion 10 at (2, 1) px/frame on a half-size grid: (10, 5) px per Δ-frame.
    assert np.median(d["mv"][:, 16:-32, 16:-32, 0]) == pytest.approx(10, rel=0.1)


def test_extract_fps_gop_and_max_gops(pan_clip, tmp_path):
  out = tmp_path / "gops.npz"
  r = run_cli("extract", pan_clip, "--out", out, "--size", 192, "--fps", 15, "--gop", 15,
              "--fusion", 5, "--max-gops", 2, "--quiet")
  assert r.returncode == 0, r.stderr
  with np.load(out) as d:
    # 4 s at 15 fps: four 1 s GOPs of three positions; the first and last GOP kept.
    assert d["kinds"].tolist() == [0, 1, 1, 0, 1, 1]
    np.testing.assert_allclose(d["times"], [0, 1 / 3, 2 / 3, 3, 10 / 3, 11 / 3], atol=1e-5)
    assert d["rgb"].shape == (2, 192, 192, 3) and d["mv"].shape == (4, 192, 192, 2)
    # (2, 1) px per 30 fps frame at 384² is (2, 1) per 15 fps frame at 192², fused over 5.
    assert np.median(d["mv"][:, 16:-32, 16:-32, 0]) == pytest.approx(10, rel=0.1)
    assert np.median(d["mv"][:, 16:-32, 16:-32, 1]) == pytest.approx(5, rel=0.1)


def test_visualize(pan_clip, tmp_path):
  import matplotlib.image  # pylint: disable=import-outside-toplevel
  out = tmp_path / "viz.png"
  r = run_cli("visualize", pan_clip, "--out", out, "--quiet")
  assert r.returncode == 0, r.stderr
  img = matplotlib.image.imread(out)
  assert img.shape[0] > 400 and img.shape[1] > 800
  assert img[..., :3].std() > 0.1  # a picture, not a blank page


def test_visualize_labels_tell_every_position_apart():
  """Times were printed to a tenth of a second: at --fps 120 --fusion 10 two panels read
  "t=0.2s"; at --fps 240 --fusion 8 the first Δ-frame read as the keyframe's "t=0.0s"."""
  from cope_jax.codec.visualize import _seconds  # pylint: disable=import-outside-toplevel
  for fps, fusion in ((120, 10), (240, 8), (240, 1), (30, 30), (25, 10)):
    labels = [_seconds(k * fusion / fps) for k in range(240 // fusion)]
    assert len(set(labels)) == len(labels), (fps, fusion, labels)
  assert [_seconds(t) for t in (0, 1, 0.25, 7.0, 1 / 12)] == ["0", "1", "0.25", "7", "0.083"]


# ---- bad input: exit 2, one `error:` line naming the file, no traceback, nothing written ----

def _make_bad(kind, tmp_path):
  p = tmp_path / f"bad_{kind}.mp4"
  if kind == "empty":
    p.write_bytes(b"")
  elif kind == "text":
    p.write_text("this is not a video\n" * 100)
  elif kind == "truncated":
    good = tmp_path / "good.mp4"
    synthetic_clips.write_clip(good, synthetic_clips.pan_frames(60, 96, 160), codec="libx264")
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # the index (moov) is lost
  elif kind == "audio_only":
    p = tmp_path / "bad_audio_only.m4a"
    import av  # pylint: disable=import-outside-toplevel
    with av.open(str(p), "w") as c:
      s = c.add_stream("aac", rate=16000)
      frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp",
                                         layout="mono")
      frame.sample_rate = 16000
      for pkt in list(s.encode(frame)) + list(s.encode(None)):
        c.mux(pkt)
  elif kind == "directory":
    p = tmp_path / "a_directory.mp4"
    p.mkdir()
  elif kind == "missing":
    p = tmp_path / "does_not_exist.mp4"
  elif kind == "one_frame":
    synthetic_clips.write_clip(p, synthetic_clips.pan_frames(1, 96, 160), codec="libx264")
  elif kind == "shorter_than_fusion_window":
    synthetic_clips.write_clip(p, synthetic_clips.pan_frames(15, 96, 160), codec="libx264")
  elif kind == "text_named_txt":  # FFmpeg's tty reader renders it as a 640×400 "video"
    p = tmp_path / "bad_notes.txt"
    p.write_text("hello world\n" * 1000)
  elif kind == "conformant_damaged_first_frame":  # used as is: its first frame fails at decoding
    import av  # pylint: disable=import-outside-toplevel
    from test_reencode import mux_frames  # pylint: disable=import-outside-toplevel
    p = tmp_path / "bad_first_frame.avi"
    with av.open(str(p), "w") as out:
      s = out.add_stream("mpeg4", rate=30)
      s.width = s.height = 384
      s.pix_fmt, s.codec_context.gop_size, s.codec_context.max_b_frames = "yuv420p", 240, 0
      mux_frames(out, s, list(synthetic_clips.pan_frames(40, 384, 384)))
    with av.open(str(p)) as c:
      first = next(pk for pk in c.demux(video=0) if pk.size)
    data = bytearray(p.read_bytes())
    data[first.pos + 20:first.pos + first.size - 4] = np.random.default_rng(0).integers(
        0, 256, first.size - 24, np.uint8).tobytes()
    p.write_bytes(bytes(data))
  elif kind == "absurd_size":
    p = tmp_path / "bad_absurd.y4m"
    p.write_bytes(b"YUV4MPEG2 W100000 H100000 F30:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\0" * 1000)
  return p


BAD = ["empty", "text", "text_named_txt", "truncated", "audio_only", "directory", "missing",
       "one_frame", "shorter_than_fusion_window", "absurd_size", "conformant_damaged_first_frame"]


@pytest.mark.parametrize("command", ["extract", "visualize"])
@pytest.mark.parametrize("kind", BAD)
def test_bad_input(kind, command, tmp_path):
  video = _make_bad(kind, tmp_path)
  out = tmp_path / ("out.npz" if command == "extract" else "out.png")
  r = run_cli(command, video, "--out", out, "--quiet")
  assert r.returncode == 2, (r.stdout, r.stderr)
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith("error: ") and str(video) in lines[0]
  assert "Traceback" not in r.stderr
  assert sorted(os.listdir(tmp_path)) == sorted(
      {video.name} | ({"good.mp4"} if kind == "truncated" else set())) or kind == "missing"
  assert not out.exists()


@pytest.mark.parametrize("kind", ["empty", "text", "text_named_txt", "audio_only", "directory",
                                  "missing", "absurd_size", "conformant_damaged_first_frame"])
def test_inspect_bad_input(kind, tmp_path):
  video = _make_bad(kind, tmp_path)
  r = run_cli("inspect", video)
  assert r.returncode == 2 and r.stdout == ""
  assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_video_shorter_than_one_gop_uses_the_partial_gop_rule(tmp_path):
  # 2 s < one 8-s GOP: positions at 0 s (I-frame, keyframe) and 1 s (Δ-frame).
  video = tmp_path / "two_seconds.mp4"
  synthetic_clips.write_clip(video, synthetic_clips.pan_frames(60, 96, 160), codec="libx264")
  out = tmp_path / "p.npz"
  r = run_cli("extract", video, "--out", out, "--quiet")
  assert r.returncode == 0, r.stderr
  _check_npz(out, 60)


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_damaged_stream_never_crashes(city_clip, tmp_path, damage):
  data = bytearray(open(city_clip, "rb").read())
  if damage == "cut":
    data = data[: len(data) * 6 // 10]
  else:  # overwrite a run of packets in the middle
    mid = len(data) // 2
    data[mid:mid + 200_000] = np.random.default_rng(0).integers(0, 256, 200_000, np.uint8).tobytes()
  video = tmp_path / f"damaged_{damage}.mpg"
  video.write_bytes(bytes(data))
  out = tmp_path / "p.npz"
  r = run_cli("extract", video, "--out", out, "--quiet")
  assert "Traceback" not in r.stderr
  if r.returncode == 0:  # extracted up to (or around) the damage
    with np.load(out) as d:
      assert len(d["kinds"]) >= 1 and d["kinds"][0] == 0
  else:
    assert r.returncode == 2 and r.stderr.startswith("error: ") and not out.exists()


def test_bad_flags_exit_2(pan_clip, tmp_path):
  r = run_cli("extract", pan_clip, "--out", tmp_path / "x.npz", "--size", 100)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "16" in r.stderr
  r = run_cli("extract", pan_clip, "--out", tmp_path / "missing_dir" / "x.npz")
  assert r.returncode == 2 and r.stderr.startswith("error: ")
  for duration in ("0", "nan", "inf", "1e300"):
    r = run_cli("budget", "--duration", duration)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "--duration" in r.stderr
  # too large for int16 quarter-pel positions: refused before any re-encoding
  r = run_cli("extract", pan_clip, "--out", tmp_path / "x.npz", "--size", 2064)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "2048" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  # argparse's own refusals are one line too, naming the command whose --help to read
  r = run_cli("extract", pan_clip, "--out", tmp_path / "x.npz", "--size", "abc")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
  assert r.stderr.startswith("error: argument --size: invalid int value: 'abc'")
  assert "(see python -m cope_jax.codec extract --help)" in r.stderr
  # so does a flag the sub-command does not know (argparse reports it from the top parser)
  r = run_cli("extract", pan_clip, "--out", tmp_path / "x.npz", "--bogus")
  assert r.returncode == 2 and r.stderr.strip() == (
      "error: unrecognized arguments: --bogus (see python -m cope_jax.codec extract --help)")


@pytest.mark.parametrize("command,suffix", [("extract", ".npz"), ("visualize", ".png")])
def test_an_output_that_is_a_folder_is_refused_before_any_work(command, suffix, pan_clip,
                                                               tmp_path):
  out = tmp_path / f"taken{suffix}"
  out.mkdir()
  r = run_cli(command, pan_clip, "--out", out, "--quiet")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
  assert r.stderr.startswith(f"error: {out}: is a folder") and "Traceback" not in r.stderr
  assert not any(out.iterdir())


def test_a_failed_write_names_the_output_and_leaves_nothing(pan_clip, tmp_path, monkeypatch):
  import errno  # pylint: disable=import-outside-toplevel

  from cope_jax.codec import errors, extract  # pylint: disable=import-outside-toplevel
  from cope_jax.codec.sampling import SamplingConfig  # pylint: disable=import-outside-toplevel
  prims = extract.extract_primitives(pan_clip, size=64, sampling=SamplingConfig(max_gops=1))

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(np, "savez", full_disk)
  out = tmp_path / "prims.npz"
  with pytest.raises(errors.VideoError, match="prims.npz: cannot be written: No space left"):
    extract.save_npz(prims, out)
  assert not list(tmp_path.iterdir())


def test_a_stream_damaged_midway_counts_the_frames_decoded(tmp_path):
  # A conformant file (used as is) whose middle is overwritten: decoding stops at the damage,
  # and the frames counted are those decoded, not the 150 the packet headers list.
  video = tmp_path / "damaged.m4v"
  synthetic_clips.write_clip(video, synthetic_clips.pan_frames(150, 384, 384, (2, 1), "coffee"),
                             codec="mpeg4", gop=240)
  data = bytearray(video.read_bytes())
  mid = len(data) // 2
  data[mid:mid + 4000] = np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes()
  video.write_bytes(bytes(data))
  out = tmp_path / "p.npz"
  r = run_cli("extract", video, "--out", out, "--quiet")
  assert r.returncode == 0 and "stream damaged after" in r.stderr, r.stderr
  decoded = int(r.stderr.split("stream damaged after ")[1].split()[0])
  assert decoded < 150
  with np.load(out) as d:
    assert int(d["num_frames"]) == decoded and d["frame_index"].max() < decoded
  assert f"over {decoded} frames" in r.stdout
  # Decoding that stops before the frames a caller needs is refused like a clip that short.
  from cope_jax.codec.errors import VideoError  # pylint: disable=import-outside-toplevel
  from cope_jax.codec.extract import extract_primitives  # pylint: disable=import-outside-toplevel
  with pytest.warns(RuntimeWarning, match="stream damaged"), pytest.raises(
      VideoError, match=f"too short: decoding stopped after {decoded} of 150 frames"):
    extract_primitives(video, min_frames=decoded + 1)


def _terminate_when(proc, ready, timeout=120):
  """SIGTERM to ``proc`` once ``ready()`` holds; its exit status."""
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  while not ready():
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.perf_counter() - start < timeout
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  return proc.wait(timeout=120)


@pytest.mark.parametrize("command", ["extract", "build"])
def test_a_sigterm_leaves_no_temporary_files(tmp_path, bunny_clip, command):
  """SIGTERM killed the command where it stood: the video being re-encoded stayed in the
  temporary folder (and a data build's workers went on extracting, orphaned). Now it unwinds
  as Ctrl-C does: exit status 143, nothing left behind."""
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  if command == "extract":
    argv = ["-m", "cope_jax.codec", "extract", bunny_clip, "--out", str(tmp_path / "p.npz")]
  else:
    videos = []
    for i in range(4):
      videos.append(str(tmp_path / f"v{i}.mp4"))
      os.symlink(bunny_clip, videos[-1])
    (tmp_path / "q.jsonl").write_text("".join(
        json.dumps({"video": v, "question": "Q?", "options": ["a", "b"], "answer": "A"}) + "\n"
        for v in videos))
    argv = ["-m", "cope_jax.data", "build", "--stage", "finetune", "--source", "mcq",
            "--annotations", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "out"), "--workers",
            "2", "--quiet"]
  proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "TMPDIR": str(scratch)})
  reencoding = lambda: any(os.listdir(d) for d, _, _ in os.walk(scratch)  # noqa: E731
                           if os.path.basename(d).startswith("cope_reencode_"))
  assert _terminate_when(proc, reencoding) == 143
  assert "stopped by SIGTERM" in proc.stderr.read()
  assert not os.listdir(scratch)
  assert not [n for _, _, names in os.walk(tmp_path) for n in names if ".tmp" in n]


# A command whose SIGTERM exception PyAV dropped (its error check loses an exception raised
# while it runs: about one SIGTERM in 50 during a re-encode), simulated by catching it.
_SIGNAL_DROPPED = """
import os, signal, sys, time
from cope_jax.codec.__main__ import main
from cope_jax.command_line import exit_on_sigterm
# (Ctrl-C's handler as in a terminal: a shell's background job, as CI may run the tests in,
# inherits SIGINT ignored, and exit_on_sigterm then leaves it so)
signal.signal(signal.SIGINT, signal.default_int_handler)
exit_on_sigterm()
try:
  os.kill(os.getpid(), getattr(signal, sys.argv.pop(1)))
  time.sleep(5)
except (SystemExit, KeyboardInterrupt):
  print("dropped", flush=True)
main(sys.argv[1:])
"""


@pytest.mark.parametrize("signame,status", [("SIGTERM", 143), ("SIGINT", -2)])
def test_a_signal_pyav_dropped_still_stops_the_command(tmp_path, bunny_clip, signame, status):
  """The command went on and finished its work (exit 0, the .npz written); now the next packet
  read raises the stop again (Ctrl-C: a KeyboardInterrupt, the process ended by SIGINT)."""
  out = tmp_path / "p.npz"
  r = subprocess.run([sys.executable, "-c", _SIGNAL_DROPPED, signame, "extract", bunny_clip,
                      "--out", str(out)], capture_output=True, text=True, timeout=120,
                     env={**os.environ, "TMPDIR": str(tmp_path)})
  assert r.stdout == "dropped\n" and r.returncode == status, r.stderr[-2000:]
  assert not [n for _, _, names in os.walk(tmp_path) for n in names], list(os.walk(tmp_path))
