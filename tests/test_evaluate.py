"""Answer parsing and evaluate in every mode, on a briefly trained tiny model (the generate CLI:
test_generate_cli.py)."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from cope_jax.evaluate import evaluate, read_questions
from cope_jax.evaluate import main as evaluate_main
from cope_jax.infer.answers import parse_letter
from in_process import run_main


@pytest.mark.parametrize("text,letter", [
    ("(B)", "B"), ("The answer is C.", "C"), ("c", "C"), ("B. red", "B"), ("no letter at all", None),
    ("The answer is a dog.", None), ("Answer: D", "D"),
    ("D", "D"), ("A red square", "A"), ("Answer: (d)", "D"), ("E", None), ("  B)  ", "B"),
    ("I think it is B", "B"),
    # SPEC §5: the first standalone letter, even before a later "answer is"
    ("B is wrong, the answer is C", "B"), ("the answer is (c)", "C"), ("the answer is c", "C"),
    # a lower-case letter alone or named as the answer, in each of the capital's forms
    ("(b)", "B"), ("b.", "B"), ("b)", "B"), ("answer: c", "C"), ("the answer is: (c)", "C"),
    ("The answer is a dog", None), ("answer is c, since it moves", None), ("(b", None),
    # and with the punctuation a capital may have after it
    ("(b).", "B"), ("b,", "B"), ("d!", "D"), ("The answer is d!", "D"), ("(B).", "B"),
    ("answer: (c)!", "C"), ("b)!", "B"),
])
def test_parse_letter(text, letter):
  assert parse_letter(text, 4) == letter


@pytest.mark.parametrize("text,letter", [
    ("I think the answer is B.", "B"), ("I think it is J", "J"), ("I. left", "I"), ("(I)", "I"),
    ("I", "I"), ("The answer is I.", "I"), ("I'm not sure, but C", "C"), ("I'd say C", "C"),
    ("I’ll go with D", "D"), ("I've no idea: I", "I"),
])
def test_parse_letter_with_ten_options_reads_the_pronoun_i_as_no_letter(text, letter):
  assert parse_letter(text, 10) == letter


def test_evaluate_every_mode(tiny_workdir, tmp_path):
  workdir, synth = tiny_workdir
  tokens = {}
  for mode in ("cope", "keyframes", "dense", "cope_zero_delta"):
    out = tmp_path / f"{mode}.json"
    r = run_main("cope_jax.evaluate", "--workdir", str(workdir),
                 "--data", os.path.join(synth, "test.jsonl"), "--mode", mode, "--out",
                 str(out), "--limit", "3", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in ("accuracy", "n", "mode", "visual_tokens_mean", "families"):
      assert key in res
    assert res["mode"] == mode and res["n"] == 3 and 0 <= res["accuracy"] <= 1
    log = [json.loads(l) for l in open(tmp_path / f"{mode}.log.jsonl")]
    assert len(log) == 3 and all("predicted" in row for row in log)
    tokens[mode] = res["visual_tokens_mean"]
  # 8 s videos, K = 1: 1 keyframe (20 tokens at tiny scale) + 7 Δ-frames (10 each); dense: 64.
  assert tokens == {"cope": 90, "keyframes": 20, "dense": 64 * 20, "cope_zero_delta": 90}


def test_evaluate_cli_adaptive_fusion_counts_the_kept_delta_frames(tiny_workdir, tmp_path):
  from cope_jax.codec.extract import extract_primitives  # pylint: disable=import-outside-toplevel
  from cope_jax.codec.sampling import SamplingConfig  # pylint: disable=import-outside-toplevel
  workdir, synth = tiny_workdir
  questions = {}  # a question per video, the video's Δ-frames kept at --min-change 4
  for name in ("train.jsonl", "test.jsonl"):
    for q in map(json.loads, open(os.path.join(synth, name))):
      video = os.path.join(synth, q["video"])
      if video not in questions:
        kept = len(extract_primitives(video, size=64, sampling=SamplingConfig(min_change=4)).mv)
        questions[video] = ({**q, "video": video}, kept)
  with_skip = [qk for qk in questions.values() if qk[1] < 7][:2]
  without = [qk for qk in questions.values() if qk[1] == 7][:1]
  assert with_skip, "no synthetic video starts still: the test needs one"
  chosen = with_skip + without
  data = tmp_path / "q.jsonl"
  data.write_text("".join(json.dumps(q) + "\n" for q, _ in chosen))
  out = tmp_path / "adaptive.json"
  r = run_main("cope_jax.evaluate", "--workdir", str(workdir),
               "--data", str(data), "--mode", "cope", "--out", str(out), "--min-change",
               "4", "--quiet")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res["min_change"] == 4 and res["n"] == len(chosen)
  log = [json.loads(l) for l in open(tmp_path / "adaptive.log.jsonl")]
  # 1 keyframe (20 tokens at tiny scale) and the kept Δ-frames (10 each).
  assert [row["visual_tokens"] for row in log] == [20 + 10 * kept for _, kept in chosen]
  # Adaptive fusion is for the modes that read Δ-frames: refused elsewhere, before loading.
  r = run_main("cope_jax.evaluate", "--workdir", str(workdir),
               "--data", str(data), "--mode", "dense", "--out", str(tmp_path / "d.json"),
               "--min-change", "4")
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "min_change" in r.stderr


class _ScriptedModel:
  """Stands in for ``CoPE``: records each prompt and answers (or ranks options) from a script."""
  codec_size = 64

  def __init__(self, replies):
    self.replies, self.prompts = list(replies), []

  def video_inputs(self, video, mode, keyframes_per_gop, dense_frames, min_change):
    return video

  def ask(self, video, prompt, mode, keyframes_per_gop, max_new_tokens, inputs):
    self.prompts.append(prompt)
    return types.SimpleNamespace(text=self.replies.pop(0), visual_tokens=90, ttft_s=0.01)

  def rank_options(self, video, question, options, mode, keyframes_per_gop, inputs):
    self.prompts.append(question)
    best = self.replies.pop(0)
    return types.SimpleNamespace(log_likelihoods=[-1.0 - (i != best) for i in range(len(options))],
                                 best=best, visual_tokens=90)


QUESTIONS = [
    {"video": "a.mp4", "question": "In which direction does the camera pan?", "family": "camera_pan",
     "options": ["up", "left", "down", "the camera does not move"], "answer": "B",
     "open_answer": "left"},
    {"video": "a.mp4", "question": "What color is the square?", "family": "appearance",
     "options": ["red", "blue", "green", "cyan"], "answer": "C"},  # no open_answer: the option
    {"video": "b.mp4", "question": "How many times does it bounce?", "family": "bounces",
     "options": ["0", "1", "2", "3"], "answer": "A", "open_answer": "0"},
]


def test_evaluate_open_ended_asks_without_options_and_matches_the_right_option():
  model = _ScriptedModel(["Left.", "green", "1"])
  res = evaluate(model, QUESTIONS, "cope", answer_format="open", progress=False)
  assert model.prompts == [q["question"] for q in QUESTIONS]  # no options, no letter suffix
  assert res["answer_format"] == "open" and res["n"] == 3
  assert res["accuracy"] == pytest.approx(2 / 3)  # case and a final period aside; "1" != "0"
  assert {f: v["accuracy"] for f, v in res["families"].items()} == {
      "camera_pan": 1.0, "appearance": 1.0, "bounces": 0.0}


def test_a_question_without_a_family_counts_in_the_overall_accuracy_alone():
  untagged = [{k: v for k, v in q.items() if k != "family"} for q in QUESTIONS[:2]]
  res = evaluate(_ScriptedModel(["B", "A", "A"]), untagged + QUESTIONS[2:], "cope", progress=False)
  assert (res["n"], res["accuracy"], res["families"]) == (  # no "" family
      3, pytest.approx(2 / 3), {"bounces": {"accuracy": 1.0, "n": 1}})


def test_evaluate_ranked_options_asks_without_options_and_scores_the_best_option():
  model = _ScriptedModel([1, 0, 0])
  res = evaluate(model, QUESTIONS, "cope", answer_format="ranked", progress=False)
  assert model.prompts == [q["question"] for q in QUESTIONS]
  assert res["answer_format"] == "ranked" and res["accuracy"] == pytest.approx(2 / 3)
  assert res["ttft_median_s"] is None and res["visual_tokens_mean"] == 90  # nothing generated


def test_evaluate_shares_extracted_frames_between_calls():
  calls = []

  class Counting(_ScriptedModel):
    def video_inputs(self, video, mode, keyframes_per_gop, dense_frames, min_change):
      calls.append((video, mode))
      return video

  frames = {}
  for mode, fmt in (("cope", "letter"), ("cope_zero_delta", "open"), ("dense", "letter")):
    evaluate(Counting(["A"] * 3), QUESTIONS, mode, answer_format=fmt, progress=False,
             frames=frames)
  # two videos, once per kind of frames (cope_zero_delta reads cope's)
  assert calls == [("a.mp4", "cope"), ("b.mp4", "cope"), ("a.mp4", "dense"), ("b.mp4", "dense")]
  calls.clear()
  evaluate(Counting(["A"] * 3), QUESTIONS, "cope", progress=False)  # no store: once per video
  assert calls == [("a.mp4", "cope"), ("b.mp4", "cope")]


def test_evaluate_letter_format_scores_the_parsed_letter():
  model = _ScriptedModel(["B", "The answer is A.", "A"])
  res = evaluate(model, QUESTIONS, "cope", progress=False)
  assert all("\nA. " in p and p.startswith(q["question"]) for p, q in zip(model.prompts, QUESTIONS))
  assert res["answer_format"] == "letter" and res["accuracy"] == pytest.approx(2 / 3)
  assert all(p.endswith("\nAnswer with the option's letter from the given choices directly.")
             for p in model.prompts)
  bare = _ScriptedModel(["B"])
  evaluate(bare, QUESTIONS[:1], "cope", progress=False, post_prompt="")
  assert bare.prompts == ["In which direction does the camera pan?\nA. up\nB. left\nC. down\n"
                          "D. the camera does not move"]
  with pytest.raises(ValueError, match="answer_format"):
    evaluate(model, QUESTIONS, "cope", answer_format="options")


def test_evaluate_skips_a_question_whose_prompt_is_too_long_and_goes_on():
  """Only the long question is skipped: the same video's shorter one may still fit."""
  from cope_jax.infer import PromptTooLong  # pylint: disable=import-outside-toplevel

  class TooLongForA(_ScriptedModel):
    def ask(self, video, prompt, mode, keyframes_per_gop, max_new_tokens, inputs):
      if video == "a.mp4" and "direction" in prompt:
        raise PromptTooLong("40000 prompt positions exceed the model's 32768")
      return super().ask(video, prompt, mode, keyframes_per_gop, max_new_tokens, inputs)

  res = evaluate(TooLongForA(["A", "A"]), QUESTIONS, "cope", progress=False)
  assert res["n"] == 2 and res["accuracy"] == 0.5  # a.mp4's colour (C) and b.mp4's (A), both A
  assert res["skipped"] == [{"video": "a.mp4", "questions": 1,
                             "reason": "40000 prompt positions exceed the model's 32768"}]


