"""The VideoLM glue, the Δ-encoder, and sharding over 8 emulated devices."""

import dataclasses

import flax.linen as nn
import jax
import jax.extend.core  # (jaxprs_in_params)
import jax.numpy as jnp
import numpy as np
import pytest

from cope_jax.codec.errors import ConfigError
from cope_jax.data.tokenizer import IMAGE_TOKEN_ID
from cope_jax.models import presets
from cope_jax.models.delta_encoder import DeltaEncoder, Stage1Predictor, normalise_motion
from cope_jax.models.llava import VideoLM, interleave, splice, spliced_targets
from cope_jax.models.sharding import (LOGICAL_AXIS_RULES, batch_sharding, devices_along,
                                      logical_shardings, make_mesh)


def test_interleave_follows_kinds():
  keys = jnp.arange(2)[:, None, None] * 100 + jnp.arange(3)[None, :, None] + 1.0  # (2, 3, 1)
  deltas = -(jnp.arange(3)[:, None, None] * 10 + jnp.arange(2)[None, :, None] + 1.0)  # (3, 2, 1)
  kinds = jnp.array([0, 1, 1, 0, 1, -1])
  tokens, valid = interleave(keys, deltas, kinds)
  expected = [1, 2, 3, -1, -2, -11, -12, 101, 102, 103, -21, -22]
  assert tokens[:, 0].tolist() == expected
  assert valid.tolist() == [True] * 12


def test_interleave_padding_is_invalid_and_last():
  keys = jnp.ones((2, 3, 1))
  deltas = jnp.full((3, 2, 1), 2.0)
  tokens, valid = interleave(keys, deltas, jnp.array([0, 1, -1, -1, -1]))
  assert valid.tolist() == [True] * 5 + [False] * 7
  assert tokens[:5, 0].tolist() == [1, 1, 1, 2, 2] and not tokens[5:].any()


def test_splice_and_targets_against_a_python_reference():
  rng = np.random.default_rng(0)
  ids = np.array([[5, 6, IMAGE_TOKEN_ID, 7, 8, 9, 0, 0, 0, 0],
                  [IMAGE_TOKEN_ID, 3, 4, 0, 0, 0, 0, 0, 0, 0]])
  text_mask = np.array([[1] * 6 + [0] * 4, [1] * 3 + [0] * 7], bool)
  loss = np.zeros_like(text_mask)
  loss[0, 4:6] = True
  loss[1, 2] = True
  text = rng.standard_normal((2, 10, 1)).astype(np.float32)
  visual = np.arange(1, 5, dtype=np.float32)[None, :, None].repeat(2, 0) * 100
  vvalid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  emb, valid, positions, text_index = splice(jnp.asarray(text), jnp.asarray(text_mask),
                                             jnp.asarray(ids), jnp.asarray(visual),
                                             jnp.asarray(vvalid))
  for b in range(2):
    p = list(ids[b]).index(IMAGE_TOKEN_ID)
    seq = [(text[b, i, 0], text_mask[b, i], i) for i in range(p)]
    seq += [(visual[b, j, 0], vvalid[b, j], -1) for j in range(4)]
    seq += [(text[b, i, 0], text_mask[b, i], i) for i in range(p + 1, 10)]
    seq = seq[:10]
    np.testing.assert_allclose(np.asarray(emb[b, :, 0]), [s[0] for s in seq])
    assert np.asarray(valid[b]).tolist() == [bool(s[1]) for s in seq]
    assert np.asarray(text_index[b]).tolist() == [s[2] for s in seq]
    ok = [bool(s[1]) for s in seq]
    assert np.asarray(positions[b])[ok].tolist() == list(range(sum(ok)))
  targets, weights = spliced_targets(jnp.asarray(ids), jnp.asarray(loss), text_index)
  # Row 0: text 4 (=8) and 5 (=9) are learned; after 4 visual slots they sit at slots 7 and 8,
  # so slots 6 and 7 predict them.
  assert np.flatnonzero(np.asarray(weights[0])).tolist() == [6, 7]
  assert np.asarray(targets[0])[[6, 7]].tolist() == [8, 9]
  assert np.flatnonzero(np.asarray(weights[1])).tolist() == [4]  # text 2 at slot 5


