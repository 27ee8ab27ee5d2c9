"""The train step's math, in-process: gradient accumulation (plain and per-token means), weight
decay masks of scanned layers, per-part learning rates, and the blocked cross-entropy with its
correct count."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cope_jax.train.loop import _accumulated


def test_gradient_accumulation_equals_one_big_batch():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 3)), jnp.float32)
  params = {"w": jnp.ones(3)}

  def loss_fn(p, batch):
    loss = jnp.mean((batch["x"] @ p["w"]) ** 2)
    return loss, {"loss": loss}

  one = _accumulated(loss_fn, params, {"x": x}, 1)
  four = _accumulated(loss_fn, params, {"x": x}, 4)
  np.testing.assert_allclose(one[0], four[0], rtol=1e-6)
  np.testing.assert_allclose(one[2]["w"], four[2]["w"], rtol=1e-5)


def test_gradient_accumulation_of_a_per_token_mean():
  """Micro-batches with different numbers of answer tokens: the accumulated loss and gradients
  are the whole batch's per-token mean, as without accumulation."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((8, 5, 3)), jnp.float32)
  mask = jnp.asarray(rng.random((8, 5)) < np.linspace(0.1, 0.9, 8)[:, None], jnp.float32)
  params = {"w": jnp.ones(3)}

  def loss_fn(p, batch):
    n = batch["mask"].sum()
    loss = jnp.sum(batch["mask"] * (batch["x"] @ p["w"]) ** 2) / jnp.maximum(n, 1)
    return loss, {"loss": loss, "answer_tokens": n}

  one = _accumulated(loss_fn, params, {"x": x, "mask": mask}, 1, "answer_tokens")
  for steps in (2, 4):
    many = _accumulated(loss_fn, params, {"x": x, "mask": mask}, steps, "answer_tokens")
    np.testing.assert_allclose(many[0], one[0], rtol=1e-5)
    np.testing.assert_allclose(many[2]["w"], one[2]["w"], rtol=1e-5)
    assert float(many[1]["answer_tokens"]) == float(mask.sum())
  # The old mean of micro-batch means differs on this batch.
  plain = _accumulated(loss_fn, params, {"x": x, "mask": mask}, 4)
  assert abs(float(plain[0]) - float(one[0])) > 1e-3


def test_weight_decay_skips_norms_and_biases_of_scanned_layers():
  """Scanned layers stack a norm's (D,) scale or a bias into (layers, D): still not decayed."""
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  from cope_jax.models import presets  # pylint: disable=import-outside-toplevel
  from cope_jax.models.llava import VideoLM  # pylint: disable=import-outside-toplevel
  from cope_jax.train.optim import decay_mask  # pylint: disable=import-outside-toplevel
  cfg = presets.video_lm("tiny")
  args = (jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool), jnp.zeros((1, 1, 64, 64, 3)),
          jnp.zeros((1, 1, 64, 64, 2)), jnp.zeros((1, 1, 64, 64, 3), jnp.int16),
          jnp.zeros((1, 2), jnp.int32))
  params = nn.meta.unbox(jax.eval_shape(lambda: VideoLM(cfg).init(jax.random.key(0), *args)))
  decayed = {jax.tree_util.keystr(k): v
             for k, v in jax.tree_util.tree_leaves_with_path(decay_mask(params["params"]))}
  assert decayed["['llm']['layers']['self_attn']['q_proj']['kernel']"]
  assert decayed["['llm']['embed_tokens']['embedding']"]
  for name in ("['llm']['layers']['input_layernorm']['weight']",
               "['llm']['layers']['self_attn']['q_proj']['bias']",
               "['vision_tower']['layers']['layer_norm1']['scale']",
               "['image_newline']"):
    assert not decayed[name], name
  assert not any(v for k, v in decayed.items() if "norm" in k.lower() or k.endswith("['bias']"))


def test_each_trained_part_steps_at_its_own_learning_rate():
  """Stage 2's ``trainable``: one peak rate per part (LLaVA's lower rate for the vision tower),
  each with the shared warm-up and cosine decay."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from cope_jax.train.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  optim = ml_collections.ConfigDict(dict(warmup_steps=2, weight_decay=0.0, clip_norm=1e9,
                                         b1=0.9, b2=0.999))
  tx, schedules = make_optimizer(optim, 10, {"llm": 1e-2, "vision_tower": 2e-3})
  params = {"llm": {"w": jnp.ones((3, 4))}, "vision_tower": {"w": jnp.ones((3, 4))}}
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
  state = tx.init(params)
  for step in range(3):  # Adam's first steps move each weight by about its learning rate
    updates, state = tx.update(grads, state, params)
    moved = {k: float(-updates[k]["w"][0, 0]) for k in params}
    want = {k: float(schedules[k](step)) for k in params}
    assert moved == pytest.approx(want, rel=1e-3), step
  assert float(schedules["llm"](2)) == pytest.approx(1e-2)  # the peak, after warm-up
  assert float(schedules["vision_tower"](2)) == pytest.approx(2e-3)
  assert float(schedules["llm"](10)) == pytest.approx(0.0, abs=1e-9)


def test_blocked_cross_entropy_equals_whole():
  """loss_chunk: the summed cross-entropy, correct count and gradients are those of the whole
  (B, L, vocab) logits, with L not a multiple of the block."""
  from cope_jax.train.tasks import blocked_cross_entropy  # pylint: disable=import-outside-toplevel
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  hidden = jax.random.normal(k1, (2, 37, 16))
  w = jax.random.normal(k2, (16, 50))
  targets = jax.random.randint(k3, (2, 37), 0, 50)
  weights = jax.random.bernoulli(k4, 0.5, (2, 37))
  head = lambda h, w: h @ w  # noqa: E731
  results = {}
  for block in (0, 8):
    def f(w, b=block):
      return blocked_cross_entropy(lambda h: head(h, w), hidden, targets, weights, b)
    ce, correct = f(w)
    grad = jax.grad(lambda w: f(w)[0])(w)
    results[block] = (ce, correct, grad)
  np.testing.assert_allclose(results[8][0], results[0][0], rtol=1e-5)
  assert int(results[8][1]) == int(results[0][1])
  np.testing.assert_allclose(results[8][2], results[0][2], rtol=1e-4, atol=1e-6)
  expected = summed_cross_entropy(hidden @ w, targets, weights)
  np.testing.assert_allclose(results[0][0], expected, rtol=1e-5)
  # The correct count is that of argmax == target, here with half the targets the argmax.
  best = jnp.argmax(hidden @ w, -1)
  targets = jnp.where(jax.random.bernoulli(k1, 0.5, targets.shape), best, targets)
  for block in (0, 8):
    _, correct = blocked_cross_entropy(lambda h: head(h, w), hidden, targets, weights, block)
    assert int(correct) == int(jnp.sum(weights & (best == targets))) > 10


def summed_cross_entropy(logits, targets, weights):
  """The plain definition: minus the weighted sum of the targets' log-probabilities."""
  logp = jax.nn.log_softmax(logits, -1)
  picked = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
  return float(-(picked * weights).sum())


