"""Generation: cached decoding equals full recomputation; batched equals one by one; sampling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cope_jax.data.tokenizer import IMAGE_TOKEN_ID
from cope_jax.infer.generation import Generator, SamplingOptions, sample
from cope_jax.models import presets
from cope_jax.models.llava import VideoLM

EOS, PAD = 1031, 0


@pytest.fixture(scope="module")
def setup():
  cfg = presets.video_lm("tiny")
  rng = np.random.default_rng(0)
  s = cfg.vision.image_size
  visual = (jnp.asarray(rng.standard_normal((2, 1, s, s, 3)), jnp.float32),
            jnp.asarray(rng.standard_normal((2, 2, 64, 64, 2)) * 3, jnp.float32),
            jnp.asarray(rng.integers(-20, 20, (2, 2, 64, 64, 3)), jnp.int16),
            jnp.array([[0, 1, 1], [0, 1, -1]], jnp.int32))
  ids = np.full((2, 96), PAD, np.int32)  # room for 40 visual slots + text + new tokens
  lengths = [20, 13]
  for b, n in enumerate(lengths):
    ids[b, :n] = rng.integers(2, 1000, n)
    ids[b, 2] = IMAGE_TOKEN_ID
  mask = np.arange(96)[None] < np.array(lengths)[:, None]
  model = VideoLM(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), jnp.asarray(ids),
                                               jnp.asarray(mask), *visual)["params"])
  return cfg, params, (jnp.asarray(ids), jnp.asarray(mask)) + visual, lengths


def _row(inputs, b):
  return tuple(x[b:b + 1] for x in inputs)


def test_cached_decoding_equals_recomputing_every_token(setup):
  cfg, params, inputs, lengths = setup
  gen = Generator(cfg, params, eos_id=-1, pad_id=PAD)  # no stop: compare every step
  tokens, timings, _ = gen.generate(inputs, SamplingOptions(max_new_tokens=6))
  assert timings["ttft_s"] > 0 and timings["e2e_s"] >= timings["ttft_s"]
  full = jax.jit(VideoLM(cfg).apply)
  for b, n in enumerate(lengths):
    ids, mask = np.array(inputs[0][b]), np.array(inputs[1][b])
    for t, token in enumerate(tokens[b]):
      # The prompt with the first t generated tokens appended as text, recomputed from scratch.
      ids_t, mask_t = ids.copy(), mask.copy()
      ids_t[n:n + t], mask_t[n:n + t] = tokens[b][:t], True
      logits, aux = full({"params": params}, jnp.asarray(ids_t[None]), jnp.asarray(mask_t[None]),
                         *[x[b:b + 1] for x in inputs[2:]])
      last = int(np.max(np.flatnonzero(np.asarray(aux["valid"][0]))))
      assert int(jnp.argmax(logits[0, last])) == token, (b, t)


def test_batched_generation_equals_one_by_one(setup):
  cfg, params, inputs, _ = setup
  gen = Generator(cfg, params, eos_id=-1, pad_id=PAD)
  batched, _, _ = gen.generate(inputs, SamplingOptions(max_new_tokens=5))
  for b in range(2):
    alone, _, _ = gen.generate(_row(inputs, b), SamplingOptions(max_new_tokens=5))
    assert alone[0] == batched[b]


def test_stop_at_eos_and_follow_up_reuses_the_cache(setup):
  cfg, params, inputs, _ = setup
  probe = Generator(cfg, params, eos_id=-1, pad_id=PAD)
  first, _, _ = probe.generate(_row(inputs, 0), SamplingOptions(max_new_tokens=4))
  gen = Generator(cfg, params, eos_id=first[0][1], pad_id=PAD)  # "eos" = the 2nd token
  out, _, chat = gen.generate(_row(inputs, 0), SamplingOptions(max_new_tokens=4), reserve=16)
  assert out[0] == first[0][:2]
  more, timings, chat2 = gen.follow_up(chat, np.array([[5, 6, 7]]),
                                       SamplingOptions(max_new_tokens=3))
  assert 1 <= len(more[0]) <= 3 and timings["ttft_s"] > 0
  with pytest.raises(ValueError, match="continued already"):
    gen.follow_up(chat, np.array([[5]]))
  with pytest.raises(ValueError, match="cache slots"):
    gen.follow_up(chat2, np.zeros((1, 40), np.int32), SamplingOptions(max_new_tokens=3))


def test_sampling_top_p_and_temperature():
  logits = jnp.log(jnp.array([[0.6, 0.3, 0.05, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 400)
  greedy = sample(logits, keys[0], 0.0, 1.0)
  assert int(greedy[0]) == 0
  picks = np.array([int(sample(logits, k, 1.0, 0.5)[0]) for k in keys[:100]])
  assert set(picks) == {0}  # top-p 0.5 keeps only the 0.6 token
  picks = np.array([int(sample(logits, k, 1.0, 0.92)[0]) for k in keys])
  assert set(picks) <= {0, 1, 2} and (picks == 1).mean() > 0.15