def test_evaluate_cli_with_no_readable_video_says_so(tiny_workdir, tmp_path):
  workdir, _ = tiny_workdir
  (tmp_path / "bad.mp4").write_text("not a video")
  data = tmp_path / "q.jsonl"
  data.write_text(json.dumps({"video": "bad.mp4", "question": "Q?", "options": ["a", "b"],
                              "answer": "A"}) + "\n")
  r = subprocess.run([sys.executable, "-m", "cope_jax.evaluate", "--workdir", str(workdir),
                      "--data", str(data), "--out", str(tmp_path / "r.json"), "--quiet"],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 2 and "error: cope: no question could be asked (1 videos skipped" in r.stderr
  res = json.loads((tmp_path / "r.json").read_text())  # written, with the reason
  assert res["n"] == 0 and res["skipped"][0]["video"] == str(tmp_path / "bad.mp4")


def test_evaluate_cli_lists_the_videos_it_skipped(tiny_workdir, tmp_path):
  workdir, synth = tiny_workdir
  (tmp_path / "bad.mp4").write_text("not a video")
  data = tmp_path / "q.jsonl"
  good = os.path.join(synth, "videos", "00000.mp4")
  data.write_text("".join(json.dumps({"video": v, "question": "Q?", "options": ["a", "b"],
                                      "answer": "A"}) + "\n" for v in ("bad.mp4", good)))
  r = run_main("cope_jax.evaluate", "--workdir", str(workdir),
               "--data", str(data), "--out", str(tmp_path / "r.json"), "--quiet")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "skipped 1 videos (1 questions)" in r.stderr
  assert f"  {tmp_path / 'bad.mp4'}: not a readable video file" in r.stderr
  assert "accuracy" in r.stdout and "on 1 questions" in r.stdout


def test_evaluate_cli_refuses_bad_sampling_flags_before_loading(tmp_path):
  for flag, value, named in (("--keyframes-per-gop", "0", "keyframes_per_gop"),
                             ("--keyframes-per-gop", "31", "keyframes_per_gop"),
                             ("--min-change", "-1", "min_change"),
                             ("--dense-frames", "0", "--dense-frames"),
                             ("--limit", "0", "--limit")):
    mode = "dense" if flag == "--dense-frames" else "cope"
    r = run_main("cope_jax.evaluate", "--workdir",
                 str(tmp_path / "no_model"), "--data", str(tmp_path / "q.jsonl"),
                 "--out", str(tmp_path / "r.json"), "--mode", mode, flag, value)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and named in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("cli,flags,named", [
    ("evaluate", ("--mode", "dense", "--keyframes-per-gop", "2"),
     "--keyframes-per-gop sets the keyframes per GOP of the cope, keyframes and cope_zero_delta "
     "modes; --mode dense samples --dense-frames frames and ignores it"),
    ("evaluate", ("--dense-frames", "32"), "--dense-frames applies to --mode dense; cope samples"),
    ("generate", ("--mode", "keyframes", "--dense-frames", "32"),
     "--dense-frames applies to --mode dense; keyframes samples"),
    ("generate", ("--mode", "dense", "--keyframes-per-gop", "1"), "--keyframes-per-gop sets"),
    # ignored as said, not then refused as out of range ("keyframes_per_gop must be >= 1")
    ("generate", ("--mode", "dense", "--keyframes-per-gop", "0"), "--keyframes-per-gop sets"),
    ("evaluate", ("--open-ended", "--post-prompt", "Answer briefly."),
     "--post-prompt follows the lettered options, which --open-ended and --rank-options leave "
     "out: ignored"),
    ("evaluate", ("--rank-options", "--post-prompt", ""), "--post-prompt follows"),
])
def test_a_flag_the_mode_would_ignore_is_said(tmp_path, cli, flags, named):
  """Silently unused, each read as a setting of the run (a dense evaluation "at K = 2"); refused,
  a harness passing one set of flags to every mode would stop: a warning, then the run (here
  stopped by its missing model)."""
  where = (("--data", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "r.json"))
           if cli == "evaluate" else ("--video", "v.mp4", "--question", "What moves?"))
  r = run_main(f"cope_jax.{cli}", "--workdir", str(tmp_path / "m"), *where, *flags)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and lines[0].startswith(f"warning: {named}"), r.stderr
  assert len(lines) == 2 and lines[1].startswith("error: "), r.stderr
  assert "keyframes_per_gop" not in lines[1], r.stderr