def test_no_warm_up_trains_the_first_step_at_the_peak_rate():
  from cope_jax.train.optim import schedule  # pylint: disable=import-outside-toplevel
  no_warmup, warmup = schedule(1e-3, 0, 100), schedule(1e-3, 10, 100)
  assert float(no_warmup(0)) == pytest.approx(1e-3) and float(no_warmup(100)) == 0.0
  assert float(no_warmup(50)) == pytest.approx(5e-4, rel=1e-5)
  assert float(warmup(0)) == 0.0 and float(warmup(10)) == pytest.approx(1e-3)


def test_a_run_started_over_purges_the_tensorboard_steps_it_logs_again(tmp_path):
  """A run that crashed before its first checkpoint starts again from step 0: metrics.jsonl
  drops the old records, and TensorBoard must hide the old events (a SessionLog START at step
  1, its purge mark) or every curve shows both runs."""
  import glob  # pylint: disable=import-outside-toplevel
  import struct  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from tensorboardX.proto.event_pb2 import Event, SessionLog  # pylint: disable=import-outside-toplevel
  from cope_jax.train.metrics_log import MetricsLog  # pylint: disable=import-outside-toplevel
  for loss in (1.0, 2.0):  # the first run, then the run started over
    log = MetricsLog(str(tmp_path), 10, 0)
    log.write(1, {"loss": loss, "learning_rate": 1e-3})
    log.close()
    time.sleep(1.1)  # (an events file is named by the second it was opened in)
  events = []
  for path in glob.glob(str(tmp_path / "tensorboard" / "events*")):
    data = open(path, "rb").read()
    while data:  # TFRecord: length, its CRC, the record, its CRC
      (n,) = struct.unpack("<Q", data[:8])
      events.append(Event.FromString(data[12:12 + n]))
      data = data[16 + n:]
  starts = [e for e in events if e.session_log.status == SessionLog.START]
  assert len(starts) == 2 and all(e.step == 1 for e in starts), starts
  assert [json.loads(l)["loss"] for l in open(tmp_path / "metrics.jsonl")] == [2.0]


def test_rates_and_the_eta_leave_out_compiling(tmp_path, monkeypatch, capsys):
  """The first window held the step's compilation (39 s for the tiny recipe on 2 cores): its
  steps/s and ETA were 100× off, and the demo's median of a resumed run's rates counted it."""
  from cope_jax.train import metrics_log  # pylint: disable=import-outside-toplevel
  clock = [100.0]
  monkeypatch.setattr(metrics_log.time, "perf_counter", lambda: clock[0])
  log = metrics_log.MetricsLog(str(tmp_path), 10, 0)
  log.count_tokens(400)
  clock[0] += 40.0  # compiling: 38 s; the step itself: 2 s
  log.leave_out(38.0)
  log.write(1, {"loss": 1.0, "learning_rate": 1e-3})
  log.close()
  record = json.loads((tmp_path / "metrics.jsonl").read_text())
  assert record["steps_per_s"] == pytest.approx(0.5) and record["tokens_per_s"] == pytest.approx(200)
  assert "ETA 0:00:18" in capsys.readouterr().out


def test_the_first_step_of_a_run_is_its_own_rate(tmp_path, monkeypatch):
  """The first step of a run also starts the data pipeline and runs a new program for the first
  time (3 s on the tiny recipe): counted in the first window, step 1 logged 0.32 steps/s against
  ~4.5 after it. The windows count from the first step's end; a record of that step alone keeps
  its own rate."""
  from cope_jax.train import metrics_log  # pylint: disable=import-outside-toplevel
  clock = [0.0]
  monkeypatch.setattr(metrics_log.time, "perf_counter", lambda: clock[0])
  log = metrics_log.MetricsLog(str(tmp_path), 100, 0)
  log.count_tokens(100)
  clock[0] += 3.25  # the first step: 3 s of start-up, 0.25 s of training
  log.start_counting(1)
  log.write(1, {"loss": 1.0, "learning_rate": 1e-3})  # (log_every 1)
  for step in (2, 3):
    log.count_tokens(100)
    clock[0] += 0.25
  log.write(3, {"loss": 1.0, "learning_rate": 1e-3})
  log.close()
  first, window = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert first["steps_per_s"] == pytest.approx(1 / 3.25)
  assert window["steps_per_s"] == pytest.approx(4.0) and window["tokens_per_s"] == pytest.approx(400)
