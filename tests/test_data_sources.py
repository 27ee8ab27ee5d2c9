"""Annotation sources and builds: LLaVA-Video JSON and MCQ JSONL (checked line by line), bad
videos skipped and reported, a build with nothing to write."""

import itertools
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cope_jax.codec.errors import ConfigError
from cope_jax.codec.sampling import SamplingConfig
from cope_jax.data import sources
from cope_jax.data.build import build, load_items, shard_dir
from cope_jax.data.pipeline import PipelineConfig, finetune_dataset
from cope_jax.data.primitive_cache import ExtractSettings
from cope_jax.evaluate import read_questions


def test_bad_videos_are_skipped_and_reported(tmp_path, pan_clip):
  videos = tmp_path / "videos"
  videos.mkdir()
  shutil.copy(pan_clip, videos / "good.mp4")
  (videos / "empty.mp4").write_bytes(b"")
  (videos / "text.mp4").write_text("not a video")
  lines = [{"video": f"videos/{n}", "question": "Q?", "options": ["a", "b", "c", "d"],
            "answer": "B"} for n in ("good.mp4", "empty.mp4", "text.mp4", "missing.mp4")]
  mcq = tmp_path / "q.jsonl"
  mcq.write_text("".join(json.dumps(x) + "\n" for x in lines))
  r = subprocess.run([sys.executable, "-m", "cope_jax.data", "build", "--stage", "eval",
                      "--source", "mcq", "--annotations", str(mcq), "--out", str(tmp_path / "o"),
                      "--size", "64", "--workers", "2"], capture_output=True, timeout=300)
  assert r.returncode == 0, r.stderr  # (bytes: text mode reads a bar's "\r" as a line break)
  assert b"\r" not in r.stderr  # progress bars on a terminal only: through a pipe they garbled it
  report = json.loads((tmp_path / "o" / "report.json").read_text())
  assert report["written"] == 1
  skipped = {os.path.basename(s["video"]): s["reason"] for s in report["skipped"]}
  assert set(skipped) == {"empty.mp4", "text.mp4", "missing.mp4"}
  assert "empty" in skipped["empty.mp4"] and "no such file" in skipped["missing.mp4"]
  assert {"written", "skipped", "bytes", "video_seconds"} <= set(report)


@pytest.mark.parametrize("entries,named", [
    ({"id": "x1", "video": "clip.mp4"}, "expected a JSON list of entries, found a dict"),
    (["clip.mp4"], "ann.json: entry 1 (str)"),
    ([{"id": "x1", "video": "clip.mp4", "conversations": [{"from": "system", "value": "hi"}]}],
     "ann.json: entry 1 (x1)"),
    ([{"id": "x2", "video": "clip.mp4", "conversations": [{"from": "gpt", "value": "<image>"}]}],
     "ann.json: entry 1 (x2)"),
    ([{"id": "x3", "video": "clip.mp4", "conversations": []}], "ann.json: entry 1 (x3)"),
    ([{"id": "x4", "video": 5, "conversations": [{"from": "human", "value": "<image>"}]}],
     "ann.json: entry 1 (x4): not a {video, conversations} object with human/gpt "
     "turns (TypeError: video is 5"),
    ([{"id": "x5", "video": "clip.mp4", "conversations": [{"from": "human", "value": "<image>"},
                                                           {"from": "gpt", "value": None}]}],
     "ann.json: entry 1 (x5): not a {video, conversations} object with human/gpt "
     "turns (TypeError: a turn's value is not text"),
    # no answer (a step that trains nothing), an empty one (trains saying nothing), two in a row
    ([{"id": "x6", "video": "clip.mp4", "conversations": [{"from": "human", "value": "<image>"}]}],
     "ann.json: entry 1 (x6): not a {video, conversations} object with human/gpt "
     "turns (ValueError: turns that are not human, gpt, human, gpt, … ending with gpt"),
    ([{"id": "x7", "video": "clip.mp4", "conversations": [{"from": "human", "value": "<image>"},
                                                           {"from": "gpt", "value": " "}]}],
     "ann.json: entry 1 (x7): not a {video, conversations} object with human/gpt "
     "turns (ValueError: an empty answer"),
    ([{"id": "x8", "video": "clip.mp4", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"},
        {"from": "gpt", "value": "b"}]}], "ann.json: entry 1 (x8)"),
])
def test_llava_video_annotations_malformed(tmp_path, entries, named):
  """(Also: a conversation opening with the assistant, or no turns; JSON Lines name the line.)"""
  ann = tmp_path / "ann.json"
  ann.write_text(json.dumps(entries))
  with pytest.raises(ValueError, match=re.escape(named)):
    load_items("llava_video", str(tmp_path), str(ann), str(tmp_path), 0, 0, 64, 1, False)
  if isinstance(entries, list) and isinstance(entries[0], dict):
    good = {"video": "a", "conversations": [{"from": r, "value": "a"} for r in ("human", "gpt")]}
    ann.write_text("\n\n".join(json.dumps(e) for e in [good, good] + entries) + "\n")
    with pytest.raises(ValueError, match=re.escape(named.replace(": entry 1", ":5"))):
      load_items("llava_video", str(tmp_path), str(ann), str(tmp_path), 0, 0, 64, 1, False)


