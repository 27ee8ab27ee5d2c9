"""What the converters refuse, by name and in one ``error:`` line: settings our modules do not
compute (activations), config values that cannot describe a model, safetensors files cut short,
broken shard indexes, and unusable ``hf-forward`` inputs or outputs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import hf_models
from cope_jax.convert import llava_convert, qwen2_convert, siglip_convert
from cope_jax.convert.safetensors_io import CheckpointError, read_checkpoint

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("hf_models"))


def _forward(hf_dir, inputs, out):
  return subprocess.run([sys.executable, "-m", "cope_jax.convert", "hf-forward", "--hf-dir",
                         str(hf_dir), "--inputs", str(inputs), "--out", str(out)],
                        capture_output=True, text=True, timeout=300)


def _one_error_line(r, *named):
  assert r.returncode == 2 and r.stderr.startswith("error: "), r.stderr[-2000:]
  assert len(r.stderr.strip().splitlines()) == 1 and all(n in r.stderr for n in named), r.stderr


def test_activations_our_modules_do_not_compute_are_refused():
  """A Qwen2 with GELU converted cleanly and differed by 1e-3; a SigLIP with ReLU by 0.5."""
  from transformers import (LlavaOnevisionConfig, Qwen2Config,  # pylint: disable=import-outside-toplevel
                            SiglipVisionConfig)
  assert qwen2_convert.config_from_hf(Qwen2Config().to_dict()).num_layers > 0
  with pytest.raises(CheckpointError, match="hidden_act='gelu': only 'silu'"):
    qwen2_convert.config_from_hf(Qwen2Config(hidden_act="gelu").to_dict())
  assert siglip_convert.config_from_hf(SiglipVisionConfig().to_dict()).num_layers > 0
  with pytest.raises(CheckpointError, match="hidden_act='relu': only 'gelu_pytorch_tanh'"):
    siglip_convert.config_from_hf(SiglipVisionConfig(hidden_act="relu").to_dict())
  hf = LlavaOnevisionConfig(text_config=Qwen2Config().to_dict(),
                            vision_config=SiglipVisionConfig().to_dict()).to_dict()
  hf["vision_feature_layer"] = -1
  # a converted model attends in blocks of 1024 queries (exact: test_videolm), so a long prompt
  # never holds all its scores at once
  assert llava_convert.config_from_checkpoint(hf, "tiny").llm.attention_chunk == 1024
  with pytest.raises(CheckpointError, match="projector_hidden_act='relu': only 'gelu'"):
    llava_convert.config_from_checkpoint({**hf, "projector_hidden_act": "relu"}, "tiny")
  with pytest.raises(CheckpointError, match="vision_feature_select_strategy='default': only"):
    llava_convert.config_from_checkpoint({**hf, "vision_feature_select_strategy": "default"},
                                         "tiny")
  # a null text_config is the text model's defaults, as in transformers; other non-objects are
  # one error line (they were AttributeError tracebacks)
  assert llava_convert.config_from_checkpoint({**hf, "text_config": None}, "tiny").llm == (
      llava_convert.config_from_checkpoint({**hf, "text_config": {}}, "tiny").llm)
  with pytest.raises(CheckpointError, match="text_config is 'qwen2', not an object"):
    llava_convert.config_from_checkpoint({**hf, "text_config": "qwen2"}, "tiny")
  with pytest.raises(CheckpointError, match="rope_scaling 'linear': not an object"):
    qwen2_convert.config_from_hf({"rope_scaling": "linear"})


def test_fields_a_config_leaves_out_take_the_transformers_defaults():
  from transformers import Qwen2Config, SiglipVisionConfig  # pylint: disable=import-outside-toplevel
  # num_key_value_heads left out is 32 in transformers, not num_attention_heads
  for given in ({}, {"num_attention_heads": 64, "hidden_size": 1024}):
    hf, ours = Qwen2Config.from_dict(given), qwen2_convert.config_from_hf(given)
    assert (ours.vocab_size, ours.hidden_size, ours.intermediate_size, ours.num_layers,
            ours.num_heads, ours.num_kv_heads) == (
                hf.vocab_size, hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers,
                hf.num_attention_heads, hf.num_key_value_heads)
  with pytest.raises(CheckpointError, match="num_attention_heads 8 and num_key_value_heads 32"):
    qwen2_convert.config_from_hf({"num_attention_heads": 8})  # (transformers: 32 kv heads too)
  hf, ours = SiglipVisionConfig.from_dict({}), siglip_convert.config_from_hf({})
  assert (ours.hidden_size, ours.intermediate_size, ours.num_layers, ours.num_heads,
          ours.patch_size, ours.image_size) == (
              hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers,
              hf.num_attention_heads, hf.patch_size, hf.image_size)


@pytest.mark.parametrize("change,named", [
    ({"num_attention_heads": 0}, "num_attention_heads must be a whole number >= 1, got 0"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a whole number >= 1, got 0"),
    ({"vocab_size": "97"}, "vocab_size must be a whole number >= 1, got '97'"),
    ({"hidden_size": 2.5}, "hidden_size must be a whole number >= 1, got 2.5"),
    ({"num_key_value_heads": 3}, "hidden_size 64, num_attention_heads 4 and num_key_value_heads 3"),
    ({"max_position_embeddings": 0}, "max_position_embeddings must be a whole number >= 1, got 0"),
])
def test_config_values_that_describe_no_model_are_one_error_line(hf_root, tmp_path, change,
                                                                 named):
  folder = tmp_path / "qwen2"
  shutil.copytree(hf_models.qwen2_dir(hf_root, 97, 4, 2), folder)
  config = json.loads((folder / "config.json").read_text())
  for key, value in change.items():
    if value is None:
      del config[key]
    else:
      config[key] = value
  (folder / "config.json").write_text(json.dumps(config))
  np.savez(tmp_path / "in.npz", input_ids=np.zeros((1, 3), np.int64))
  _one_error_line(_forward(folder, tmp_path / "in.npz", tmp_path / "out.npz"),
                  f"{folder / 'config.json'}: {named}")


def test_a_llava_config_without_its_vision_config_is_named_so():
  """It was a bare KeyError: "error: 'vision_config'"."""
  with pytest.raises(CheckpointError, match="text_config but no vision_config"):
    llava_convert.config_from_checkpoint({"text_config": {}})


def test_a_checkpoint_folder_that_is_not_there_is_named_so(tmp_path):
  """It said "no config.json", as if the folder were there."""
  from cope_jax.convert.safetensors_io import read_config  # pylint: disable=import-outside-toplevel
  with pytest.raises(CheckpointError, match="gone: no such folder"):
    read_config(str(tmp_path / "gone"))
  (tmp_path / "file").write_text("")
  with pytest.raises(CheckpointError, match="file: not a folder"):
    read_config(str(tmp_path / "file"))
  with pytest.raises(CheckpointError, match=": no config.json"):
    read_config(str(tmp_path))


def test_a_safetensors_file_cut_short_or_a_broken_index_is_refused(hf_root, tmp_path):
  folder = tmp_path / "qwen2"
  shutil.copytree(hf_models.qwen2_dir(hf_root, 97, 4, 2), folder)
  model = folder / "model.safetensors"
  whole = model.read_bytes()
  model.write_bytes(whole[:int(len(whole) * 0.9)])
  with pytest.raises(CheckpointError, match="model.safetensors: tensor .* the file is cut short"):
    read_checkpoint(str(folder))
  np.savez(tmp_path / "in.npz", input_ids=np.zeros((1, 3), np.int64))
  _one_error_line(_forward(folder, tmp_path / "in.npz", tmp_path / "out.npz"), "cut short")
  # a clone without git-lfs: its 8 first bytes read as a ~2 EB header (a MemoryError traceback)
  model.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
  _one_error_line(_forward(folder, tmp_path / "in.npz", tmp_path / "out.npz"),
                  "not a safetensors file", "Git LFS pointer")
  model.write_bytes(whole)
  os.rename(model, folder / "model-00001-of-00001.safetensors")  # (model.safetensors goes first)
  (folder / "model.safetensors.index.json").write_text("{bad")
  with pytest.raises(CheckpointError, match="index.json: not a shard index with a weight_map"):
    read_checkpoint(str(folder))


def test_hf_forward_inputs_cut_short_and_an_out_folder_are_one_error_line(hf_root, tmp_path):
  path = hf_models.qwen2_dir(hf_root, 97, 4, 2)
  np.savez(tmp_path / "in.npz", input_ids=np.zeros((1, 3), np.int64))
  whole = (tmp_path / "in.npz").read_bytes()
  (tmp_path / "cut.npz").write_bytes(whole[:len(whole) // 2])
  np.savez(tmp_path / "objects.npz", input_ids=np.array([None, 1], dtype=object))
  for name in ("cut.npz", "objects.npz"):
    _one_error_line(_forward(path, tmp_path / name, tmp_path / "out.npz"),
                    f"{tmp_path / name}: not a .npz of arrays")
  (tmp_path / "folder").mkdir()
  _one_error_line(_forward(path, tmp_path / "in.npz", tmp_path / "folder"), "is a folder")
  # past the model's positions (its logits alone would take 78 GB: an out-of-memory traceback)
  np.savez(tmp_path / "long.npz", input_ids=np.zeros((1, 40_000), np.int64))
  _one_error_line(_forward(path, tmp_path / "long.npz", tmp_path / "out.npz"),
                  "input_ids of 40000 positions exceed the model's 32768")
  # no rows or no positions: refused (a SigLIP's empty batch was a ZeroDivisionError)
  for shape in ((0, 3), (1, 0)):
    np.savez(tmp_path / "empty.npz", input_ids=np.zeros(shape, np.int64))
    _one_error_line(_forward(path, tmp_path / "empty.npz", tmp_path / "out.npz"),
                    "B and L at least 1")
  np.savez(tmp_path / "empty.npz", pixel_values=np.zeros((0, 3, 56, 56), np.float32))
  _one_error_line(_forward(hf_models.siglip_dir(hf_root), tmp_path / "empty.npz",
                           tmp_path / "out.npz"), "needs numeric 'pixel_values' (B, 3, 56, 56)")
  np.savez(tmp_path / "empty.npz", pixel_values=np.full((1, 3, 56, 56), "a"))  # (a traceback)
  _one_error_line(_forward(hf_models.siglip_dir(hf_root), tmp_path / "empty.npz",
                           tmp_path / "out.npz"), "needs numeric 'pixel_values'", "<U1")
  assert sorted(os.listdir(tmp_path)) == ["cut.npz", "empty.npz", "folder", "in.npz", "long.npz",
                                          "objects.npz"]


@pytest.mark.parametrize("settings,refused", [
    ({}, None),
    ({"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}},
     "only plain RoPE"),
    ({"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0},
     "sliding-window attention"),
    # what transformers computes as our model does: no layer past max_window_layers, no window
    ({"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}, None),
    ({"use_sliding_window": True, "sliding_window": None, "max_window_layers": 0}, None),
    ({"layer_types": ["full_attention", "sliding_attention"]}, None),  # no window: full
    ({"layer_types": ["full_attention", "sliding_attention"], "use_sliding_window": True,
      "sliding_window": 8}, "sliding-window attention"),
])
def test_qwen2_configs_our_model_does_not_compute_are_refused(settings, refused):
  """As transformers writes them: RoPE scaling and sliding windows would convert into other
  logits (4e-3 and 0.3 off on a tiny model), so they are refused by name."""
  from transformers import Qwen2Config  # pylint: disable=import-outside-toplevel
  hf = Qwen2Config(num_hidden_layers=2, **settings).to_dict()
  if refused is None:
    assert qwen2_convert.config_from_hf(hf).rope_theta == hf["rope_parameters"]["rope_theta"]
  else:
    with pytest.raises(CheckpointError, match=refused):
      qwen2_convert.config_from_hf(hf)


@pytest.mark.parametrize("raw", [
    {"num_key_value_heads": None},  # one per query head
    {"hidden_act": "swish"},        # SiLU's other name
    {"rope_theta": 5e5, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
])
def test_qwen2_config_json_is_read_as_transformers_reads_it(raw):
  """Each was refused or read otherwise than transformers 5 (which takes rope_parameters'
  theta before a top-level one)."""
  from transformers import Qwen2Config  # pylint: disable=import-outside-toplevel
  hf = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
        "num_key_value_heads": 2, **raw}
  ref, ours = Qwen2Config(**hf), qwen2_convert.config_from_hf(hf)
  assert (ours.num_kv_heads, ours.rope_theta) == (ref.num_key_value_heads,
                                                  ref.rope_parameters["rope_theta"])


def test_converting_holds_the_model_about_once_in_memory():
  """Every layer's float32 copy was kept in a list, then stacked: twice the converted model at
  the peak (about 60 GB for LLaVA-Video-7B's LLM). Layers now fill the stacked arrays as they
  are read: the peak is the result and a layer or two."""
  import tracemalloc  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  from cope_jax.convert.tree import TensorSource  # pylint: disable=import-outside-toplevel
  d, f, kv, layers, vocab = 256, 1024, 64, 12, 512
  cfg = qwen2_convert.config_from_hf({"vocab_size": vocab, "hidden_size": d,
                                      "intermediate_size": f, "num_hidden_layers": layers,
                                      "num_attention_heads": 4, "num_key_value_heads": 1})
  rng = np.random.default_rng(0)
  shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,),
            "lm_head.weight": (vocab, d)}
  for i in range(layers):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                   p + "self_attn.q_proj.weight": (d, d), p + "self_attn.q_proj.bias": (d,),
                   p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.k_proj.bias": (kv,),
                   p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.v_proj.bias": (kv,),
                   p + "self_attn.o_proj.weight": (d, d), p + "mlp.gate_proj.weight": (f, d),
                   p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f)})
  tensors = {k: rng.standard_normal(s, np.float32).astype(ml_dtypes.bfloat16)
             for k, s in shapes.items()}
  tracemalloc.start()
  try:
    params = qwen2_convert.convert(TensorSource(tensors, "synthetic"), cfg)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  result = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
  assert peak < 1.25 * result, (peak, result)
  one = params["layers"]["mlp"]["up_proj"]["kernel"]
  assert one.shape == (layers, d, f)
  np.testing.assert_array_equal(one[5], np.asarray(tensors["model.layers.5.mlp.up_proj.weight"],
                                                   np.float32).T)


def test_saving_a_converted_model_copies_none_of_it(tmp_path):
  """Orbax copied every numpy array before writing it: a converted 7B's 30 GB about twice more
  at the save's peak, past a 64 GB host that the conversion itself fits."""
  import tracemalloc  # pylint: disable=import-outside-toplevel
  from orbax.checkpoint import type_handlers  # pylint: disable=import-outside-toplevel
  from cope_jax.models import checkpoints, presets  # pylint: disable=import-outside-toplevel
  params = {f"w{i}": np.full((1024, 1024), i, np.float32) for i in range(16)}  # 64 MiB
  tracemalloc.start()
  try:
    checkpoints.save_params(str(tmp_path / "out"), params, presets.video_lm("tiny"))
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < 0.25 * sum(x.nbytes for x in params.values()), peak  # (was 1.1×)
  assert type_handlers.get_type_handler(np.ndarray)._deepcopy_host_arrays  # the default back
  loaded, _ = checkpoints.load_params(str(tmp_path / "out"))
  np.testing.assert_array_equal(loaded["w7"], params["w7"])
