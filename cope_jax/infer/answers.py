"""Multiple-choice answer parsing in the lmms-eval manner."""

from __future__ import annotations

import re

from cope_jax.data.sources import LETTERS


_END = r"[.!,:;]*\s*"  # what may follow a letter that ends the reply: "(b).", "d!"


def parse_letter(text: str, num_options: int = 4) -> str | None:
  """The chosen option letter, or None: "(B)", "B.", "B) red", "The answer is C.", "(c)" → B/B/B/C/C.

  SPEC §5 (lmms-eval): the first standalone letter among the options — a reply that is just the
  letter in either case ("c", "(c)", "c.", "(c).", "c!"), or the first standalone capital
  letter ("(B)", "B. red", "B is wrong, the answer is C" → B). Only a reply with no capital
  letter falls back to a lower-case one named as the answer, in parentheses or ending the reply
  ("Answer: (d)", "the answer is: c."); "the answer is a dog" names no option.
  """
  valid = LETTERS[:num_options]
  lower = valid.lower()
  t = text.strip()
  m = re.fullmatch(rf"(?:([{valid}{lower}])\)?|\(([{valid}{lower}])\)){_END}", t)
  if m:
    return (m.group(1) or m.group(2)).upper()
  # With nine options or more, "I" is a letter too: not the pronoun of "I think it is B" or
  # "I'm not sure, but C" (I'm, I'd, I've, I'll; either apostrophe).
  m = re.search(rf"\b(?!I\s+[a-z]|I['’](?:m|d|ve|ll)\b)([{valid}])\b", t)
  if m:
    return m.group(1)
  m = re.search(rf"(?i:answer)(?:\s+is)?\s*:?\s*(?:\(([{lower}])\)|([{lower}])\)?{_END}$)", t)
  return (m.group(1) or m.group(2)).upper() if m else None