def test_delta_encoder_shapes_and_grid():
  cfg = presets.DELTA["tiny"]
  mv = jnp.zeros((3, 96, 64, 2))
  res = jnp.zeros((3, 96, 64, 3), jnp.int16)
  params = jax.jit(DeltaEncoder(cfg).init)(jax.random.key(0), mv, res)
  tokens, aux = jax.jit(DeltaEncoder(cfg).apply)(params, mv, res)
  assert tokens.shape == (3, 8, cfg.out_dim) and aux["motion"].shape == (3, 4, cfg.out_dim)
  # The ResNet trunk lands on the motion patch grid (stride 16).
  feats = jax.eval_shape(lambda: __import__("cope_jax.models.resnet", fromlist=["x"]).ResNet18(
      cfg.resnet_widths).init_with_output(jax.random.key(0), res.astype(jnp.float32))[0])
  assert feats.shape == (3, 6, 4, cfg.resnet_widths[-1])
  with pytest.raises(ValueError, match="multiple of the 16"):
    DeltaEncoder(cfg).apply(params, jnp.zeros((1, 40, 64, 2)), jnp.zeros((1, 40, 64, 3)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_resnet_stem_and_group_norm_equal_the_textbook_layers(dtype):
  """The space-to-depth stem and the per-channel GroupNorm compute nn.Conv (7×7, stride 2,
  SAME) and nn.GroupNorm with the same parameters, on a non-square frame."""
  from cope_jax.models.resnet import GroupNorm, Stem  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 48, 32, 3)) * 2 + 0.5, jnp.float32)
  ours = Stem(8, dtype)
  params = ours.init(jax.random.key(0), x)
  textbook = nn.Conv(8, (7, 7), strides=(2, 2), padding="SAME", use_bias=False)
  ref = textbook.apply({"params": {"kernel": nn.meta.unbox(params["params"]["kernel"])}}, x)
  tol = 1e-5 if dtype == jnp.float32 else 5e-2
  np.testing.assert_allclose(np.asarray(ours.apply(params, x), np.float32), ref,
                             rtol=tol, atol=tol * np.abs(ref).max())
  with pytest.raises(ValueError, match="even height and width"):
    ours.apply(params, x[:, :47])
  # Its kernel gradient, summed over groups of frames on a CPU, is nn.Conv's (a batch of 19
  # frames: two full groups and a partial one).
  frames = jnp.asarray(rng.standard_normal((19, 16, 24, 3)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((19, 8, 12, 8)), jnp.float32)
  kernel_grad = lambda f, p: jax.grad(  # noqa: E731
      lambda p: jnp.sum(f(p, frames).astype(jnp.float32) * cotangent))(p)
  ours_grad = kernel_grad(jax.jit(ours.apply), params)["params"]["kernel"]
  ref_grad = kernel_grad(jax.jit(textbook.apply),
                         {"params": {"kernel": nn.meta.unbox(params["params"]["kernel"])}})
  ref_grad = np.asarray(ref_grad["params"]["kernel"])
  np.testing.assert_allclose(np.asarray(nn.meta.unbox(ours_grad), np.float32), ref_grad,
                             rtol=tol, atol=tol * np.abs(ref_grad).max())

  y = jnp.asarray(rng.standard_normal((2, 6, 10, 16)) * 3 + 1, jnp.float32)
  norm = {"scale": jnp.asarray(rng.standard_normal(16), jnp.float32),
          "bias": jnp.asarray(rng.standard_normal(16), jnp.float32)}
  ref = nn.GroupNorm(num_groups=4).apply({"params": norm}, y)
  out = GroupNorm(4, dtype=dtype).apply({"params": norm}, y)
  assert out.dtype == dtype
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=tol, atol=tol * 10)
  assert jax.tree_util.tree_structure(nn.meta.unbox(GroupNorm(4).init(jax.random.key(0), y))) \
      == jax.tree_util.tree_structure(nn.GroupNorm(num_groups=4).init(jax.random.key(0), y))


def test_the_stems_bfloat16_kernel_gradient_does_not_lose_precision_with_more_frames():
  """Summed over groups of 8 frames on a CPU: a bfloat16 running sum lost precision as the
  groups grew in number (1.4 % relative error at 1024 frames, 0.7 % at 256, where one bfloat16
  convolution's gradient has 0.2 %). Now about nn.Conv's at any count."""
  from cope_jax.models.resnet import Stem  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((512, 16, 16, 3)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((512, 8, 8, 8)), jnp.float32)
  params = nn.meta.unbox(Stem(8).init(jax.random.key(0), x))
  def kernel_grad(module):
    loss = lambda p: jnp.sum(module.apply(p, x).astype(jnp.float32) * cotangent)  # noqa: E731
    return np.asarray(jax.jit(jax.grad(loss))(params)["params"]["kernel"], np.float32)
  conv = lambda dtype: nn.Conv(8, (7, 7), strides=(2, 2), padding="SAME", use_bias=False,  # noqa: E731
                               dtype=dtype)
  truth = kernel_grad(conv(jnp.float32))
  error = lambda g: np.linalg.norm(g - truth) / np.linalg.norm(truth)  # noqa: E731
  assert error(kernel_grad(Stem(8, jnp.bfloat16))) < 1.5 * error(kernel_grad(conv(jnp.bfloat16)))