def test_llava_video_annotations(tmp_path, pan_clip, monkeypatch):
  """Entries naming the same video become one item (decoded and stored once) with one training
  example per entry; only assistant turns carry loss."""
  shutil.copy(pan_clip, tmp_path / "clip.mp4")
  ann, more = tmp_path / "ann.json", tmp_path / "more.jsonl"
  ann.write_text(json.dumps([
      {"id": "x1", "video": "clip.mp4", "conversations": [
          {"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "A pan."},
          {"from": "human", "value": "Which way?"}, {"from": "gpt", "value": "Right."}]}]))
  # the same video written another way, in the chat roles other datasets use, in a second file
  # of JSON Lines (LLaVA-Video-178K gives a bucket's kinds of entry in files of their own; of
  # several --annotations only the last was read)
  more.write_text(json.dumps({"id": "x2", "video": "./clip.mp4", "conversations": [
      {"from": "user", "value": "<image>\nDescribe it."},
      {"from": "assistant", "value": "Grass.\u2028"}]}, ensure_ascii=False) + "\n\n")
  items = load_items("llava_video", str(tmp_path), [str(ann), str(more)], str(tmp_path), 0, 0,
                     64, 1, False)
  assert len(sources.read_llava_video(ann, str(tmp_path))) == 1  # (a pathlib path)
  # a relative --videos: the paths stay absolute (shards and reports named them relative to
  # the folder the build ran in)
  monkeypatch.chdir(tmp_path)
  assert [i.video for i in sources.read_llava_video(str(ann), ".")] == [str(tmp_path / "clip.mp4")]
  assert len(items) == 1 and len(items[0].conversations) == 2
  assert items[0].conversations[0][0] == ("user", "<image>\nWhat happens?")
  # (U+2028 is text inside a JSON string, not the end of a JSON line)
  assert items[0].conversations[1] == [("user", "<image>\nDescribe it."),
                                       ("assistant", "Grass.\u2028")]
  report = build("finetune", items, str(tmp_path / "o"), ExtractSettings(64, SamplingConfig()),
                 workers=1, progress=False)
  assert report["written"] == 1 and report["records"] == {"train": 1}
  tok_path = tmp_path / "tok.json"
  from cope_jax.data.tokenizer import train_small_tokenizer  # pylint: disable=import-outside-toplevel
  train_small_tokenizer(["What happens? A pan. Which way? Right. Describe it. Grass."]).save(
      str(tok_path))
  cfg = PipelineConfig(shards=shard_dir(str(tmp_path / "o"), "finetune"), batch_size=1,
                       image_size=64, tokenizer=str(tok_path), max_delta_frames=3)
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  tok = Tokenizer.from_file(str(tok_path))
  learned = set()
  for batch in itertools.islice(iter(finetune_dataset(cfg)), 2):
    learned.add(tok.decode(batch["input_ids"][0][batch["loss_mask"][0]].tolist(),
                           skip_special_tokens=False))
  # both conversations, their assistant turns and nothing else
  assert learned == {"A pan.<|im_end|>Right.<|im_end|>", "Grass.\u2028<|im_end|>"}

@pytest.mark.parametrize("line,named", [
    ({"answer": ""}, "answer ''"), ({"answer": "AB"}, "answer 'AB'"), ({"answer": 1}, "answer 1"),
    ({"answer": "E"}, "option letters ABCD"), ({"options": "abcd"}, "options must be a list"),
    ({"options": ["a"], "answer": "A"}, "options must be a list of 2"),
    ({"options": [str(i) for i in range(11)]}, "options must be a list of 2 to 10"),
    # a shard split's name, and a family accuracies are grouped by (TFDS and sorted() failed)
    ({"split": None}, "q.jsonl:1: split must be a name like train or test, got None"),
    ({"split": 5}, "split must be a name"), ({"split": ""}, "got ''"),
    ({"split": "my split"}, "got 'my split'"), ({"family": 5}, "q.jsonl:1: family must be a string"),
    # (TFDS: a name without a letter or digit failed after every video was extracted; "all" was
    # written, then read back as every split together — a RecursionError)
    ({"split": "__"}, "got '__'"), ({"split": "all"}, "got 'all'"),
])
def test_mcq_lines_are_checked(tmp_path, line, named):
  path = tmp_path / "q.jsonl"
  path.write_text(json.dumps({"video": "a.mp4", "question": "Q?", "options": ["a", "b", "c", "d"],
                              "answer": "B", **line}) + "\n")
  with pytest.raises(ValueError, match=re.escape(named)):
    sources.read_mcq(str(path))


def test_a_question_without_an_id_takes_its_line_number_as_evaluation_does(tmp_path):
  """A null id was "None" in the eval shards (every such line one id), the line number in
  evaluate's log: one question, two ids."""
  path = tmp_path / "q.jsonl"
  line = {"video": "a.mp4", "question": "Q?", "options": ["a", "b"], "answer": "B"}
  path.write_text("".join(json.dumps({**line, **extra}) + "\n"
                          for extra in ({"id": None}, {}, {"id": 7}, {"id": "x"})))
  item, = sources.read_mcq(str(path))
  assert [q["id"] for q in item.questions] == ["1", "2", "7", "x"]
  assert [q["id"] for q in read_questions(str(path))] == ["1", "2", 7, "x"]


def test_a_video_in_two_splits_is_warned_of(tmp_path, capsys):
  path = tmp_path / "q.jsonl"
  line = {"video": "a.mp4", "question": "Q?", "options": ["a", "b"], "answer": "B"}
  path.write_text("".join(json.dumps({**line, **extra}) + "\n" for extra in (
      {"split": "train"}, {"split": "test"}, {"video": "b.mp4", "split": "test"})))
  assert len(sources.read_mcq(str(path))) == 3
  assert capsys.readouterr().err == (
      f"warning: {path}: 1 video(s) in more than one split (first: {tmp_path / 'a.mp4'}, in "
      "train, test): what a model learns of a video in one split answers its questions in "
      "another\n")
  path.write_text(json.dumps(line) + "\n")
  sources.read_mcq(str(path))
  assert capsys.readouterr().err == ""


def test_a_build_with_nothing_to_write_keeps_the_previous_shards(tmp_path, pan_clip):
  shutil.copy(pan_clip, tmp_path / "good.mp4")
  def items(video):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"video": video, "question": "Q?", "options": ["a", "b"],
                                "answer": "B"}) + "\n")
    return sources.read_mcq(str(path))
  settings = ExtractSettings(64, SamplingConfig())
  build("eval", items("good.mp4"), str(tmp_path / "o"), settings, workers=1, progress=False)
  before = sorted(os.listdir(shard_dir(str(tmp_path / "o"), "eval")))
  with pytest.raises(ConfigError, match="no eval record to write from 0 readable of 1 videos "
                                        r"\(1 skipped, the first: .*missing.mp4: no such file"):
    build("eval", items("missing.mp4"), str(tmp_path / "o"), settings, workers=1,
          progress=False)
  assert sorted(os.listdir(shard_dir(str(tmp_path / "o"), "eval"))) == before
  # a first build that writes nothing leaves no empty folder behind: no --out, no cache
  with pytest.raises(ConfigError, match="no eval record"):
    build("eval", items("missing.mp4"), str(tmp_path / "fresh"), settings, workers=1,
          progress=False)
  assert not (tmp_path / "fresh").exists()
  r = subprocess.run([sys.executable, "-m", "cope_jax.data", "build", "--stage", "eval",
                      "--source", "mcq", "--annotations", str(tmp_path / "q.jsonl"), "--out",
                      str(tmp_path / "o"), "--size", "64", "--quiet"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith("error: no eval record"), r.stderr[-2000:]
  assert len(r.stderr.strip().splitlines()) == 1


def test_a_build_that_fails_after_its_shards_keeps_the_previous_shards(tmp_path, pan_clip,
                                                                      monkeypatch):
  """The sequence index is written with the shards: a failure there puts the previous build
  back, not shards without their index."""
  from cope_jax.data import build as build_module  # pylint: disable=import-outside-toplevel
  shutil.copy(pan_clip, tmp_path / "good.mp4")
  path = tmp_path / "q.jsonl"
  path.write_text(json.dumps({"video": "good.mp4", "question": "Q?", "options": ["a", "b"],
                              "answer": "B"}) + "\n")
  settings = ExtractSettings(64, SamplingConfig())
  out = str(tmp_path / "o")
  build("finetune", sources.read_mcq(str(path)), out, settings, workers=1, progress=False)
  before = sorted(os.listdir(shard_dir(out, "finetune")))
  assert "sequence_index.json" in before

  def broken(conversation, duration_s, times):
    raise RuntimeError("disk gone")

  monkeypatch.setattr(build_module, "example_characters", broken)
  with pytest.raises(RuntimeError, match="disk gone"):
    build("finetune", sources.read_mcq(str(path)), out, settings, workers=1, progress=False)
  assert sorted(os.listdir(shard_dir(out, "finetune"))) == before
  assert not os.path.exists(shard_dir(out, "finetune") + ".previous")


def test_mcq_conversations_per_video(tmp_path, pan_clip):
  """``conversations="video"``: one multi-turn conversation per video holding each question
  once, in a seeded order; the default keeps one single-turn conversation per question."""
  lines = [{"video": pan_clip, "question": f"Q{i}?", "options": ["a", "b"], "answer": "AB"[i % 2]}
           for i in range(5)]
  path = tmp_path / "q.jsonl"
  path.write_text("\n".join(json.dumps(l) for l in lines))
  single = sources.read_mcq(str(path))
  assert len(single) == 1 and len(single[0].conversations) == 5
  per_video = sources.read_mcq(str(path), "video", seed=3)
  turns = per_video[0].conversations
  assert len(turns) == 1 and len(turns[0]) == 10
  asked = [t[1].split("\n")[0] for t in turns[0][::2]]
  assert sorted(asked) == [f"Q{i}?" for i in range(5)]
  for (_, q), (role, a) in zip(turns[0][::2], turns[0][1::2]):
    assert role == "assistant" and a == "AB"[int(q[1]) % 2]
  assert per_video[0].conversations == sources.read_mcq(str(path), "video", seed=3)[0].conversations
  with pytest.raises(ValueError, match="conversations"):
    sources.read_mcq(str(path), "dialogue")


@pytest.mark.parametrize("flags,message", [
    (["--size", "100"], "multiple of 16"), (["--quantizer", "50"], "quantizer"),
    (["--fusion", "7"], "fusion"),
    # stage 1's records are Δ-frames: refused once every video was extracted
    (["--stage", "pretrain", "--keyframes-per-gop", "8"],
     "--stage pretrain writes one record per Δ-frame, and --keyframes-per-gop 8 makes every one "
     "of the 8 sampled positions per GOP a keyframe")])
def test_build_refuses_bad_extraction_settings_before_reading_anything(tmp_path, capsys, flags,
                                                                       message):
  # Checked once up front, not by every worker per video (which reported each video as skipped
  # and, with --source synthetic, generated all the videos first).
  from cope_jax.data.__main__ import main  # pylint: disable=import-outside-toplevel
  out = tmp_path / "o"
  assert main(["build", "--stage", "eval", "--source", "synthetic", "--out", str(out),
               "--synth-videos", "2", "--quiet", *flags]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
  assert not out.exists()


def test_extract_settings_are_checked_when_made():
  with pytest.raises(ConfigError, match="multiple of 16"):
    ExtractSettings(100, SamplingConfig())
  with pytest.raises(ConfigError, match="quantizer"):
    ExtractSettings(64, SamplingConfig(), quantizer=1)
  assert ExtractSettings(64, SamplingConfig(), quantizer=31).size == 64


def test_a_damaged_or_unfinished_cache_entry_is_extracted_again(tmp_path, pan_clip, monkeypatch):
  """A crash can leave an entry cut short (no fsync before the rename), and a failed write its
  temporary file: neither may stop a rebuild or stay behind."""
  from cope_jax.data import primitive_cache  # pylint: disable=import-outside-toplevel
  settings = ExtractSettings(64, SamplingConfig())
  path = str(tmp_path / "entry.npz")
  assert primitive_cache._extract_one((pan_clip, path, settings)) == (pan_clip, None)
  whole = primitive_cache.load(path)
  with open(path, "r+b") as f:
    f.truncate(1000)
  assert primitive_cache._extract_one((pan_clip, path, settings)) == (pan_clip, None)
  assert primitive_cache.load(path).kinds.tolist() == whole.kinds.tolist()
  os.remove(path)

  def full_disk(f, **arrays):
    f.write(b"partial")
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(primitive_cache.np, "savez", full_disk)
  video, reason = primitive_cache._extract_one((pan_clip, path, settings))
  assert "No space left on device" in reason and os.listdir(tmp_path) == []


def test_residuals_round_trip_in_any_memory_layout():
  """A Fortran-ordered or strided int16 array encodes as its C-ordered copy would (``astype``
  kept the layout, and the byte view refused it)."""
  from cope_jax.data import storage  # pylint: disable=import-outside-toplevel
  a = np.arange(-600, 600, dtype=np.int16).reshape(20, 20, 3)
  for view in (np.asfortranarray(a), a[:, ::2], a.transpose(1, 0, 2), a.astype(np.int32)):
    np.testing.assert_array_equal(storage.decode_residual(storage.encode_residual(view)), view)


_LLAVA = [{"id": "x", "video": "a.mp4", "conversations": [{"from": "human", "value": "<image>"}]}]


@pytest.mark.parametrize("args,message", [
    # missing, a folder, not text, empty: the file is named first, as VideoError names a video
    (["--source", "llava_video", "--annotations", "missing.json", "--videos", "videos"],
     "missing.json: no such file"),
    (["--source", "llava_video", "--annotations", "folder", "--videos", "videos"],
     "folder: is a folder, not a file"),
    (["--source", "llava_video", "--annotations", "binary", "--videos", "videos"],
     "binary: not UTF-8 text"),
    (["--source", "llava_video", "--annotations", "empty.json", "--videos", "videos"],
     "empty.json: no entries"),
    (["--source", "mcq", "--annotations", "missing.jsonl"], "missing.jsonl: no such file"),
    (["--source", "mcq", "--annotations", "folder"], "folder: is a folder, not a file"),
    (["--source", "mcq", "--annotations", "binary"], "binary: not UTF-8 text"),
    (["--source", "mcq", "--annotations", "empty.jsonl"], "empty.jsonl: no questions"),
    (["--source", "synthetic", "--annotations", "missing.jsonl"], "missing.jsonl: no such file"),
    (["--source", "synthetic", "--annotations", "folder"], "folder: is a folder, not a file"),
    # --videos must be a folder (a missing one used to skip every video and write the build)
    (["--source", "llava_video", "--annotations", "ok.json", "--videos", "missing"],
     "missing: no such folder"),
    (["--source", "llava_video", "--annotations", "ok.json", "--videos", "ok.json"],
     "ok.json: is a file, not a folder of videos"),
    # checked before --source synthetic generates its videos into OUT/synthetic
    (["--source", "synthetic", "--synth-videos", "1", "--limit", "0"], "--limit must be >= 1"),
    (["--source", "synthetic", "--synth-videos", "1", "--workers", "0"], "--workers must be from"),
    (["--source", "synthetic", "--synth-videos", "1", "--seed", "-1"], "--seed must be >= 0"),
    (["--source", "mcq", "--annotations", "ok.jsonl", "--seed", "-1", "--conversations", "video"],
     "--seed must be >= 0, got -1"),
    # flags the source ignores (--videos with an MCQ file: every video reported missing, after
    # the build) and a seed left unchecked where unused
    (["--source", "mcq", "--annotations", "ok.jsonl", "--videos", "videos"],
     "--videos does not apply to --source mcq (see --source llava_video's videos folder"),
    (["--source", "llava_video", "--annotations", "ok.json", "--videos", "videos",
      "--conversations", "video"], "--conversations does not apply to --source llava_video"),
    (["--source", "synthetic", "--annotations", "ok.jsonl", "--synth-videos", "3"],
     "--synth-videos does not apply to --source synthetic --annotations"),
    (["--source", "llava_video", "--annotations", "ok.json", "--videos", "videos", "--seed",
      "-1"], "--seed must be >= 0, got -1"),
    # several files are LLaVA-Video's; LLaVA-NeXT's data YAML is named, not read as JSON
    (["--source", "mcq", "--annotations", "ok.jsonl", "ok.jsonl"],
     "--source mcq reads one --annotations file, got 2 (several are for --source llava_video)"),
    (["--source", "llava_video", "--annotations", "ok.json", "exp.yaml", "--videos", "videos"],
     "exp.yaml: LLaVA-NeXT's data YAML is not read here; pass the json_path files it lists"),
    (["--source", "llava_video", "--annotations", "bad.jsonl", "--videos", "videos"],
     "bad.jsonl:2: neither a JSON list nor JSON Lines"),
    (["--source", "llava_video", "--annotations", "empty.json", "ok.json", "--videos", "videos"],
     "empty.json: no entries"),
])
def test_build_refuses_bad_annotations_and_videos_before_writing(tmp_path, monkeypatch, capsys,
                                                                 args, message):
  """SPEC: one ``error: PATH: reason`` line (not a raw ``[Errno 2] …``), status 2, and nothing
  under --out."""
  from cope_jax.data.__main__ import main  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  (tmp_path / "folder").mkdir()
  (tmp_path / "videos").mkdir()
  (tmp_path / "binary").write_bytes(b"\xff\xfe\x00[\x81")
  (tmp_path / "empty.json").write_text("[]")
  (tmp_path / "empty.jsonl").write_text("\n")
  (tmp_path / "ok.json").write_text(json.dumps(_LLAVA))
  (tmp_path / "exp.yaml").write_text("datasets:\n  - json_path: ok.json\n")
  (tmp_path / "bad.jsonl").write_text(json.dumps(_LLAVA[0]) + "\n{not json\n")
  (tmp_path / "ok.jsonl").write_text(json.dumps({"video": "a.mp4", "question": "Q?",
                                                 "options": ["a", "b"], "answer": "A"}) + "\n")
  assert main(["build", "--stage", "finetune", "--out", "out", "--size", "64", "--quiet",
               *args]) == 2
  err = capsys.readouterr().err
  assert err == f"error: {message}\n" or (err.startswith(f"error: {message}")
                                          and err.count("\n") == 1), err
  assert not (tmp_path / "out").exists()


def test_options_written_with_their_letters_are_lettered_once(tmp_path, capsys):
  """Video-MME's options carry their letters ("A. Apples."): the prompt read "A. A. Apples.",
  and the open-ended and ranked probes scored "C. Berries." — without a word."""
  line = {"video": "a.mp4", "question": "Which is most?", "answer": "C",
          "options": ["A. Apples.", "B. Candles.", "C. Berries.", "D. All the same."]}
  plain = {**line, "options": ["A.I. tools", "B. one", "C. two", "D. three"]}  # (not all)
  (tmp_path / "q.jsonl").write_text(json.dumps(line) + "\n" + json.dumps(plain) + "\n")
  first, second = sources.read_mcq(str(tmp_path / "q.jsonl"))[0].questions
  assert first["options"] == ["Apples.", "Candles.", "Berries.", "All the same."]
  assert second["options"] == plain["options"]
  prompt = sources.mcq_prompt(first["question"], first["options"])
  assert prompt.splitlines()[1:3] == ["A. Apples.", "B. Candles."]
  assert "the options of 1 question(s) start with their own letters" in capsys.readouterr().err