def test_evaluate_asks_each_video_s_questions_together_and_logs_them_by_id(tmp_path):
  """Interleaved videos were extracted again at each change; the log's rows of lines without an
  id could not be told apart; an interrupted run left a log of part of its questions."""
  calls = []

  class Counting(_ScriptedModel):
    def video_inputs(self, video, mode, keyframes_per_gop, dense_frames, min_change):
      calls.append(video)
      return video

  path = tmp_path / "q.jsonl"
  path.write_text("".join(json.dumps({k: v for k, v in q.items() if k != "open_answer"}) + "\n"
                          for q in (QUESTIONS[0], QUESTIONS[2], QUESTIONS[1])))
  questions = read_questions(str(path))
  log = tmp_path / "r.log.jsonl"
  evaluate(Counting(["B", "A", "C"]), questions, "cope", progress=False, log_path=str(log))
  assert [os.path.basename(v) for v in calls] == ["a.mp4", "b.mp4"]
  rows = [json.loads(l) for l in log.read_text().splitlines()]
  assert [(r["id"], r["correct"]) for r in rows] == [("1", True), ("3", False), ("2", False)]
  log.unlink()
  with pytest.raises(IndexError):  # (the scripted model runs out of replies at the 3rd)
    evaluate(Counting(["B", "A"]), questions, "cope", progress=False, log_path=str(log))
  assert sorted(os.listdir(tmp_path)) == ["q.jsonl"]


