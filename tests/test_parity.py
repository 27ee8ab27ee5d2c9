"""Numeric parity with the PyTorch reference models (transformers, torch==2.13.0 CPU)."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_models
from cope_jax.convert import llava_convert, qwen2_convert, siglip_convert
from cope_jax.convert.safetensors_io import CheckpointError, read_checkpoint, read_config
from cope_jax.convert.tree import TensorSource
from cope_jax.models.llava import VideoLM, add_row_newlines, pool_2x2
from cope_jax.models.qwen2 import Qwen2
from cope_jax.models.siglip import Siglip
from in_process import run_main

# float32 against torch's float32: what is seen is 1e-7 to 5e-6; 1e-4 let a tanh GELU in the
# projector or a SigLIP eps ten times off through (SPEC §3 names both)
TOL = 1e-5

pytestmark = pytest.mark.parity


@pytest.fixture(scope="session")
def hf_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("hf_models"))


def _qwen2(path):
  cfg = qwen2_convert.config_from_hf(read_config(path))
  return cfg, qwen2_convert.convert(TensorSource(read_checkpoint(path), path), cfg)


@pytest.mark.parametrize("vocab,heads,kv_heads,tied", [
    (1024, 4, 4, False), (1024, 4, 2, False), (1001, 4, 1, False),
    (1024, 4, 2, True)])  # tied: Qwen2-0.5B and 1.5B; the head is the embedding, not a copy
def test_qwen2_logits(hf_root, vocab, heads, kv_heads, tied):
  from transformers import Qwen2ForCausalLM  # pylint: disable=import-outside-toplevel
  path = hf_models.qwen2_dir(hf_root, vocab, heads, kv_heads, tied=tied)
  cfg, params = _qwen2(path)
  assert cfg.tie_word_embeddings is tied and ("lm_head" not in params) is tied
  ids = np.random.default_rng(0).integers(0, vocab, (3, 17))
  # Row 1 is left-padded by 5, row 2 right-padded by 4; positions count real tokens only.
  valid = np.ones_like(ids, bool)
  valid[1, :5] = False
  valid[2, -4:] = False
  positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
  hf = Qwen2ForCausalLM.from_pretrained(path).eval()
  with torch.no_grad():
    ref = hf(torch.tensor(ids), attention_mask=torch.tensor(valid.astype(np.int64)),
             position_ids=torch.tensor(positions)).logits.numpy()
  ours, _ = Qwen2(cfg).apply({"params": params}, jnp.asarray(ids), positions=jnp.asarray(positions),
                             valid=jnp.asarray(valid))
  diff = np.abs(np.asarray(ours) - ref)[valid]
  assert diff.max() <= TOL, diff.max()


def test_kv_cache_decoding_equals_full_forward(hf_root):
  cfg, params = _qwen2(hf_models.qwen2_dir(hf_root, 1024, 4, 2))
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 1024, (2, 12)))
  valid = jnp.ones((2, 12), bool).at[1, :3].set(False)  # left padding in row 1
  positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
  full, _ = Qwen2(cfg).apply({"params": params}, ids, positions=positions, valid=valid)
  model = Qwen2(cfg, decode=True)
  cache = model.init(jax.random.key(0), jnp.zeros((2, 16), jnp.int32),
                     valid=jnp.ones((2, 16), bool))["cache"]
  prefill = 5
  (step_logits, _), mutated = model.apply({"params": params, "cache": cache}, ids[:, :prefill],
                                     positions=positions[:, :prefill], valid=valid[:, :prefill],
                                     mutable=["cache"])
  outs = [step_logits]
  for t in range(prefill, 12):
    (logits, _), mutated = model.apply({"params": params, "cache": mutated["cache"]}, ids[:, t:t + 1],
                                  positions=positions[:, t:t + 1], valid=valid[:, t:t + 1],
                                  mutable=["cache"])
    outs.append(logits)
  stepwise = np.concatenate([np.asarray(o) for o in outs], axis=1)
  np.testing.assert_allclose(stepwise[np.asarray(valid)], np.asarray(full)[np.asarray(valid)],
                             atol=1e-5)


@pytest.mark.parametrize("post_layernorm", [True, False])
def test_siglip_last_hidden_state(hf_root, post_layernorm):
  from transformers import SiglipVisionModel  # pylint: disable=import-outside-toplevel
  path = hf_models.siglip_dir(hf_root)
  tensors = read_checkpoint(path)
  cfg = siglip_convert.config_from_hf(read_config(path), post_layernorm=post_layernorm)
  params = siglip_convert.convert(TensorSource(tensors, path), cfg,
                                  siglip_convert.find_prefix(tensors, ("vision_model.", "")))
  x = hf_models.rng_inputs((2, 3, 56, 56))
  hf = SiglipVisionModel.from_pretrained(path).eval()
  with torch.no_grad():
    out = hf(pixel_values=torch.tensor(x), output_hidden_states=True)
  # HF: last_hidden_state has post_layernorm; LLaVA-Video takes hidden_states[-1] (before it).
  ref = (out.last_hidden_state if post_layernorm else out.hidden_states[-1]).numpy()
  ours, _ = Siglip(cfg).apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert np.abs(np.asarray(ours) - ref).max() <= TOL


@pytest.mark.parametrize("kind", ["qwen2", "siglip"])
def test_hf_forward_cli(hf_root, tmp_path, kind):
  if kind == "qwen2":
    path = hf_models.qwen2_dir(hf_root, 1001, 4, 1)
    inputs = {"input_ids": np.random.default_rng(2).integers(0, 1001, (2, 9))}
  else:
    path = hf_models.siglip_dir(hf_root)
    inputs = {"pixel_values": hf_models.rng_inputs((2, 3, 56, 56), seed=3)}
  np.savez(tmp_path / "in.npz", **inputs)
  r = subprocess.run([sys.executable, "-m", "cope_jax.convert", "hf-forward", "--hf-dir", path,
                      "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "out.npz")],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  out = dict(np.load(tmp_path / "out.npz"))
  if kind == "qwen2":
    from transformers import Qwen2ForCausalLM  # pylint: disable=import-outside-toplevel
    with torch.no_grad():
      ref = Qwen2ForCausalLM.from_pretrained(path).eval()(
          torch.tensor(inputs["input_ids"])).logits.numpy()
    assert out["logits"].dtype == np.float32 and out["logits"].shape == ref.shape
    assert np.abs(out["logits"] - ref).max() <= TOL
  else:
    from transformers import SiglipVisionModel  # pylint: disable=import-outside-toplevel
    with torch.no_grad():
      ref = SiglipVisionModel.from_pretrained(path).eval()(
          pixel_values=torch.tensor(inputs["pixel_values"])).last_hidden_state.numpy()
    assert np.abs(out["last_hidden_state"] - ref).max() <= TOL
  # bad inputs: one error line, exit status 2
  bad = ({"input_ids": np.array([[0, 1001]])} if kind == "qwen2"
         else {"pixel_values": hf_models.rng_inputs((2, 3, 50, 56))})
  np.savez(tmp_path / "bad.npz", **bad)
  (tmp_path / "junk.npz").write_text("not numpy")
  np.save(tmp_path / "one.npy", next(iter(bad.values())))  # an array, not named arrays
  broken = tmp_path / "broken"
  shutil.copytree(path, broken)
  (broken / "config.json").write_text("{not json")
  for name, hf_dir in (("bad.npz", path), ("junk.npz", path), ("one.npy", path),
                       ("bad.npz", broken)):
    r = subprocess.run([sys.executable, "-m", "cope_jax.convert", "hf-forward", "--hf-dir",
                        str(hf_dir), "--inputs", str(tmp_path / name), "--out",
                        str(tmp_path / "x.npz")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _get_2d_pool_and_grid(features, newline, grid):
  """LLaVA-NeXT's get_2dPool (bilinear) + add_token_per_grid, written with torch ops."""
  import math  # pylint: disable=import-outside-toplevel
  f = torch.tensor(features)  # (frames, grid², D)
  frames, _, d = f.shape
  f = f.view(frames, grid, grid, d).permute(0, 3, 1, 2).contiguous()
  size = [math.ceil(grid / 2), math.ceil(grid / 2)]
  f = torch.nn.functional.interpolate(f, size=size, mode="bilinear")
  f = f.permute(0, 2, 3, 1).view(frames, -1, d)  # get_2dPool output
  h = w = size[0]
  f = f.view(frames, h, w, -1).permute(3, 0, 1, 2).contiguous().flatten(1, 2)  # add_token_per_grid
  nl = torch.tensor(newline)[:, None, None].expand(*f.shape[:-1], 1)
  f = torch.cat((f, nl), dim=-1).flatten(1, 2).transpose(0, 1)
  return f.numpy().reshape(frames, h * (w + 1), d)


