"""Next-frame retrieval: Recall@k on constructed cases, and the stage-1 driver end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cope_jax.infer.retrieval import recall_at_k

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_recall_at_k_known_answers():
  database = np.eye(6)
  targets = np.array([1, 2, 3, 4])
  excluded = targets - 1
  # Perfect queries: the target itself.
  assert recall_at_k(database[targets], database, targets, excluded) == {
      "recall@1": 1.0, "recall@2": 1.0, "recall@5": 1.0}
  # Each query is closest to frame target+1, then to its target: rank 2 for all.
  queries = 0.9 * database[(targets + 1) % 6] + 0.5 * database[targets]
  r = recall_at_k(queries, database, targets, excluded)
  assert r["recall@1"] == 0.0 and r["recall@2"] == 1.0
  # The excluded frame never counts, even when it is the most similar.
  queries = database[excluded] + 0.1 * database[targets]
  assert recall_at_k(queries, database, targets, excluded)["recall@1"] == 1.0


def test_frames_tied_with_the_target_share_its_rank():
  """A still scene: frames 1, 2 and 3 are the same picture. Looking for frame 2, the target
  ties with two other frames: put first one time in three, in the first two two times in
  three; a target tied with nothing is found as before."""
  database = np.array([[1.0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]])
  r = recall_at_k(database[[2]], database, np.array([2]), np.array([0]))
  assert r == pytest.approx({"recall@1": 1 / 3, "recall@2": 2 / 3, "recall@5": 1.0})
  r = recall_at_k(database[[4]], database, np.array([4]), np.array([3]))
  assert r == {"recall@1": 1.0, "recall@2": 1.0, "recall@5": 1.0}


def test_tied_frames_score_alike_however_the_queries_are_batched():
  """A matrix product need not round identical database rows alike: the tie rule must not
  depend on it. Batched or one query at a time, the same Recall@k (they differed before each
  distinct row was scored once)."""
  rng = np.random.default_rng(0)
  for _ in range(40):
    m, dim = int(rng.integers(8, 70)), int(rng.choice([64, 1152]))
    database = rng.standard_normal((m, dim)).astype(np.float32)
    a = int(rng.integers(1, m - 3))
    database[a:int(rng.integers(a + 2, m)) + 1] = database[a]  # a still scene
    targets = np.arange(1, m)
    queries = database[targets] + 0.5 * rng.standard_normal((m - 1, dim)).astype(np.float32)
    batched = recall_at_k(queries, database, targets, targets - 1)
    alone = [recall_at_k(queries[[i]], database, targets[[i]], targets[[i]] - 1)
             for i in range(m - 1)]
    assert batched == pytest.approx({k: np.mean([r[k] for r in alone]) for k in batched},
                                    abs=1e-12)


def test_retrieve_queries_with_the_prediction_and_skips_an_unusable_video():
  """The cope query is the stage-1 prediction of frame t, the baseline frame t−1 itself: with
  distinct frames and a perfect predictor, 100 % against chance (every candidate as far from
  frame t−1: a tie of 7). A retrieve that queried with the frames alone passed the driver test
  below."""
  from cope_jax.codec.errors import VideoError  # pylint: disable=import-outside-toplevel
  from cope_jax.infer.retrieval import retrieve  # pylint: disable=import-outside-toplevel
  frames, positions = np.eye(8), np.arange(1, 8)

  def embed(video):
    if video == "bad.mp4":
      raise VideoError(video, "not a readable video file")
    return {"frames": frames, "predicted": frames[positions], "positions": positions}
  res = retrieve(embed, ["a.mp4", "bad.mp4"])
  assert res["cope"]["recall@1"] == 1.0 and res["rgb_only"]["recall@1"] == pytest.approx(1 / 7)
  assert res["videos"] == 1 and res["skipped"] == [{"video": "bad.mp4",
                                                    "reason": "not a readable video file"}]


def test_embeddings_are_float32_means_of_a_bfloat16_model(tmp_path):
  """The paper recipe runs in bfloat16: its 729 tokens a frame summed in bfloat16 stop growing
  (a mean of ~3 came out 2.1). The embeddings are the tokens' float32 means."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  from types import SimpleNamespace  # pylint: disable=import-outside-toplevel
  from cope_jax.codec import synthetic_clips  # pylint: disable=import-outside-toplevel
  from cope_jax.infer.retrieval import Stage1Embedder  # pylint: disable=import-outside-toplevel
  video = str(tmp_path / "pan.mp4")
  synthetic_clips.write_clip(video, synthetic_clips.pan_frames(70, 64, 64), fps=30)
  rng = np.random.default_rng(0)
  tokens = (3 + rng.random((729, 8))).astype(ml_dtypes.bfloat16)
  embed = Stage1Embedder.__new__(Stage1Embedder)
  embed.task = SimpleNamespace(cfg=SimpleNamespace(vision=SimpleNamespace(image_size=28)),
                               config=SimpleNamespace(codec_size=64))
  embed.trained = embed.vision_params = None
  embed._vision = lambda _, pixels: np.broadcast_to(tokens, (len(pixels),) + tokens.shape)
  embed._predict = lambda _, prev, mv, res: prev
  out = embed(video)
  exact = tokens.astype(np.float64).mean(axis=0)
  for key in ("frames", "predicted"):
    assert out[key].dtype == np.float32
    np.testing.assert_allclose(out[key], np.broadcast_to(exact, out[key].shape), rtol=1e-6)


