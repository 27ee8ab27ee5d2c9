"""Reading the annotation formats into one list of videos with their conversations and questions.

- ``llava_video``: LLaVA-Video-178K-style JSON or JSON Lines, one file or several (entries
  ``{"id", "video", "conversations": [{"from": "human"|"gpt", "value"}]}``, ``<image>`` in the
  first human turn), videos under a folder.
- ``mcq``: the MCQ JSONL, ``{"video", "question", "options", "answer"}`` per line (video paths
  relative to the file's folder allowed; optional ``split``, ``family``, ``id``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Iterator

LETTERS = "ABCDEFGHIJ"
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."


@dataclasses.dataclass
class VideoItem:
  """One video and everything asked about it."""
  video: str                                   # absolute path
  split: str = "train"
  conversations: list = dataclasses.field(default_factory=list)  # [[(role, text), …], …]
  questions: list = dataclasses.field(default_factory=list)      # MCQ dicts (eval records)


def mcq_prompt(question: str, options: list[str], post_prompt: str = MCQ_SUFFIX) -> str:
  """lmms-eval's multiple-choice prompt: the question, lettered options, and ``post_prompt``
  (lmms-eval PerceptionTest's answer-with-the-letter line by default; "" for none)."""
  lines = [question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
  return "\n".join(lines + ([post_prompt] if post_prompt else []))


CONVERSATIONS = ("question", "video")


def check_seed(seed: int) -> None:
  """ValueError unless ``seed`` is a NumPy seed (an integer >= 0)."""
  if seed < 0:
    raise ValueError(f"--seed must be >= 0, got {seed}")


def open_text(path: str):
  """``path`` opened for reading as UTF-8 text (a byte-order mark, as Windows editors write,
  skipped); a missing or unreadable file, or a folder, fails with the same OSError type and a
  one-line message that names the path first."""
  try:
    return open(path, encoding="utf-8-sig")
  except FileNotFoundError as e:
    error, reason = e, "no such file"
  except IsADirectoryError as e:
    error, reason = e, "is a folder, not a file"
  except PermissionError as e:
    error, reason = e, "not readable (permission denied)"
  except OSError as e:
    error, reason = e, f"cannot be read ({(e.strerror or str(e)).lower()})"
  raise type(error)(f"{path}: {reason}") from None


def _numbered_lines(f, path: str) -> Iterator[tuple[int, str]]:
  try:
    yield from enumerate(f, 1)
  except UnicodeDecodeError:
    raise ValueError(f"{path}: not UTF-8 text") from None


def check_video_folder(path: str) -> None:
  """OSError naming ``path`` unless it is a folder (where the annotations' videos are)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such folder")
  if not os.path.isdir(path):
    raise NotADirectoryError(f"{path}: is a file, not a folder of videos")


def mcq_lines(path: str) -> Iterator[tuple[int, dict]]:
  """(line number, question) for each line of an MCQ JSONL, checked (ValueError naming the line),
  its video path made absolute (relative paths are relative to the file's folder)."""
  folder = os.path.dirname(os.path.abspath(path))
  lettered = 0
  with open_text(path) as f:
    for n, line in _numbered_lines(f, path):
      if not line.strip():
        continue
      try:
        q = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
      if not isinstance(q, dict):
        raise ValueError(f"{path}:{n}: not a JSON object")
      for key in ("video", "question", "options", "answer"):
        if key not in q:
          raise ValueError(f"{path}:{n}: not an MCQ line (missing {key!r})")
      options, answer = q["options"], q["answer"]
      if (not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS)
          or not all(isinstance(o, str) for o in options)):
        raise ValueError(f"{path}:{n}: options must be a list of 2 to {len(LETTERS)} strings")
      # Video-MME writes each option with its letter ("A. Apples."): the prompt adds them again
      own = [re.match(rf"\(?{LETTERS[i]}[.)]\s+", o) for i, o in enumerate(options)]
      if all(own):
        q["options"] = options = [o[m.end():] for o, m in zip(options, own)]
        lettered += 1
      if not isinstance(answer, str) or len(answer) != 1 or answer not in LETTERS[:len(options)]:
        raise ValueError(f"{path}:{n}: answer {answer!r} is not one of the option letters "
                         f"{LETTERS[:len(options)]}")
      if not isinstance(q["video"], str) or not isinstance(q["question"], str):
        raise ValueError(f"{path}:{n}: video and question must be strings")
      if not isinstance(q.get("family", ""), str):  # (accuracies are reported per family)
        raise ValueError(f"{path}:{n}: family must be a string, got {q['family']!r}")
      if not isinstance(q.get("open_answer", "-"), str) or not q.get("open_answer", "-").strip():
        raise ValueError(f"{path}:{n}: open_answer (the open-ended answer) must be a non-empty "
                         f"string, got {q['open_answer']!r}")
      split = q.get("split", "train")  # (a shard split's name: letters, digits, underscores;
      # TFDS refuses one without a letter or digit, and reads "all" as every split together)
      if (not isinstance(split, str) or not re.fullmatch(r"\w+", split) or split == "all"
          or not any(c.isalnum() for c in split)):
        raise ValueError(f"{path}:{n}: split must be a name like train or test, got {split!r}")
      # (normalised: one video written two ways, "a.mp4" and "./a.mp4", is one video)
      q["video"] = os.path.normpath(os.path.join(folder, q["video"]))
      yield n, q
  if lettered:
    print(f"note: {path}: the options of {lettered} question(s) start with their own letters "
          "('A. …', as Video-MME writes them); taken off, as the prompt letters them",
          file=sys.stderr)


def question_id(q: dict, line: int):
  """A question's id: its own as written, or (none, or null) its line number as a string."""
  return str(line) if q.get("id") is None else q["id"]


def read_mcq(path: str, conversations: str = "question", seed: int = 0) -> list[VideoItem]:
  """Groups the questions of an MCQ JSONL by video, keeping each line's split (default train).

  ``conversations``: ``question`` makes one single-turn conversation per question (what
  evaluation asks); ``video`` makes one multi-turn conversation per video holding all its
  questions in a seeded random order, as LLaVA-Video-178K's multi-turn QA does — one pass over
  the visual tokens then trains every answer.
  """
  if conversations not in CONVERSATIONS:
    raise ValueError(f"conversations must be one of {CONVERSATIONS}, got {conversations!r}")
  check_seed(seed)
  items: dict[tuple[str, str], VideoItem] = {}
  for n, q in mcq_lines(path):
    question, options, answer = q["question"], q["options"], q["answer"]
    split = q.get("split", "train")
    item = items.setdefault((q["video"], split), VideoItem(q["video"], split))
    item.questions.append({"id": str(question_id(q, n)), "question": question,
                           "options": list(options), "answer": answer,
                           "family": q.get("family", "")})
    item.conversations.append([("user", mcq_prompt(question, options)), ("assistant", answer)])
  splits: dict[str, list[str]] = {}
  for video, split in items:
    splits.setdefault(video, []).append(split)
  if shared := [v for v, names in splits.items() if len(names) > 1]:
    print(f"warning: {path}: {len(shared)} video(s) in more than one split (first: {shared[0]}, "
          f"in {', '.join(splits[shared[0]])}): what a model learns of a video in one split "
          "answers its questions in another", file=sys.stderr)
  if conversations == "video":
    import numpy as np  # pylint: disable=import-outside-toplevel
    for n, item in enumerate(items.values()):
      order = np.random.default_rng([seed, n]).permutation(len(item.conversations))
      item.conversations = [[turn for i in order for turn in item.conversations[i]]]
  return list(items.values())


# A turn's "from": LLaVA-Video-178K's names, and the chat roles other datasets write.
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


def _annotation_entries(path: str) -> list[tuple[str, object]]:
  """The entries of one LLaVA-Video annotation file, each with where it is for errors: a JSON
  list (``FILE: entry N``, from 1), or JSON Lines (``FILE:LINE``; one entry per line, as
  LLaVA-NeXT also reads)."""
  with open_text(path) as f:
    try:
      text = f.read()
    except UnicodeDecodeError:
      raise ValueError(f"{path}: not UTF-8 text") from None
  try:
    entries = json.loads(text)
  except json.JSONDecodeError as e:
    if not text.lstrip().startswith("{"):
      raise ValueError(f"{path}: not JSON ({e})") from None
    lines = []
    for n, line in enumerate(text.split("\n"), 1):  # (not splitlines: U+2028 is JSON text)
      if line.strip():
        try:
          lines.append((f"{path}:{n}", json.loads(line)))
        except json.JSONDecodeError as e_line:
          raise ValueError(f"{path}:{n}: neither a JSON list nor JSON Lines ({e_line})") from None
    return lines
  if isinstance(entries, dict) and "conversations" in entries:  # a JSONL file of one line
    return [(f"{path}: entry 1", entries)]
  if not isinstance(entries, list):
    raise ValueError(f"{path}: expected a JSON list of entries, found a "
                     f"{type(entries).__name__}")
  return [(f"{path}: entry {n}", e) for n, e in enumerate(entries, 1)]


def read_llava_video(annotations: str | os.PathLike | list, video_dir: str) -> list[VideoItem]:
  """LLaVA-Video-178K-style annotations (all in the train split), from one file or several (the
  dataset gives each bucket's caption, open-ended and multiple-choice entries in files of their
  own): one item per video, holding the conversations of all its entries in file order, so each
  video is decoded and stored once."""
  paths = ([os.fspath(annotations)] if isinstance(annotations, (str, os.PathLike))
           else [os.fspath(a) for a in annotations])
  for path in paths:  # (a missing file is named before a missing folder of videos)
    open_text(path).close()
    if path.endswith((".yaml", ".yml")):
      raise ValueError(f"{path}: LLaVA-NeXT's data YAML is not read here; pass the json_path "
                       "files it lists to --annotations (all their entries are used, as "
                       "sampling_strategy: all)")
  check_video_folder(video_dir)
  items: dict[str, VideoItem] = {}
  for path in paths:
    _read_llava_video_file(path, video_dir, items)
  return list(items.values())


def _read_llava_video_file(annotations: str, video_dir: str, items: dict) -> None:
  entries = _annotation_entries(annotations)
  if not entries:  # (one empty file among several: a wrong file named, most likely)
    raise ValueError(f"{annotations}: no entries")
  for where, e in entries:
    try:
      turns = [(ROLES[t["from"]], t["value"]) for t in e["conversations"]]
      video = e["video"]
      if not isinstance(video, str) or not video:
        raise TypeError(f"video is {video!r}, not a file name")
      if not all(isinstance(text, str) for _, text in turns):
        raise TypeError("a turn's value is not text")
      # Questions and answers in turn, each question answered: an entry without an answer
      # trained nothing at the cost of a step, an empty one taught the model to say nothing.
      if not turns or len(turns) % 2 or any(
          role != ("user", "assistant")[i % 2] for i, (role, _) in enumerate(turns)):
        raise ValueError("turns that are not human, gpt, human, gpt, … ending with gpt")
      if any(not text.strip() for role, text in turns if role == "assistant"):
        raise ValueError("an empty answer")
    except (KeyError, TypeError, ValueError) as err:
      name = e.get("id", "?") if isinstance(e, dict) else type(e).__name__
      raise ValueError(f"{where} ({name}): not a {{video, conversations}} "
                       f"object with human/gpt turns ({type(err).__name__}: {err})") from None
    path = os.path.abspath(os.path.join(video_dir, video))  # (VideoItem's paths are absolute)
    items.setdefault(path, VideoItem(path, "train")).conversations.append(turns)
