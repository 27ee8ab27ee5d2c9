"""The README's main command, in its quick form: the whole chain runs, every loss falls,
results.json is complete, and a second run resumes instead of starting over."""

import json
import subprocess
import sys

import pytest

MODES = {"dense": 160, "keyframes": 20, "keyframes_stage2": 20, "cope": 90, "cope_zero_delta": 90}


def _demo(workdir):
  r = subprocess.run([sys.executable, "-m", "cope_jax.demo", "--workdir", str(workdir),
                      "--quick"], capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout, json.loads((workdir / "results.json").read_text())


# The heaviest test: it runs on the worker of the two-process tests, one after another, as it
# would starve their CPU collectives (seen once: a two-process run timed out beside it).
@pytest.mark.xdist_group("processes")
def test_demo_quick(tmp_path):
  stdout, results = _demo(tmp_path)
  assert results["stages_run"] == ["codec", "data", "training", "evaluation", "open_ended",
                                   "ranked_options", "retrieval", "report"]
  codec = results["codec"]
  assert codec["reconstruction_exact"] is True
  assert codec["keyframes"] == 1 and codec["delta_frames"] == 3
  assert codec["mean_abs_residual"] < 0.5 * codec["mean_abs_frame_difference"]
  assert codec["tokens_64s"]["cope_tokens"] == 2240

  data = results["data"]
  assert data["videos"] == results["settings"]["videos"] and data["splits"]["test"] >= 1
  for stage in ("base", "stage1", "stage2"):
    t = results["training"][stage]
    assert t["steps"] == results["settings"][f"{stage}_steps"], stage
    assert t["loss_fell"] is True, (stage, t["first"], t["last"])
  n_test = results["evaluation"]["cope"]["n"]
  assert n_test > 0
  for mode, tokens in MODES.items():
    r = results["evaluation"][mode]
    assert r["n"] == n_test and not r["skipped"], mode
    assert r["visual_tokens_mean"] == tokens, mode
    assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["motion_accuracy"] <= 1.0
    assert r["ttft_median_s"] > 0
    assert "appearance" in r["families"] and sum(f["n"] for f in r["families"].values()) == n_test
  for probe, answer_format in (("open_ended", "open"), ("ranked_options", "ranked")):
    assert set(results[probe]) == set(results["evaluation"])
    for name, r in results[probe].items():
      assert r["answer_format"] == answer_format and r["n"] == n_test and not r["skipped"], name
      assert r["visual_tokens_mean"] == MODES[name], name
      assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["motion_accuracy"] <= 1.0
  ret = results["retrieval"]
  assert ret["videos"] == data["splits"]["test"]
  assert set(ret["cope"]) == set(ret["rgb_only"]) == {"recall@1", "recall@2", "recall@5"}
  assert set(results["targets"]) == {"motion_cope_vs_keyframes", "motion_zero_delta_vs_cope",
                                     "visual_tokens", "ttft", "retrieval_recall@1"}
  assert all(isinstance(t["met"], bool) for t in results["targets"].values())
  tokens = results["targets"]["visual_tokens"]  # quick: 8 dense frames, so 90 of 160 is not ≤ 25 %
  assert tokens["ratio"] == 90 / 160 and tokens["met"] is False
  for plot in results["plots"].values():
    with open(plot, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "cope_zero_delta" in stdout and "target " in stdout and "open-ended probe" in stdout
  assert "options-ranked probe" in stdout

  # Re-running resumes: nothing is trained or evaluated again, the results are the same.
  stdout2, again = _demo(tmp_path)
  assert "] training" not in stdout2 and "[evaluate]" not in stdout2
  assert again["evaluation"] == results["evaluation"]
  assert again["open_ended"] == results["open_ended"]
  assert again["ranked_options"] == results["ranked_options"]
  assert again["elapsed_s_all_runs"] == pytest.approx(
      results["elapsed_s_all_runs"] + again["elapsed_s"], abs=0.15)  # each rounded to 0.1 s
  assert "with the earlier runs it resumed" in stdout2
  assert again["training"]["stage2"]["last"] == results["training"]["stage2"]["last"]

  # The base model's workdir (RGB frames only, no Δ-encoder) answers in dense mode; the modes
  # that need a Δ-encoder are refused with one line.
  base = str(tmp_path / "base")
  r = subprocess.run([sys.executable, "-m", "cope_jax.generate", "--workdir", base, "--video",
                      str(tmp_path / "pan.mp4"), "--question", "What moves?", "--mode", "dense",
                      "--max-new-tokens", "2", "--json"], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout)["visual_tokens"] > 0
  r = subprocess.run([sys.executable, "-m", "cope_jax.evaluate", "--workdir", base, "--data",
                      str(tmp_path / "data" / "synthetic" / "test.jsonl"), "--mode", "cope",
                      "--out", str(tmp_path / "base_cope.json")], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "RGB frames only" in r.stderr

  # The same workdir without --quick is refused: its data, checkpoints and evaluations are the
  # quick run's and must not show up as the full demo's.
  r = subprocess.run([sys.executable, "-m", "cope_jax.demo", "--workdir", str(tmp_path)],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "--quick" in r.stderr