def test_retrieval_driver_on_a_stage1_workdir(tmp_path, capsys):
  r = subprocess.run([sys.executable, "-m", "cope_jax.train", "--config=configs/pretrain.py:tiny",
                      f"--workdir={tmp_path}", "--config.total_steps=2",
                      "--config.synthetic.videos=24"], capture_output=True, text=True,
                     timeout=600, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  data = json.loads((tmp_path / "train_config.json").read_text())["data_dir"]
  video = os.path.join(data, "synthetic", "videos", "00001.mp4")
  r = subprocess.run([sys.executable, "-m", "cope_jax.infer.retrieval", "--workdir", str(tmp_path),
                      "--videos", video, "--out", str(tmp_path / "r.json")], capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((tmp_path / "r.json").read_text())
  for who in ("cope", "rgb_only"):
    assert set(res[who]) == {"recall@1", "recall@2", "recall@5"}
    assert all(0 <= v <= 1 for v in res[who].values())
  assert res["rgb_only"]["recall@5"] <= 1 and res["videos"] == 1 and res["skipped"] == []
  # An unusable video is skipped and named; with none usable, one error line and exit status 2.
  # (in this process from here: the command's exit path is tested above)
  from cope_jax.infer.retrieval import main  # pylint: disable=import-outside-toplevel
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"not a video")
  assert main(["--workdir", str(tmp_path), "--videos", str(bad), video,
               "--out", str(tmp_path / "r2.json")]) == 0
  again = json.loads((tmp_path / "r2.json").read_text())
  assert again["videos"] == 1 and again["cope"] == res["cope"]
  assert [s["video"] for s in again["skipped"]] == [str(bad)]
  capsys.readouterr()
  assert str(bad) in _refusal(capsys, "--workdir", str(tmp_path), "--videos", str(bad))
  # A stage-1 workdir without a checkpoint: one error line too.
  (tmp_path / "untrained").mkdir()
  (tmp_path / "untrained" / "train_config.json").write_text(
      (tmp_path / "train_config.json").read_text())
  assert "no readable checkpoint" in _refusal(capsys, "--workdir", str(tmp_path / "untrained"),
                                              "--videos", video)


def _refusal(capsys, *args) -> str:
  """The retrieval command's one stderr line for bad input (exit status 2)."""
  from cope_jax.infer.retrieval import main  # pylint: disable=import-outside-toplevel
  assert main(list(args)) == 2
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and not captured.out, captured
  return lines[0]


def test_retrieval_refuses_what_is_not_a_stage1_workdir(tmp_path, capsys):
  """A stage-2 or base-model workdir, a missing one, a file or a converted checkpoint: one error
  line saying what it got, before any model is built."""
  video = tmp_path / "a.mp4"
  video.write_bytes(b"")
  (tmp_path / "stage2").mkdir()
  (tmp_path / "stage2" / "train_config.json").write_text(json.dumps({"stage": "finetune"}))
  (tmp_path / "converted").mkdir()
  (tmp_path / "converted" / "config.json").write_text("{}")
  for workdir, got in ((tmp_path / "stage2", "a stage-2 or base-model (finetune) workdir"),
                       (tmp_path / "missing", "no such folder"),
                       (video, "not a folder"),
                       (tmp_path / "converted", "no train_config.json, not a training workdir")):
    line = _refusal(capsys, "--workdir", str(workdir), "--videos", str(video))
    assert line.startswith(f"error: --workdir {workdir}: {got}; retrieval needs a stage-1 "
                           "(pretrain) training workdir"), line


def test_retrieval_checks_its_output_path_before_any_work(tmp_path, capsys):
  # (a stage-1 config the model could not be built from: loading it would fail otherwise)
  (tmp_path / "train_config.json").write_text(json.dumps({"stage": "pretrain"}))
  video = str(tmp_path / "a.mp4")
  line = _refusal(capsys, "--workdir", str(tmp_path), "--videos", video,
                  "--out", str(tmp_path / "missing" / "r.json"))
  assert line == f"error: --out {tmp_path / 'missing' / 'r.json'}: its folder does not exist"
  line = _refusal(capsys, "--workdir", str(tmp_path), "--videos", video, "--out", str(tmp_path))
  assert line == f"error: --out {tmp_path} is a folder; name the results file"
  line = _refusal(capsys, "--workdir", str(tmp_path), "--videos", video, "--out", video)
  assert line == f"error: --out {video} is one of --videos: the results would overwrite it"
  assert sorted(os.listdir(tmp_path)) == ["train_config.json"]