def test_dense_layers_are_nn_dense_without_a_transposed_weight_gradient():
  """``layers.dense`` computes nn.Dense (same parameters, same values and gradients) over
  (B, L, D) activations, and its compiled gradient copies nothing of the activations' size: XLA
  on a CPU had transposed the (B·L, out) cotangent for every weight gradient, a strided copy
  that cost a third of a training step."""
  from cope_jax.models.layers import dense, matmul_last_axis  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 96, 32)), jnp.float32)
  ours, textbook = dense(48, ("embed", "mlp"), name="d"), nn.Dense(48)
  params = nn.meta.unbox(ours.init(jax.random.key(0), x))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      textbook.init(jax.random.key(0), x))

  def loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  np.testing.assert_allclose(ours.apply(params, x), textbook.apply(params, x), rtol=1e-6,
                             atol=1e-6)
  grads = [jax.grad(loss(m), argnums=(0, 1))(params, x) for m in (ours, textbook)]
  for a, b in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1])):
    # Float rounding relative to the largest entry (the kernel's reach ~30: sums of 384 terms,
    # whose order the CPU's matmul kernels choose; an AMD EPYC differed by 1.4e-5 at one entry).
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())

  hlo = jax.jit(jax.grad(loss(ours))).lower(params, x).compile().as_text()
  big = [line for line in hlo.splitlines() if (" copy(" in line or " transpose(" in line
                                               or "copy_" in line.split("=")[0])
         and ("[48,384]" in line or "[384,48]" in line or "[48,4,96]" in line)]
  assert not big, big
  with pytest.raises(ValueError, match="last axis"):
    matmul_last_axis(x, params["params"]["kernel"], (((0,), (0,)), ((), ())))


def test_motion_normalisation():
  mv = jnp.array([[[[-3.0, 1.0], [5.0, 0.0]]]])
  mm = normalise_motion(mv, dataclasses.replace(presets.DELTA["tiny"], motion_norm="minmax"))
  assert float(mm.min()) == -1.0 and float(mm.max()) == 1.0
  sc = normalise_motion(mv, dataclasses.replace(presets.DELTA["tiny"], motion_norm="scale",
                                                motion_scale=5.0))
  np.testing.assert_allclose(np.asarray(sc), np.asarray(mv) / 5.0)


def test_compact_delta_encoder_is_under_15m_and_paper_is_not():
  # at the paper's vision width (1152), which sets the output projection's size
  counts = {name: presets.parameter_counts(presets.video_lm("paper", name))["delta_encoder"]
            for name in ("compact", "paper")}
  assert counts["compact"] < 15e6 < counts["paper"]


def test_demo_delta_encoder_costs_less_than_a_keyframe_as_the_papers_does():
  """Appendix B's Δ-encoder on a 384² Δ-frame costs 0.28× so400m on a keyframe; the demo's costs
  under the tiny SigLIP's keyframe (0.65×, XLA's count), the tiny one over twice as much."""
  from cope_jax.bench.flops_bench import component_flops, unscanned  # pylint: disable=import-outside-toplevel
  ratio = {}
  for name in ("tiny", "demo"):
    f = component_flops(unscanned(presets.video_lm("tiny", name)), 1, 1, 8, codec_size=64)
    ratio[name] = f["delta_encoder"] / f["vision"]
  assert ratio["demo"] < 0.7 and ratio["tiny"] > 2.0


def test_stage1_predictor_starts_from_copying_the_reference():
  """At initialisation the prediction is the previous frame's tokens (the RGB-only baseline),
  whatever the motion; after one gradient step towards another target it moves."""
  cfg = presets.DELTA["tiny"]
  rng = np.random.default_rng(0)
  prev = jnp.asarray(rng.standard_normal((2, 64, cfg.out_dim)) * 3, jnp.float32)
  model = Stage1Predictor(cfg)
  args = (prev, jnp.asarray(rng.standard_normal((2, 64, 64, 2)) * 4, jnp.float32),
          jnp.asarray(rng.integers(-40, 40, (2, 64, 64, 3)), jnp.int16))
  params = jax.jit(model.init)(jax.random.key(0), *args)
  pred, _ = jax.jit(model.apply)(params, *args)
  assert pred.shape == prev.shape
  np.testing.assert_allclose(pred, prev, atol=1e-6)
  target = prev + 1.0
  loss = jax.jit(lambda p: jnp.mean((model.apply(p, *args)[0] - target) ** 2))
  grads = jax.jit(jax.grad(loss))(params)
  stepped = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
  assert float(loss(stepped)) < float(loss(params))


