"""How fast a from-scratch LLM learns the multiple-choice letter step alone (the demo's diagnosis).

``python -m cope_jax.bench letter --questions DIR/questions.jsonl --tokenizer DIR/tokenizer.json``

Text only, the ``tiny`` Qwen2 (``--layers`` to change its depth): each example asks a synthetic
question open-ended, gives the right answer as the assistant's turn, then asks the same question
with lmms-eval's multiple-choice prompt; the loss is on the answer letter only. The answer is in
context, so what is learned is the letter step alone — find the option whose text matches and
answer with its (shuffled) letter — which a pre-trained Qwen2 brings to LLaVA-Video and the
demo's from-scratch LLM must learn. ``--text-first`` asks the multiple-choice question alone and
makes the answer the right option's text, then its letter (``yellow (B)``): the letter is then
looked up from text the model has just written. Prints held-out letter accuracy every
``--every`` steps, and per question family at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cope_jax.bench import require_positive
from cope_jax.command_line import ArgumentParser
from cope_jax.data.sources import LETTERS, mcq_prompt
from cope_jax.data.tokenizer import encode_conversation
from cope_jax.models.presets import QWEN2
from cope_jax.models.qwen2 import Qwen2
from cope_jax.train.optim import schedule

LENGTH = 160  # a question, its answer and its multiple-choice form: under 110 tokens


def letter_examples(questions: list[dict], tok, answer_prefix: str = "",
                    text_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(N, LENGTH) token ids and (N,) position of the answer letter. ``answer_prefix=" "`` makes
  the open answer the same tokens as its option (`` yellow``, not ``yellow``). ``text_first``:
  no open-ended turn; the multiple-choice answer is the right option's text, then its letter
  (``yellow (B)``), so the letter is looked up from text just written."""
  ids = np.zeros((len(questions), LENGTH), np.int32)
  at = np.zeros(len(questions), np.int32)
  for i, q in enumerate(questions):
    mcq = ("user", mcq_prompt(q["question"], q["options"]))
    if text_first:
      turns = [mcq, ("assistant", f"{q['open_answer']} ({q['answer']})")]
    else:
      turns = [("user", q["question"]), ("assistant", answer_prefix + q["open_answer"]), mcq,
               ("assistant", q["answer"])]
    enc = encode_conversation(tok, turns)
    if len(enc.ids) > LENGTH:
      raise ValueError(f"the question {q['question']!r} takes {len(enc.ids)} tokens with its "
                       f"answers, more than the benchmark's {LENGTH}")
    ids[i, :len(enc.ids)] = enc.ids
    answer = np.flatnonzero(enc.loss_mask)
    at[i] = answer[np.asarray(enc.ids)[answer] == tok.token_to_id(q["answer"])][-1]
  return ids, at


def reshuffled(q: dict, rng: np.random.Generator) -> dict:
  """The question with its options in a fresh order and the answer letter to match."""
  options = list(q["options"])
  right = options[LETTERS.index(q["answer"])]
  rng.shuffle(options)
  return dict(q, options=options, answer=LETTERS[options.index(right)])


