"""The embedded synthetic temporal-QA dataset: ``python -m cope_jax.data synth --out DIR``.

DIR gets ``videos/*.mp4`` (MPEG-4 Part 2 written through PyAV, already conformant at the chosen
size, 30 fps, GOP 240), ``scenes.jsonl`` (the ground truth), ``questions.jsonl`` (the MCQ
format plus ``family``, ``split`` and ``id``), one ``{split}.jsonl`` per split, and
``train_conversations.json`` (LLaVA-Video-178K format, train split: per video two entries, a
caption and a multi-turn conversation of its questions in random order, each open-ended or
multiple-choice at random, the two other kinds of LLaVA-Video-178K annotation), and
``tokenizer.json`` (a small byte-level BPE for tiny configs). Splits are by video: no video is in
two splits. Re-running resumes: finished videos are kept.
"""

from __future__ import annotations

import collections
import os
from typing import Iterator

import numpy as np

from cope_jax.codec import synthetic_clips
from cope_jax.codec.errors import ConfigError
from cope_jax.codec.motion import MAX_SIZE
from cope_jax.command_line import bars_disabled
from cope_jax.data.sources import check_seed, mcq_prompt
from cope_jax.data.synthetic.questions import (FAMILIES, MOTION_FAMILIES, caption,
                                               questions_for_scene)
from cope_jax.data.parallel import (TMP_MARK, check_workers, process_pool,
                                    remove_orphaned_tmp_files)
from cope_jax.data.synthetic.scene import Scene, check_seconds, render, sample_scene
from cope_jax.data.tokenizer import time_instruction, train_small_tokenizer
from cope_jax.json_files import earlier_settings, write_json, write_jsonl

SPLITS = ("train", "validation", "test")
# The scene generator's version, recorded with the videos: a folder of another version's videos
# is refused, not described by this version's scenes (2: textured backgrounds only,
# 2026-12-06; 3: scenes drawn again until the sampled frames show every object, the pan's
# speed capped, 2026-12-07). A test holds each version to its scenes.
SCENES_VERSION = 3
MAX_VIDEOS = 100_000            # the demo uses 600; the ground truth of all is held in memory
MAX_TOTAL_SECONDS = 1_000_000   # video length summed over the dataset (~280 hours; ~13 GB of RAM)


# At 16 px two 8 px objects cannot both be shown whole in frame 0 (``scene.objects_shown``).
MIN_SIZE = 32


def check_size(size: int) -> None:
  """The codec's size rule (``EncodeSpec``): the videos are written already conformant, so that
  ``build --size`` (the same size) uses them as they are; and room for the objects apart."""
  if size < MIN_SIZE or size % 16 or size > MAX_SIZE:
    raise ConfigError(f"--size must be a multiple of 16 from {MIN_SIZE} to {MAX_SIZE} pixels (the "
                      f"codec's macroblock grid and motion-vector range; at 16 px the two objects "
                      f"cannot both be shown whole in the first frame), got {size}")


def scene_for(seed: int, index: int, size: int, seconds: float) -> Scene:
  """The scene of video ``index``: a pure function of the seed, so workers can rebuild it."""
  return sample_scene(np.random.default_rng([seed, index]), size=size, seconds=seconds)


def _write_video(args) -> str:
  seed, index, size, seconds, path = args
  if not os.path.exists(path):
    tmp = f"{path}{TMP_MARK}{os.getpid()}.mp4"
    try:
      synthetic_clips.write_clip(tmp, render(scene_for(seed, index, size, seconds)), fps=30,
                                 codec="mpeg4", gop=240, options={"flags": "+mv4"})
      os.replace(tmp, path)
    finally:  # (Ctrl-C reaches the workers too: no cut-short video left under an .mp4 name)
      if os.path.exists(tmp):
        os.remove(tmp)
  return path


def _balanced_letters(rng: np.random.Generator) -> Iterator[int]:
  while True:  # every block of four questions uses each letter once
    yield from rng.permutation(4).tolist()


