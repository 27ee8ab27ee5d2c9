"""How fast a from-scratch LLM learns the multiple-choice letter step alone (the demo's diagnosis).

``python -m cope_jax.bench letter --questions DIR/questions.jsonl --tokenizer DIR/tokenizer.json``

Text only, the ``tiny`` Qwen2 (``--layers`` to change its depth): each example asks a synthetic
question open-ended, gives the right answer as the assistant's turn, then asks the same question
with lmms-eval's multiple-choice prompt; the loss is on the answer letter only. The answer is in
context, so what is learned is the letter step alone — find the option whose text matches and
answer with its (shuffled) letter — which a pre-trained Qwen2 brings to LLaVA-Video and the
demo's from-scratch LLM must learn. Prints held-out letter accuracy every ``--every`` steps, and
per question family at the end.
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

from cope_jax.data.sources import mcq_prompt
from cope_jax.data.tokenizer import encode_conversation
from cope_jax.models.presets import QWEN2
from cope_jax.models.qwen2 import Qwen2

LENGTH = 160  # a question, its answer and its multiple-choice form: under 110 tokens


def letter_examples(questions: list[dict], tok) -> tuple[np.ndarray, np.ndarray]:
  """(N, LENGTH) token ids and (N,) position of the answer letter."""
  ids = np.zeros((len(questions), LENGTH), np.int32)
  at = np.zeros(len(questions), np.int32)
  for i, q in enumerate(questions):
    enc = encode_conversation(tok, [("user", q["question"]), ("assistant", q["open_answer"]),
                                    ("user", mcq_prompt(q["question"], q["options"])),
                                    ("assistant", q["answer"])])
    ids[i, :len(enc.ids)] = enc.ids
    at[i] = np.flatnonzero(enc.loss_mask)[-2]  # the letter, before the final <|im_end|>
  return ids, at


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m cope_jax.bench letter", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--questions", required=True, help="synthetic questions.jsonl (with "
                      "open_answer and split)")
  parser.add_argument("--tokenizer", required=True, help="its tokenizer.json")
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--every", type=int, default=100)
  args = parser.parse_args(argv)
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
  if not questions or not all("open_answer" in q and "split" in q for q in questions):
    _fail(f"{args.questions}: needs open_answer and split on every line (the synthetic "
          "questions.jsonl)")
  train = [q for q in questions if q["split"] == "train"]
  test = [q for q in questions if q["split"] == "test"]
  if not train or not test:
    _fail(f"{args.questions}: needs train and test questions (the synthetic questions.jsonl, not "
          "one split's file)")
  train_ids, train_at = letter_examples(train, tok)
  test_ids, test_at = letter_examples(test, tok)
  model = Qwen2(dataclasses.replace(QWEN2["tiny"], num_layers=args.layers))
  params = model.init(jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, args.lr, max(1, args.steps // 20),
                                                      args.steps), weight_decay=0.0)
  opt = tx.init(params)

  def loss_and_accuracy(p, ids, at):
    at_letter = model.apply(p, ids, logits_at=at - 1)[0][:, 0]  # the slot that predicts it
    target = jnp.take_along_axis(ids, at[:, None], 1)[:, 0]
    loss = optax.softmax_cross_entropy_with_integer_labels(at_letter, target).mean()
    return loss, (at_letter.argmax(-1) == target).mean()

  @jax.jit
  def step(p, o, ids, at):
    (loss, _), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(p, ids, at)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  evaluate = jax.jit(loss_and_accuracy)
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  print(f"letter step, {args.layers}-layer tiny Qwen2, batch {args.batch}: {len(train_ids)} "
        f"training / {len(test_ids)} held-out questions")
  for s in range(1, args.steps + 1):
    pick = rng.integers(len(train_ids), size=args.batch)
    params, opt, loss = step(params, opt, jnp.asarray(train_ids[pick]), jnp.asarray(train_at[pick]))
    if s % args.every == 0 or s == args.steps:
      _, acc = evaluate(params, jnp.asarray(test_ids), jnp.asarray(test_at))
      print(f"step {s:5d}  loss {float(loss):.3f}  held-out letter accuracy {float(acc):.3f}  "
            f"({time.perf_counter() - start:.0f} s)", flush=True)
  # Per family: single-word options (a colour, a direction, a count) against object names that
  # differ in colour and shape together; all must be matched to the answer to find the letter.
  at_letter = model.apply(params, jnp.asarray(test_ids), logits_at=jnp.asarray(test_at) - 1)[0]
  right = np.asarray(at_letter[:, 0].argmax(-1)) == test_ids[np.arange(len(test_ids)), test_at]
  families = np.array([q["family"] for q in test])
  print("held-out letter accuracy per family: " + ", ".join(
      f"{f} {right[families == f].mean():.2f}" for f in sorted(set(families))))