@pytest.mark.parametrize("grid", [27, 4, 5])
def test_pooling_and_grid_newlines_equal_llava_next(grid):
  rng = np.random.default_rng(grid)
  features = rng.standard_normal((3, grid * grid, 16)).astype(np.float32)
  newline = rng.standard_normal(16).astype(np.float32)
  ours = add_row_newlines(pool_2x2(jnp.asarray(features), grid), jnp.asarray(newline))
  # float32 bilinear weights are computed differently (torch vs XLA): a few ulps of the sum
  # (seen: 5e-6 at grid 27)
  np.testing.assert_allclose(np.asarray(ours), _get_2d_pool_and_grid(features, newline, grid),
                             atol=TOL)
  if grid == 27:
    assert ours.shape[1] == 210


def _llava_params(path):
  cfg = llava_convert.config_from_checkpoint(read_config(path), delta="paper")
  return cfg, llava_convert.convert(read_checkpoint(path), cfg, path)


def test_onevision_checkpoint_converts_and_matches_torch(hf_root):
  from transformers import LlavaOnevisionForConditionalGeneration  # pylint: disable=import-outside-toplevel
  path = hf_models.onevision_dir(hf_root)
  cfg, params = _llava_params(path)
  hf = LlavaOnevisionForConditionalGeneration.from_pretrained(path).eval()
  x = hf_models.rng_inputs((2, 3, 56, 56), seed=4)
  with torch.no_grad():
    hidden = hf.model.vision_tower(torch.tensor(x), output_hidden_states=True).hidden_states[-1]
    projected = hf.model.multi_modal_projector(hidden).numpy()
    ref_tokens = _get_2d_pool_and_grid(projected, hf.model.image_newline.numpy(), cfg.vision.grid)
    ids = np.random.default_rng(5).integers(0, 1000, (1, 11))
    ref_logits = hf.lm_head(hf.model.language_model(torch.tensor(ids)).last_hidden_state).numpy()
  model = VideoLM(cfg)
  full = {**params, "delta_encoder": _delta_params(cfg)}
  tokens = model.apply({"params": full}, jnp.asarray(x.transpose(0, 2, 3, 1)),
                       method=VideoLM.keyframe_tokens)
  assert np.abs(np.asarray(tokens) - ref_tokens).max() <= TOL
  logits, _ = Qwen2(cfg.llm).apply({"params": params["llm"]}, jnp.asarray(ids))
  assert np.abs(np.asarray(logits) - ref_logits).max() <= TOL


