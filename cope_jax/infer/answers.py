"""Multiple-choice answer parsing in the lmms-eval manner."""

from __future__ import annotations

import re

from cope_jax.data.sources import LETTERS


def parse_letter(text: str, num_options: int = 4) -> str | None:
  """The chosen option letter, or None: "(B)", "B.", "B) red", "The answer is C.", "c" → B/B/B/C/C.

  Order: a reply that is just a letter; a letter opening the reply ("B. red", "(B)"); "answer
  is X"; else the first standalone capital letter among the options.
  """
  valid = LETTERS[:num_options]
  t = text.strip()
  if len(t) == 1 and t.upper() in valid:
    return t.upper()
  # With nine options or more, "I" is a letter too: not the pronoun of "I think it is B".
  letter = rf"(?!I\s+[a-z])([{valid}])"
  m = re.match(rf"^\(?{letter}(?:[\).:,\s]|$)", t)
  if m:
    return m.group(1)
  # a capital letter, or one in parentheses: "the answer is a dog" names no option
  m = re.search(rf"(?i:answer)(?: is|:)?\s*(?:\(([{valid}{valid.lower()}])\)|([{valid}])\b)", t)
  if m:
    return (m.group(1) or m.group(2)).upper()
  m = re.search(rf"\b{letter}\b", t)
  return m.group(1) if m else None