def test_evaluate_cli_names_a_bad_data_line_and_a_folder_as_out(tmp_path, capsys):
  (tmp_path / "q.jsonl").write_text("not json\n")
  (tmp_path / "list.jsonl").write_text("[1, 2]\n")
  good = {"video": "a.mp4", "question": "Q?", "options": ["a", "b"], "answer": "A"}
  (tmp_path / "z.jsonl").write_text(json.dumps({**good, "answer": "Z"}) + "\n")
  (tmp_path / "str.jsonl").write_text(json.dumps(good) + "\n"
                                      + json.dumps({**good, "options": "ab"}))
  (tmp_path / "empty.jsonl").write_text("\n")
  (tmp_path / "oa.jsonl").write_text(json.dumps({**good, "open_answer": 3}) + "\n")
  (tmp_path / "vid.jsonl").write_text(json.dumps(good) + "\n")
  # a byte-order mark (Windows editors write one) is read past: the line's own error shows
  (tmp_path / "bom.jsonl").write_text(json.dumps({**good, "answer": "Z"}) + "\n",
                                      encoding="utf-8-sig")
  (tmp_path / "d.log.jsonl").mkdir()
  (tmp_path / "qq.log.jsonl").write_text(json.dumps(good) + "\n")
  # (the MCQ lines are read as data build reads them: one checker)
  for data, out, message in (("q.jsonl", "r.json", f"{tmp_path / 'q.jsonl'}:1: not a JSON line"),
                             ("empty.jsonl", "r.json", "empty.jsonl: no questions"),
                             ("q.jsonl", "d.json", "--out's per-question log "
                                                   f"{tmp_path / 'd.log.jsonl'} is a folder"),
                             ("qq.log.jsonl", "qq.json", "would overwrite --data"),
                             ("list.jsonl", "r.json", "list.jsonl:1: not a JSON object"),
                             ("z.jsonl", "r.json", "z.jsonl:1: answer 'Z' is not one of"),
                             ("str.jsonl", "r.json", "str.jsonl:2: options must be a list"),
                             ("oa.jsonl", "r.json", "oa.jsonl:1: open_answer (the open-ended "
                                                    "answer) must be a non-empty string"),
                             ("vid.jsonl", "a.mp4", "would overwrite a video of --data"),
                             ("bom.jsonl", "r.json", "bom.jsonl:1: answer 'Z' is not one of"),
                             ("q.jsonl", ".", "is a folder"),
                             # (found out only once every question was asked: a traceback)
                             ("vid.jsonl", "/proc/r.json", "--out /proc/r.json: cannot write in "
                                                           "its folder /proc")):
    # (in this process: the command's own exit path is tested by the other CLI tests)
    rc = evaluate_main(["--workdir", str(tmp_path / "no_model"), "--data", str(tmp_path / data),
                        "--out", str(tmp_path / out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
  assert (tmp_path / "qq.log.jsonl").read_text() == json.dumps(good) + "\n"
  assert not {"r.json", "d.json", "qq.json", "r.log.jsonl", "a.mp4"} & set(os.listdir(tmp_path))


def test_evaluate_cli_open_ended_and_ranked_options(tiny_workdir, tmp_path):
  workdir, synth = tiny_workdir
  out = tmp_path / "open.json"
  r = run_main("cope_jax.evaluate", "--workdir", str(workdir),
               "--data", os.path.join(synth, "test.jsonl"), "--out", str(out),
               "--limit", "3", "--quiet", "--open-ended")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "(open-ended)" in r.stdout
  res = json.loads(out.read_text())
  assert res["answer_format"] == "open" and res["n"] == 3
  questions = [json.loads(l) for l in open(os.path.join(synth, "test.jsonl"))][:3]
  log = [json.loads(l) for l in open(tmp_path / "open.log.jsonl")]
  # the right option's text (test.jsonl keeps only the required keys: no open_answer)
  assert [row["answer"] for row in log] == [q["options"]["ABCD".index(q["answer"])].lower()
                                            for q in questions]

  out = tmp_path / "ranked.json"
  r = run_main("cope_jax.evaluate", "--workdir", str(workdir),
               "--data", os.path.join(synth, "test.jsonl"), "--out", str(out),
               "--limit", "3", "--quiet", "--rank-options")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "(options ranked)" in r.stdout and "TTFT" not in r.stdout
  res = json.loads(out.read_text())
  assert res["answer_format"] == "ranked" and res["n"] == 3 and res["ttft_median_s"] is None
  log = [json.loads(l) for l in open(tmp_path / "ranked.log.jsonl")]
  for row, q in zip(log, questions):  # the predicted letter is the most likely option's
    assert len(row["output"]) == len(q["options"]) and all(x < 0 for x in row["output"])
    assert row["predicted"] == "ABCD"[int(np.argmax(row["output"]))]
    assert row["answer"] == q["answer"]
  r = run_main("cope_jax.evaluate", "--workdir", str(workdir),
               "--data", os.path.join(synth, "test.jsonl"), "--out", str(out),
               "--open-ended", "--rank-options")
  assert r.returncode == 2 and "not allowed with" in r.stderr


def test_open_ended_answers_have_room_for_the_longest_right_answer():
  """Cut at 16 new tokens, a right answer of 31 could never match exactly."""
  class Tokenizer:
    def encode(self, text, add_special_tokens=False):
      return types.SimpleNamespace(ids=text.split())

  class Recording(_ScriptedModel):
    tok = Tokenizer()

    def ask(self, video, prompt, mode, keyframes_per_gop, max_new_tokens, inputs):
      self.limits = getattr(self, "limits", []) + [max_new_tokens]
      return super().ask(video, prompt, mode, keyframes_per_gop, max_new_tokens, inputs)

  sentence = " ".join(["word"] * 31)
  questions = [{**QUESTIONS[0], "open_answer": sentence}, QUESTIONS[1]]
  model = Recording([sentence, "green"])
  r = evaluate(model, questions, "cope", progress=False, answer_format="open")
  assert model.limits == [35, 35] and r["accuracy"] == 1.0
  model = Recording(["left"])
  evaluate(model, [QUESTIONS[0]], "cope", progress=False, answer_format="open")
  assert model.limits == [16]  # (short answers: as before)