def _tiny_batch(cfg, b=4, length=64, k=1, p=3, size=64):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 1000, (b, length)).astype(np.int32)
  ids[:, 3] = IMAGE_TOKEN_ID
  s = cfg.vision.image_size
  return (jnp.asarray(ids), jnp.ones((b, length), bool),
          jnp.asarray(rng.standard_normal((b, k, s, s, 3)), jnp.float32),
          jnp.asarray(rng.standard_normal((b, p, size, size, 2)) * 3, jnp.float32),
          jnp.asarray(rng.integers(-30, 30, (b, p, size, size, 3)), jnp.int16),
          jnp.tile(jnp.array([[0, 1, 1, 1]], jnp.int32), (b, 1)))


def test_forward_sharded_over_8_devices_equals_single_device(capfd):
  """(And the token embedding's lookup compiles without XLA's "involuntary full
  rematerialization" of the activation on a mesh with a tensor axis: see Qwen2.embed.)"""
  assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  cfg = presets.video_lm("tiny")
  batch = _tiny_batch(cfg)
  model = VideoLM(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), *batch)["params"])
  single, _ = jax.jit(model.apply)({"params": params}, *batch)

  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with pytest.raises(ValueError, match=r"unknown mesh axes \['dta'\]"):
    make_mesh({"dta": 8})  # (was left out: "needs 1 devices, have 8")
  with pytest.raises(ValueError, match="each >= 1 or -1"):
    make_mesh({"data": 0, "fsdp": -1})  # (was a ZeroDivisionError)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *batch)["params"])
  shardings = logical_shardings(abstract, mesh)
  sharded_params = jax.device_put(params, nn.meta.unbox(shardings))
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree_util.tree_leaves(sharded_params))
  sharded_batch = [jax.device_put(x, batch_sharding(mesh, x.ndim)) for x in batch]

  @jax.jit
  def forward(p, *args):
    with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
      return model.apply({"params": p}, *args)[0]

  @jax.jit
  def gradient(p, *args):
    with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
      return jax.grad(lambda p: jnp.mean(model.apply({"params": p}, *args)[0] ** 2))(p)

  capfd.readouterr()
  with jax.set_mesh(mesh):
    sharded = forward(sharded_params, *sharded_batch)
    # compiled here, not read from the tests' compilation cache (which prints nothing)
    from jax._src import compilation_cache  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # (whether the cache is used is decided once, then kept)
    try:
      gradient.lower(sharded_params, *sharded_batch).compile()
    finally:
      jax.config.update("jax_enable_compilation_cache", True)
      compilation_cache.reset_cache()
    with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
      assert [devices_along(n) for n in ("vocab", "embed", "batch", "norm")] == [2, 2, 4, 1]
  assert "Involuntary full rematerialization" not in capfd.readouterr().err
  assert devices_along("vocab") == 1  # (outside a mesh)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), atol=2e-5, rtol=1e-5)


def test_keyframes_only_runs_no_delta_encoder():
  """A video without Δ-frames (the dense and keyframes modes) passes zero Δ slots: the tokens
  equal those of a padded Δ slot, and the Δ-encoder's parameters are not even needed."""
  cfg = presets.video_lm("tiny")
  ids, mask, pixels, mv, residual, _ = _tiny_batch(cfg, b=2, k=2)
  kinds = jnp.array([[0, 0, -1], [0, -1, -1]], jnp.int32)
  model = VideoLM(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), ids, mask, pixels, mv[:, :1],
                                             residual[:, :1], kinds)["params"])
  padded, pv = jax.jit(lambda p: model.apply({"params": p}, pixels, mv[:, :1], residual[:, :1],
                                             kinds, method=VideoLM.visual_tokens))(params)
  without = {k: v for k, v in params.items() if k != "delta_encoder"}
  none, nv = jax.jit(lambda p: model.apply({"params": p}, pixels, mv[:, :0], residual[:, :0],
                                           kinds, method=VideoLM.visual_tokens))(without)
  n = 2 * cfg.keyframe_tokens
  assert none.shape[1] == n and padded.shape[1] == n + cfg.delta_tokens
  np.testing.assert_array_equal(np.asarray(nv), np.asarray(pv)[:, :n])
  np.testing.assert_allclose(np.asarray(none), np.asarray(padded)[:, :n], rtol=1e-6)
  assert not np.asarray(pv)[:, n:].any()