def _delta_params(cfg):
  from cope_jax.models.checkpoints import init_delta_encoder  # pylint: disable=import-outside-toplevel
  return init_delta_encoder(cfg, jax.random.key(0))


def _as_llava_next(tensors):
  """Rename llava-hf keys to the original LLaVA-NeXT layout."""
  out = {}
  for k, v in tensors.items():
    if k.startswith("language_model.model."):
      k = "model." + k[len("language_model.model."):]
    elif k == "language_model.lm_head.weight":
      k = "lm_head.weight"
    elif k.startswith("multi_modal_projector.linear_1."):
      k = "model.mm_projector.0." + k.rsplit(".", 1)[1]
    elif k.startswith("multi_modal_projector.linear_2."):
      k = "model.mm_projector.2." + k.rsplit(".", 1)[1]
    elif k == "image_newline":
      k = "model.image_newline"
    elif k.startswith("vision_tower."):
      k = "model.vision_tower.vision_tower.vision_model." + k[len("vision_tower."):]
    out[k] = v
  return out


def test_llava_next_layout_converts_identically(hf_root, tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  path = hf_models.onevision_dir(hf_root)
  cfg, params = _llava_params(path)
  tensors = {k: np.ascontiguousarray(v) for k, v in _as_llava_next(read_checkpoint(path)).items()}
  assert "model.mm_projector.0.weight" in tensors and "model.mm_projector.2.bias" in tensors
  save_file(tensors, str(tmp_path / "model.safetensors"))
  hf_cfg = read_config(path)
  flat = {**hf_cfg["text_config"], "model_type": "llava_qwen",
          "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu",
          "mm_patch_merge_type": "spatial_unpad", "mm_newline_position": "grid",
          "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2}
  (tmp_path / "config.json").write_text(json.dumps(flat))
  # the flat config gives the same LLM (vision is so400m by name: LLaVA-NeXT stores no config)
  assert llava_convert.config_from_checkpoint(read_config(str(tmp_path))).llm == cfg.llm
  with pytest.raises(CheckpointError, match="mm_newline_position"):
    llava_convert.config_from_checkpoint({**flat, "mm_newline_position": "one_token"})
  # a key left out is LLaVA-NeXT's default, another layout than LLaVA-Video's (one newline per
  # video; no newline at all; a linear projector), or a key LLaVA-NeXT cannot do without
  for key, named in (("mm_newline_position", "missing (LLaVA-NeXT then uses 'one_token')"),
                     ("mm_patch_merge_type", "missing (LLaVA-NeXT then uses 'flat')"),
                     ("mm_projector_type", "missing (LLaVA-NeXT then uses 'linear')"),
                     ("mm_spatial_pool_mode", "missing: LLaVA-NeXT needs it"),
                     ("mm_spatial_pool_stride", "missing: LLaVA-NeXT needs it")):
    with pytest.raises(CheckpointError, match=re.escape(f"{key} is {named}")):
      llava_convert.config_from_checkpoint({k: v for k, v in flat.items() if k != key})
  llava_convert.config_from_checkpoint({**flat, "mm_patch_merge_type": "spatial"})
  for change in ({"mm_patch_merge_type": "flat"}, {"add_faster_video": True}):
    with pytest.raises(CheckpointError, match=next(iter(change))):
      llava_convert.config_from_checkpoint({**flat, **change})
  next_params = llava_convert.convert(read_checkpoint(str(tmp_path)), cfg, str(tmp_path))
  # (the same tree: zip over the leaves would pass a conversion that lost the last ones)
  assert jax.tree_util.tree_structure(next_params) == jax.tree_util.tree_structure(params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, next_params)
  assert llava_convert.detect_layout(tensors) == "llava-next"


def test_missing_or_misshaped_keys_give_clear_errors(hf_root):
  path = hf_models.onevision_dir(hf_root)
  cfg = llava_convert.config_from_checkpoint(read_config(path))
  tensors = dict(read_checkpoint(path))
  missing = {k: v for k, v in tensors.items() if k != "language_model.model.layers.1.mlp.up_proj.weight"}
  with pytest.raises(CheckpointError, match="missing tensor "
                     "'language_model.model.layers.1.mlp.up_proj.weight'") as info:
    llava_convert.convert(missing, cfg)
  # the names nearest the missing one (it suggested any three '.weight's)
  assert "(similar: ['language_model.model.layers.0.mlp.up_proj.weight'," in str(info.value)
  bad = dict(tensors)
  bad["multi_modal_projector.linear_1.weight"] = np.zeros((64, 31), np.float32)
  with pytest.raises(CheckpointError, match=r"linear_1.weight' has shape \(64, 31\).*\(64, 32\)"):
    llava_convert.convert(bad, cfg)
  with pytest.raises(CheckpointError, match="not a LLaVA"):
    llava_convert.convert({"foo": np.zeros(3)}, cfg)


def test_llava_video_command_writes_an_orbax_checkpoint(hf_root, tmp_path):
  path = hf_models.onevision_dir(hf_root)
  out = tmp_path / "stage2_init"
  r = subprocess.run([sys.executable, "-m", "cope_jax.convert", "llava-video", "--checkpoint", path,
                      "--out", str(out), "--delta", "tiny"], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr
  from cope_jax.models.checkpoints import load_params  # pylint: disable=import-outside-toplevel
  params, cfg = load_params(str(out))
  _, reference = _llava_params(path)
  np.testing.assert_array_equal(params["projector"]["linear_1"]["kernel"],
                                reference["projector"]["linear_1"]["kernel"])
  assert "delta_encoder" in params and cfg.delta.width == 64
  r = subprocess.run([sys.executable, "-m", "cope_jax.convert", "llava-video", "--checkpoint",
                      str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "config.json").write_text('{"model_type": "llava_onevision"}')
  r = subprocess.run([sys.executable, "-m", "cope_jax.convert", "llava-video", "--checkpoint",
                      str(tmp_path / "other"), "--out", str(tmp_path / "y")],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and not (tmp_path / "y").exists()
  assert r.stderr.startswith(f"error: {tmp_path / 'other' / 'config.json'}: neither text_config")
  # --out an existing file: refused before any work (Orbax hung on it)
  (tmp_path / "a_file").write_text("")
  r = subprocess.run([sys.executable, "-m", "cope_jax.convert", "llava-video", "--checkpoint", path,
                      "--out", str(tmp_path / "a_file")], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
  assert r.stderr.startswith(f"error: --out {tmp_path / 'a_file'} is a file")
  # a file on the way, or a folder no one can write: refused before converting (after it,
  # "File exists" naming the file alone; Orbax hung 5 minutes on the unwritable one)
  for bad, said in ((tmp_path / "a_file" / "x", f"{tmp_path / 'a_file'} is a file, not a folder"),
                    ("/proc/cope_x/y", "cannot write in its folder /proc")):
    r = run_main("cope_jax.convert.__main__", "llava-video", "--checkpoint", path,
                 "--out", str(bad))
    assert r.returncode == 2 and r.stderr.startswith(f"error: --out {bad}: {said}"), r.stderr
    assert len(r.stderr.splitlines()) == 1 and not os.path.exists(bad)
  # --out the checkpoint itself (its config.json was overwritten) or a workdir: refused; an
  # earlier conversion's folder is replaced whole
  before = sorted(os.listdir(path))
  r = subprocess.run([sys.executable, "-m", "cope_jax.convert", "llava-video", "--checkpoint", path,
                      "--out", path], capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith(f"error: --out {path} holds other files")
  assert sorted(os.listdir(path)) == before
  r = subprocess.run([sys.executable, "-m", "cope_jax.convert", "llava-video", "--checkpoint", path,
                      "--out", str(out), "--delta", "compact"], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr
  assert load_params(str(out))[1].delta.width == 256 and sorted(os.listdir(out)) == [
      "config.json", "params"]
  assert sorted(os.listdir(tmp_path)) == sorted(["stage2_init", "other", "a_file"])
  # --vocab-size keeps the first rows (llava-hf pads LLaVA-Video-7B's vocabulary past the
  # recipe's, which stage 2 then refused with no way forward); more rows than stored: refused
  rows = cfg.llm.vocab_size
  for n, status in ((rows - 8, 0), (rows + 1, 2)):
    r = subprocess.run([sys.executable, "-m", "cope_jax.convert", "llava-video", "--checkpoint",
                        path, "--out", str(out), "--delta", "tiny", "--vocab-size", str(n)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == status, r.stderr
  assert r.stderr.startswith(f"error: --vocab-size {rows + 1}: from 1 to the checkpoint's {rows}")
  trimmed, trimmed_cfg = load_params(str(out))
  assert trimmed_cfg.llm.vocab_size == rows - 8
  np.testing.assert_array_equal(trimmed["llm"]["embed_tokens"]["embedding"],
                                params["llm"]["embed_tokens"]["embedding"][:rows - 8])
  for part in ("lm_head",) if "lm_head" in params["llm"] else ():
    np.testing.assert_array_equal(trimmed["llm"][part]["kernel"],
                                  params["llm"][part]["kernel"][:, :rows - 8])
  from cope_jax.codec.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import check_same_model  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match=f"convert it again with --vocab-size {rows - 8}"):
    check_same_model("init_checkpoint", "x", trimmed_cfg, cfg, ("llm",))


@pytest.mark.parametrize("top,text,tied", [(None, True, True), (True, False, True),
                                           (False, False, False), (None, None, False)])
def test_either_tie_flag_lets_the_embedding_stand_for_a_missing_head(top, text, tied):
  hf = {"text_config": {} if text is None else {"tie_word_embeddings": text}}
  if top is not None:
    hf["tie_word_embeddings"] = top
  assert llava_convert.tied_embeddings(hf) is tied


def test_a_checkpoint_folder_is_read_as_transformers_reads_it_or_refused(hf_root, tmp_path):
  """``model.safetensors`` first, whatever lies beside it (transformers loads it before any shard
  index: reading a stale index's shards gave logits 0.58 off); without it, a second file holding
  the model's tensors (an adapter, no index) or a second index would silently replace weights:
  refused by name."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "qwen2"
  shutil.copytree(hf_models.qwen2_dir(hf_root, 1024, 4, 2), folder)
  norm = np.array(read_checkpoint(str(folder))["model.norm.weight"])
  save_file({"model.norm.weight": np.zeros(64, np.float32)}, str(folder / "adapter.safetensors"))
  (folder / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"model.norm.weight": "adapter.safetensors"}}))
  np.testing.assert_array_equal(read_checkpoint(str(folder))["model.norm.weight"], norm)
  os.remove(folder / "model.safetensors.index.json")
  os.rename(folder / "model.safetensors", folder / "model-00001-of-00001.safetensors")
  with pytest.raises(CheckpointError, match="'model.norm.weight' is in both adapter.safetensors "
                                            "and model-00001-of-00001.safetensors"):
    read_checkpoint(str(folder))
  for name in ("a.safetensors.index.json", "b.safetensors.index.json"):
    (folder / name).write_text(json.dumps({"weight_map": {"model.norm.weight": "model.safetensors"}}))
  with pytest.raises(CheckpointError, match="several shard indexes"):
    read_checkpoint(str(folder))