def split_of(indices: np.ndarray, rng: np.random.Generator) -> dict[int, str]:
  """80 / 10 / 10 by video, at least one video in each split when there are three or more."""
  order = rng.permutation(indices)
  n = len(order)
  n_val = n_test = max(1, n // 10) if n >= 3 else 0
  names = ["validation"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
  return {int(i): s for i, s in zip(order, names)}


def generate(out: str, videos: int, seed: int = 0, size: int = 96, seconds: float = 8.0,
             workers: int | None = None, progress: bool = True) -> dict:
  """Writes the dataset to ``out``; returns counts per split and family.

  Videos already in ``out/videos`` are kept (an interrupted run resumes), so they must have been
  made with the same seed, size and length: ``out/videos/settings.json`` records them, and a
  mismatch is an error rather than ground truth that describes other videos."""
  # Everything checked before the folder records its settings (a refused run must not leave
  # settings that later runs into the same folder would be held to).
  check_seconds(seconds)
  check_workers(workers)
  check_seed(seed)
  if not 1 <= videos <= MAX_VIDEOS:
    raise ConfigError(f"the number of videos must be from 1 to {MAX_VIDEOS}, got {videos}")
  if videos * seconds > MAX_TOTAL_SECONDS:
    raise ConfigError(f"{videos} videos of {seconds:g} s are {videos * seconds:.0f} s of video; "
                      f"at most {MAX_TOTAL_SECONDS} s (about 280 hours) in one dataset")
  check_size(size)
  folder = os.path.join(out, "videos")
  settings = {"seed": seed, "size": size, "seconds": seconds, "scenes": SCENES_VERSION}
  os.makedirs(folder, exist_ok=True)
  made = earlier_settings(os.path.join(folder, "settings.json"), settings)
  if made is not None:
    raise ConfigError(f"{folder} holds videos made with {made}, not {settings}: use another "
                      "--out, or delete that folder to regenerate")
  jobs = [(seed, i, size, seconds, os.path.join(out, "videos", f"{i:05d}.mp4"))
          for i in range(videos)]
  remove_orphaned_tmp_files(folder)  # (a run killed outright left them)
  todo = [j for j in jobs if not os.path.exists(j[-1])]
  if todo:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    with process_pool(workers) as pool:
      for _ in tqdm(pool.map(_write_video, todo), total=len(todo), desc="synth videos",
                    unit=" videos", disable=bars_disabled(progress)):
        pass

  rng = np.random.default_rng([seed, 1 << 30])
  splits = split_of(np.arange(videos), rng)
  letters, asked = _balanced_letters(rng), collections.Counter()
  scenes, questions, conversations = [], [], []
  for i in range(videos):
    scene = scene_for(seed, i, size, seconds)
    scenes.append({"video": f"videos/{i:05d}.mp4", "caption": caption(scene), **scene.to_json()})
    qs = questions_for_scene(scene, rng, letters, asked)
    for j, q in enumerate(qs):
      questions.append({"id": f"{i:05d}-{j}", "video": f"videos/{i:05d}.mp4",
                        "question": q["question"], "options": q["options"],
                        "answer": q["answer"], "family": q["family"],
                        "open_answer": q["open_answer"], "split": splits[i]})
    if splits[i] == "train":
      conversations += _training_conversations(f"videos/{i:05d}.mp4", caption(scene), qs,
                                               np.random.default_rng([seed, i, 7]))
  write_jsonl(os.path.join(out, "scenes.jsonl"), scenes)
  write_jsonl(os.path.join(out, "questions.jsonl"), questions)
  for split in SPLITS:
    write_jsonl(os.path.join(out, f"{split}.jsonl"), [q for q in questions if q["split"] == split])
  write_json(os.path.join(out, "train_conversations.json"), conversations, indent=None)
  # (``<image>`` followed by a line break, as the prompt has it: the tokenizer, and so the demo's
  # models, as before the entries dropped that line break)
  corpus = [t["value"].replace("<image>", "<image>\n") for c in conversations
            for t in c["conversations"]]
  corpus += [mcq_prompt(q["question"], q["options"]) for q in questions]
  corpus += [time_instruction(seconds, list(np.arange(k) * 1.0)) for k in range(1, 65)]
  train_small_tokenizer(corpus).save(os.path.join(out, "tokenizer.json"))
  summary = {"videos": videos, "questions": len(questions),
             "splits": {s: sum(v == s for v in splits.values()) for s in SPLITS},
             "families": {f: sum(q["family"] == f for q in questions) for f in FAMILIES},
             "letters": {L: sum(q["answer"] == L for q in questions) for L in "ABCD"},
             "motion_families": list(MOTION_FAMILIES)}
  write_json(os.path.join(out, "summary.json"), summary)
  return summary


DESCRIBE = "Describe what happens in the video."


def _training_conversations(video: str, text: str, qs: list[dict],
                            rng: np.random.Generator) -> list[dict]:
  """LLaVA-Video-178K format, two entries: the caption; and every question (random order), each
  asked open-ended or as multiple choice (coin flip).

  They are separate conversations because the caption states every answer: asked after it, the
  questions are answered by copying from the caption in context, which teaches nothing about the
  video (the first demo's model learned exactly that and was at chance on held-out questions)."""
  qa = []
  for k in rng.permutation(len(qs)):
    q = qs[k]
    if rng.random() < 0.5:
      qa += [("human", q["question"]), ("gpt", q["open_answer"])]
    else:
      qa += [("human", mcq_prompt(q["question"], q["options"])), ("gpt", q["answer"])]
  # ``<image>`` as the entries' first characters (LLaVA-Video-178K writes "<image>\n" there,
  # which training keeps as a blank line after the time instruction, unlike inference's prompt)
  qa[0] = ("human", f"<image>{qa[0][1]}")
  return [{"id": f"{video}#{kind}", "video": video,
           "conversations": [{"from": who, "value": value} for who, value in turns]}
          for kind, turns in (("caption", [("human", f"<image>{DESCRIBE}"), ("gpt", text)]),
                              ("qa", qa))]


__all__ = ["generate", "scene_for", "SPLITS", "FAMILIES", "MOTION_FAMILIES", "MAX_VIDEOS",
           "MAX_TOTAL_SECONDS", "MIN_SIZE", "check_size"]