@pytest.mark.parametrize("delta", sorted(presets.DELTA))
def test_every_delta_encoder_shards(delta):
  """Each Δ-encoder's parameters map to mesh shardings (a logical name used twice in one
  parameter is an error there); compact and paper project their width to the vision width."""
  cfg = presets.video_lm("tiny", delta)
  batch = _tiny_batch(cfg)
  abstract = jax.eval_shape(lambda: VideoLM(cfg).init(jax.random.key(0), *batch)["params"])
  shardings = jax.tree_util.tree_leaves(logical_shardings(abstract, make_mesh({"fsdp": 8})))
  assert shardings and all(len(x.mesh.devices.flat) == 8 for x in shardings)


def test_every_preset_builds():
  for name, (_, vision, _) in presets.PRESETS.items():
    cfg = presets.video_lm(name)
    assert cfg.vision == presets.SIGLIP[vision] and cfg.delta.out_dim == cfg.vision.hidden_size
  with pytest.raises(ConfigError, match="unknown model preset"):
    presets.video_lm("huge")


def _equations(closed_jaxpr):
  """Every equation of a jaxpr, those inside scans, remats and other sub-jaxprs too."""
  stack = [closed_jaxpr.jaxpr]
  while stack:
    jaxpr = stack.pop()
    for e in jaxpr.eqns:
      yield e
      for sub in jax.extend.core.jaxprs_in_params(e.params):
        stack.append(sub)


def test_bf16_compute_and_remat():
  cfg = presets.video_lm("tiny")
  batch = _tiny_batch(cfg, b=2)
  params = nn.meta.unbox(jax.jit(VideoLM(cfg).init)(jax.random.key(0), *batch)["params"])
  ref, _ = jax.jit(VideoLM(cfg).apply)({"params": params}, *batch)
  bf16 = presets.video_lm("tiny", dtype=jnp.bfloat16)
  out, _ = jax.jit(VideoLM(bf16).apply)({"params": params}, *batch)
  assert out.dtype == jnp.float32
  error = np.abs(np.asarray(out) - np.asarray(ref)).mean()
  assert 0 < error < 0.05 * np.abs(np.asarray(ref)).mean()  # (0: bf16 not computed)
  # the matrix products run in bfloat16 (float32 parameters, cast where used)
  products = {str(e.invars[0].aval.dtype) for e in _equations(
      jax.make_jaxpr(VideoLM(bf16).apply)({"params": params}, *batch)) if
      e.primitive.name == "dot_general"}
  assert "bfloat16" in products, products
  remat = presets.video_lm("tiny", remat=True)

  def loss(p, c):
    return VideoLM(c).apply({"params": p}, *batch)[0].mean()

  def checkpoints(c) -> int:
    jaxpr = jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, c)
    return sum(e.primitive.name in ("remat2", "checkpoint") for e in _equations(jaxpr))

  assert checkpoints(remat) > 0 and checkpoints(cfg) == 0  # (rematerialised only when asked)
  g_ref = jax.jit(jax.grad(loss), static_argnums=1)(params, cfg)
  g_remat = jax.jit(jax.grad(loss), static_argnums=1)(params, remat)
  for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_remat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_layer_norm_keeps_float32_precision_under_a_shared_offset():
  """Flax's default variance, E[x²] − E[x]², lost precision when the channels share an offset
  (2.8e-3 off in SigLIP's output at an offset of 50); torch computes it in two passes."""
  from cope_jax.models.layers import layer_norm  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(0).standard_normal((4, 1152)).astype(np.float32) + 50
  norm = layer_norm(1e-6, jnp.float32)
  y = np.asarray(norm.apply(norm.init(jax.random.key(0), x), x))
  x64 = x.astype(np.float64)
  ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
  assert np.abs(y - ref).max() < 1e-5


def test_a_config_read_back_from_json_hashes_as_its_preset():
  """A loaded config compared equal to its preset but hashed otherwise (np.dtype against jnp's
  type): every cache keyed by the config missed, and the programs compiled again."""
  from cope_jax.models import config_io  # pylint: disable=import-outside-toplevel
  for cfg in (presets.video_lm("tiny"), presets.video_lm("small", dtype=jnp.bfloat16)):
    back = config_io.from_dict(config_io.to_dict(cfg))
    assert back == cfg and hash(back) == hash(cfg)