def matching_examples(tok, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """The bare matching task: ``word \\n A. w1 \\n B. w2 \\n C. w3 \\n D. w4 \\n letter`` with one
  wi = word, all one-token words of the tokenizer; (n, 19) ids and the letter's position."""
  vocab = tok.get_vocab()
  words = np.array(sorted(i for t, i in vocab.items() if t[:1] == "Ġ" and t[1:].isalpha()
                          and len(t) > 2))
  letters, nl, dot = np.array([vocab[c] for c in LETTERS[:4]]), vocab["Ċ"], vocab["."]
  options = np.stack([rng.choice(words, 4, replace=False) for _ in range(n)])
  right = rng.integers(4, size=n)
  cols = [options[np.arange(n), right], np.full(n, nl)]
  for k in range(4):
    cols += [np.full(n, letters[k]), np.full(n, dot), options[:, k], np.full(n, nl)]
  ids = np.stack(cols + [letters[right]], 1).astype(np.int32)
  return ids, np.full(n, ids.shape[1] - 1, np.int32)


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv: list[str] | None = None) -> None:
  parser = ArgumentParser(prog="python -m cope_jax.bench letter", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--questions", required=True, help="synthetic questions.jsonl (with "
                      "open_answer and split)")
  parser.add_argument("--tokenizer", required=True, help="its tokenizer.json")
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--every", type=int, default=100)
  parser.add_argument("--fresh-options", action="store_true", help="a new option order for every "
                      "training example (default: each question's one order)")
  parser.add_argument("--answer-space", action="store_true", help="the open answer with a "
                      "leading space, so it is the same tokens as its option")
  parser.add_argument("--text-first", action="store_true", help="no open-ended turn: the "
                      "answer is the right option's text, then its letter ('yellow (B)'); the "
                      "loss is on the letter")
  parser.add_argument("--match-steps", type=int, default=0, help="first train this many steps "
                      "(batch 256) on the bare matching task: a word, four lettered one-word "
                      "options, answer the letter")
  args = parser.parse_args(argv)
  require_positive(parser, args, "--layers", "--steps", "--batch", "--lr", "--every")
  if args.match_steps < 0:
    parser.error(f"--match-steps must be >= 0, got {args.match_steps}")
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  try:
    tok = Tokenizer.from_file(args.tokenizer)
  except Exception as e:  # pylint: disable=broad-except  # tokenizers raises a plain Exception
    _fail(f"{args.tokenizer}: {e}")
  try:
    with open(args.questions) as f:
      questions = [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError) as e:
    _fail(f"{args.questions}: {e}")
  keys = ("question", "options", "answer", "open_answer", "split", "family")
  if not questions or not all(isinstance(q, dict) and all(k in q for k in keys)
                              for q in questions):
    _fail(f"{args.questions}: needs {', '.join(keys)} on every line (the synthetic "
          "questions.jsonl)")
  train = [q for q in questions if q["split"] == "train"]
  test = [q for q in questions if q["split"] == "test"]
  if not train or not test:
    _fail(f"{args.questions}: needs train and test questions (the synthetic questions.jsonl, not "
          "one split's file)")
  rng = np.random.default_rng(0)
  prefix = " " if args.answer_space else ""
  if args.fresh_options:
    picks = rng.integers(len(train), size=args.steps * args.batch)
    train = [reshuffled(train[i], rng) for i in picks]
  try:
    train_ids, train_at = letter_examples(train, tok, prefix, args.text_first)
    test_ids, test_at = letter_examples(test, tok, prefix, args.text_first)
  except ValueError as e:
    _fail(f"{args.questions}: {e}")
  model = Qwen2(dataclasses.replace(QWEN2["tiny"], num_layers=args.layers))
  params = model.init(jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))

  def loss_and_accuracy(p, ids, at):
    at_letter = model.apply(p, ids, logits_at=at - 1)[0][:, 0]  # the slot that predicts it
    target = jnp.take_along_axis(ids, at[:, None], 1)[:, 0]
    loss = optax.softmax_cross_entropy_with_integer_labels(at_letter, target).mean()
    return loss, (at_letter.argmax(-1) == target).mean()

  evaluate = jax.jit(loss_and_accuracy)
  start = time.perf_counter()

  def train_phase(params, name, steps, batch_of, held_out):
    # (the trainer's schedule: a run of a step or a few has no warm-up, where optax's needs one
    # step of cosine after it)
    tx = optax.adamw(schedule(args.lr, steps // 20, steps), weight_decay=0.0)
    opt = tx.init(params)

    @jax.jit
    def step(p, o, ids, at):
      (loss, _), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(p, ids, at)
      updates, o = tx.update(grads, o, p)
      return optax.apply_updates(p, updates), o, loss

    for s in range(1, steps + 1):
      params, opt, loss = step(params, opt, *map(jnp.asarray, batch_of(s)))
      if s % args.every == 0 or s == steps:
        _, acc = evaluate(params, *map(jnp.asarray, held_out))
        print(f"{name} step {s:5d}  loss {float(loss):.3f}  held-out letter accuracy "
              f"{float(acc):.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return params

  if args.match_steps:
    match = matching_examples(tok, args.match_steps * 256 + 2000, rng)
    print(f"bare matching task, batch 256: {args.match_steps * 256} training / 2000 held-out")
    params = train_phase(params, "matching", args.match_steps,
                         lambda s: (match[0][(s - 1) * 256:s * 256],
                                    match[1][(s - 1) * 256:s * 256]),
                         (match[0][-2000:], match[1][-2000:]))
  order = "fresh option orders" if args.fresh_options else "one option order per question"
  print(f"letter step, {args.layers}-layer tiny Qwen2, batch {args.batch}: {len(train_ids)} "
        f"training examples ({order}) / {len(test_ids)} held-out questions")
  if args.fresh_options:  # each example once
    batch_of = lambda s: (train_ids[(s - 1) * args.batch:s * args.batch],  # noqa: E731
                          train_at[(s - 1) * args.batch:s * args.batch])
  else:
    def batch_of(_):
      pick = rng.integers(len(train_ids), size=args.batch)
      return train_ids[pick], train_at[pick]
  params = train_phase(params, "letter", args.steps, batch_of, (test_ids, test_at))
  # Per family: single-word options (a colour, a direction, a count) against object names that
  # differ in colour and shape together; all must be matched to the answer to find the letter.
  at_letter = model.apply(params, jnp.asarray(test_ids), logits_at=jnp.asarray(test_at) - 1)[0]
  right = np.asarray(at_letter[:, 0].argmax(-1)) == test_ids[np.arange(len(test_ids)), test_at]
  families = np.array([q["family"] for q in test])
  print("held-out letter accuracy per family: " + ", ".join(
      f"{f} {right[families == f].mean():.2f}" for f in sorted(set(families))))
