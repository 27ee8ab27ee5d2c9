"""The three-line API::

    from cope_jax.infer.api import CoPE
    model = CoPE.load("/tmp/stage2")                      # a stage-2 workdir or a converted checkpoint
    print(model.ask("video.mp4", "What happens?").text)   # also .ttft_s, .e2e_s, .extract_s, …
    model.rank_options("video.mp4", "Where does it go?", ["left", "right"]).best  # 0 or 1

Video → codec primitives (re-encoded if needed) → keyframe and Δ-tokens → KV-cache generation.
``extract_s`` is the video-to-primitives time; ``ttft_s`` runs from primitives in memory to the
first generated token (preprocessing, tokenising, prefill, first sample); ``e2e_s`` to the last;
both leave out ``compile_s``, the time JAX spent compiling during the call (a new prompt
bucket, small eager operations on first use).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from cope_jax.codec.errors import ConfigError, VideoError
from cope_jax.codec.sampling import KEYFRAME, SamplingConfig, plan_positions
from cope_jax.data.pipeline import siglip_pixels, with_video_prompt
from cope_jax.data.tokenizer import generation_prompt, ids_past_vocabulary
from cope_jax.infer import DENSE_FRAMES, MODES, PromptTooLong, mode_sampling
from cope_jax.json_files import read_json

MODEL_PARTS = {"vision_tower", "projector", "delta_encoder", "llm", "image_newline"}


def prompt_bucket(positions: int) -> int:
  """The padded prompt length: four buckets per power of two (at most 25 % padding, so modes of
  different lengths are timed on nearly their own length), at least 64."""
  n = max(positions, 64)
  step = 1 << ((n - 1).bit_length() - 3)
  return -(-n // step) * step


@dataclasses.dataclass
class Answer:
  text: str
  mode: str
  ttft_s: float
  e2e_s: float
  extract_s: float
  compile_s: float  # JAX's compilation during the call (left out of ttft_s and e2e_s)
  visual_tokens: int
  prompt_tokens: int
  new_tokens: int

  def to_json(self) -> dict:
    return {"answer": self.text, **{k: v for k, v in dataclasses.asdict(self).items()
                                    if k != "text"}}


@dataclasses.dataclass
class RankedOptions:
  log_likelihoods: list[float]  # of each option's text and <|im_end|> as the whole answer
  best: int                     # the index of the most likely option
  mode: str
  visual_tokens: int
  prompt_tokens: int


@dataclasses.dataclass
class VideoInputs:
  """A video's frames for one mode, before preprocessing."""
  kinds: np.ndarray
  times: np.ndarray
  rgb: np.ndarray
  mv: np.ndarray
  residual: np.ndarray
  duration_s: float
  extract_s: float
  sampling: str  # the frames of "dense", "keyframes" or "cope" (cope_zero_delta reads cope's)

  def check_fits(self, mode: str) -> None:
    """ValueError unless these frames are the ones ``mode`` reads."""
    wanted = "cope" if mode == "cope_zero_delta" else mode
    if self.sampling != wanted:
      raise ValueError(f"inputs sampled for {self.sampling!r} cannot be asked in mode {mode!r}, "
                       f"which reads {wanted!r} frames: pass video_inputs(video, {mode!r})")


def _recorded_tokenizer(path: str, recorded: str) -> str:
  """The tokenizer a workdir's train_config.json names, as a path on this machine: training
  records cope_jax's Qwen2 build by its cache path on the machine that trained (a TPU host's
  home), which is rebuilt here offline; any other file must be there or named."""
  if os.path.isfile(recorded):
    return recorded
  if os.path.basename(recorded) == "qwen2_tokenizer.json":
    from cope_jax.data.tokenizer import qwen2_tokenizer_file  # pylint: disable=import-outside-toplevel
    return qwen2_tokenizer_file()
  raise FileNotFoundError(f"{recorded}: the tokenizer {os.path.join(path, 'train_config.json')} "
                          "names is not on this machine (--tokenizer FILE, or "
                          "CoPE.load(..., tokenizer=FILE), names where it is)")


def _from_train_config(workdir: str, train: dict, key: str, what: str, load):
  """``load(train[key])``: a part a training workdir's checkpoint lacks, from the checkpoint its
  train_config.json names (a path on the machine that trained, like the tokenizer); unreadable,
  a FileNotFoundError saying where the path came from."""
  try:
    return load(train[key])
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{workdir}: the checkpoint lacks {what}, to be taken from its {key} "
                            f"(train_config.json), which cannot be read: {e}") from None


def check_params_fit(path: str, config_file: str, cfg, params: dict) -> None:
  """ValueError naming the first parameter whose shape the model of ``cfg`` does not make (a
  config edited, copied or left from another run): it failed only at the first question, with
  Flax's or scan's error."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from cope_jax.models.llava import VideoLM, init_inputs  # pylint: disable=import-outside-toplevel
  made = jax.eval_shape(lambda key: nn.meta.unbox(VideoLM(cfg).init(
      key, *init_inputs(cfg, cfg.delta.patch))["params"]), jax.random.key(0))
  held = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for name, leaf in jax.tree_util.tree_flatten_with_path(made)[0]:
    saved = held.pop(name, None)
    if saved is None or tuple(np.shape(saved)) != leaf.shape:
      where = jax.tree_util.keystr(name, simple=True, separator=".")
      raise ValueError(f"{path}: its {config_file} describes another model than its checkpoint "
                       f"({where}: " + ("not in the checkpoint" if saved is None else
                       f"{tuple(np.shape(saved))} there, {leaf.shape} by the config") + ")")
  if held:
    extra = jax.tree_util.keystr(next(iter(held)), simple=True, separator=".")
    raise ValueError(f"{path}: its {config_file} describes another model than its checkpoint "
                     f"(the checkpoint holds {extra}, which that model has not)")


class CoPE:

  def __init__(self, cfg, params, tokenizer, codec_size: int, untrained_delta: str = ""):
    from cope_jax.infer.generation import Generator  # pylint: disable=import-outside-toplevel
    most = cfg.delta.patch * cfg.delta.max_grid  # (the Δ-encoder's grid position tables)
    if codec_size % cfg.delta.patch or not cfg.delta.patch <= codec_size <= most:
      raise ValueError(f"codec_size {codec_size}: the Δ-encoder takes multiples of "
                       f"{cfg.delta.patch} up to {most} pixels")
    self.cfg, self.tok = cfg, tokenizer
    self.codec_size, self.image_size = codec_size, cfg.vision.image_size
    # why the Δ-encoder is not a trained one ("" if it is): the dense and keyframes modes only
    self.untrained_delta = untrained_delta
    self.generator = Generator(cfg, params, tokenizer.token_to_id("<|im_end|>"))

  @classmethod
  def load(cls, path: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
           codec_size: int | None = None) -> "CoPE":
    """A stage-2 workdir (newest checkpoint; frozen parts from its stage1_checkpoint (the
    Δ-encoder) and init_checkpoint (the rest), as training took them) or a folder
    written by ``convert llava-video``. A workdir trained on RGB frames only (no Δ-encoder in
    its checkpoint, no init_checkpoint: the demo's base model) and a converted checkpoint (its
    Δ-encoder freshly initialised) answer in the dense and keyframes modes. ``codec_size``: the re-encoded frame side (default: the
    workdir's, or the paper's 384 for a converted checkpoint). The weights are read into host
    memory whatever devices trained them, then placed on the first device."""
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    from cope_jax.models import checkpoints, config_io  # pylint: disable=import-outside-toplevel
    path = os.fspath(path)  # (the tokenizers library takes str only)
    tokenizer = os.fspath(tokenizer) if tokenizer else tokenizer
    untrained_delta = ""
    if os.path.exists(os.path.join(path, "model_config.json")):
      cfg = config_io.load(os.path.join(path, "model_config.json"))
      train = read_json(os.path.join(path, "train_config.json"))
      if train.get("stage") == "pretrain":
        raise ValueError(f"{path}: a stage-1 (Δ-encoder pre-training) workdir, which answers "
                         "nothing: give a stage-2 workdir (its next-frame retrieval: python -m "
                         "cope_jax.infer.retrieval)")
      from cope_jax.train.checkpointing import latest_params  # pylint: disable=import-outside-toplevel
      params = dict(latest_params(path))
      if "delta_encoder" not in params and train.get("stage1_checkpoint"):
        # A Δ-encoder kept frozen in stage 2 is stage 1's, as training took it (not the
        # init_checkpoint's copy, which training dropped).
        params["delta_encoder"] = _from_train_config(
            path, train, "stage1_checkpoint", "the Δ-encoder (kept frozen in stage 2)",
            lambda p: latest_params(p)["delta_encoder"])
      missing = sorted(MODEL_PARTS - set(params))
      codec = codec_size or train["codec_size"]
      if missing == ["delta_encoder"] and not train.get("init_checkpoint"):
        # Trained on RGB frames only (the demo's base model): a zero Δ-encoder makes the
        # parameter tree whole; the modes that would run it are refused.
        params["delta_encoder"] = checkpoints.zero_delta_encoder(cfg)
        untrained_delta = "this model was trained on RGB frames only (its checkpoint has none)"
      elif missing:
        if not train.get("init_checkpoint"):
          raise FileNotFoundError(f"{path}: the checkpoint lacks {missing} (parts the run did "
                                  "not train) and the run had no init_checkpoint to take them "
                                  "from")
        base, _ = _from_train_config(path, train, "init_checkpoint",
                                     f"{missing} (parts the run did not train)",
                                     checkpoints.load_params)
        params = {**base, **params}
      if not tokenizer and train.get("tokenizer"):
        tokenizer = _recorded_tokenizer(path, train["tokenizer"])
    elif os.path.exists(os.path.join(path, "config.json")):
      params, cfg = checkpoints.load_params(path)
      codec = codec_size or 384
      # (``convert llava-video`` and the demo's base export give a fresh Δ-encoder to train)
      untrained_delta = ("this is a converted checkpoint, whose Δ-encoder is freshly initialised "
                         "for training (stages 1 and 2 train it)")
    else:
      raise FileNotFoundError(f"{path}: neither a training workdir (model_config.json) nor a "
                              "converted checkpoint (config.json)")
    check_params_fit(path, "model_config.json" if os.path.exists(
        os.path.join(path, "model_config.json")) else "config.json", cfg, params)
    if not tokenizer:
      from cope_jax.data.tokenizer import qwen2_tokenizer_file  # pylint: disable=import-outside-toplevel
      tokenizer = qwen2_tokenizer_file()
    if not os.path.isfile(tokenizer):
      raise FileNotFoundError(f"{tokenizer}: no such tokenizer file (--tokenizer FILE, or "
                              "CoPE.load(..., tokenizer=FILE), names another)")
    try:
      tok = Tokenizer.from_file(tokenizer)
    except Exception as e:  # pylint: disable=broad-except  (the library raises plain Exception)
      raise ValueError(f"{tokenizer}: not a tokenizers JSON file ({e})") from None
    if tok.token_to_id("<|im_end|>") is None:  # (the token generation stops at)
      raise ValueError(f"{tokenizer}: has no <|im_end|> token: not a Qwen2 chat tokenizer")
    if problem := ids_past_vocabulary(tok, cfg.llm.vocab_size):
      raise ValueError(f"{tokenizer} {problem}: not the tokenizer the model was trained with "
                       "(--tokenizer FILE names that one)")
    return cls(cfg, params, tok, codec, untrained_delta)

  def check_mode(self, mode: str) -> None:
    """ValueError unless this model can answer in ``mode``."""
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if self.untrained_delta and mode not in ("dense", "keyframes"):
      raise ValueError(f"mode {mode!r} needs a trained Δ-encoder; {self.untrained_delta}: use "
                       "dense or keyframes")

  def video_inputs(self, video: str, mode: str = "cope", keyframes_per_gop: int = 1,
                   dense_frames: int = DENSE_FRAMES, min_change: float = 0.0) -> VideoInputs:
    """The frames a mode uses: CoPE positions, keyframes only, or ``dense_frames`` uniform RGB
    frames. ``min_change`` > 0 (the cope modes): adaptive fusion (``codec.sampling``), Δ
    positions that hardly changed are left out."""
    self.check_mode(mode)
    if mode == "dense" and dense_frames < 1:  # (0 is "not uniform" to SamplingConfig)
      raise ConfigError(f"dense_frames must be at least 1, got {dense_frames}")
    start = time.perf_counter()
    if mode == "dense":  # (no keyframes: K is not used, as the command line only warns)
      mode_sampling(mode, 1, min_change)
      return self._dense(video, dense_frames, start)
    sampling = mode_sampling(mode, keyframes_per_gop, min_change)
    from cope_jax.codec.extract import extract_primitives  # pylint: disable=import-outside-toplevel
    # min_frames=1: a clip shorter than one fusion window is one keyframe and no Δ-frame, as
    # the budget counts it, and every mode answers about the same videos
    p = extract_primitives(video, size=self.codec_size, sampling=sampling, min_frames=1)
    kinds, times, mv, residual = p.kinds, p.times, p.mv, p.residual
    if mode == "keyframes":
      keep = kinds == KEYFRAME
      kinds, times = kinds[keep], times[keep]
      mv, residual = mv[:0], residual[:0]
    return VideoInputs(kinds, times, p.rgb, mv, residual, p.num_frames / 30.0,
                       time.perf_counter() - start, "keyframes" if mode == "keyframes" else "cope")

  def _dense(self, video, n, start) -> VideoInputs:
    from cope_jax.codec.extract import count_frames  # pylint: disable=import-outside-toplevel
    from cope_jax.codec.probe import decode_frames, open_video  # pylint: disable=import-outside-toplevel
    from cope_jax.codec.reencode import EncodeSpec, conformant_video  # pylint: disable=import-outside-toplevel
    with conformant_video(video, EncodeSpec(size=self.codec_size)) as (path, _):
      total = count_frames(path)
      wanted = plan_positions(total, SamplingConfig(uniform_frames=n)).frames
      frames, taken, keep = [], [], set(wanted.tolist())
      with open_video(path) as (container, stream):
        for i, frame in enumerate(decode_frames(video, container, stream)):
          if i in keep:
            frames.append(frame.to_ndarray(format="rgb24"))
            taken.append(i)  # (decoding stops early at a damaged packet)
    if not frames:
      raise VideoError(video, "no frame could be decoded")
    c = self.codec_size
    times = (np.asarray(taken) / 30.0).astype(np.float32)
    return VideoInputs(np.zeros(len(frames), np.uint8), times, np.stack(frames),
                       np.zeros((0, c, c, 2), np.float32), np.zeros((0, c, c, 3), np.int16),
                       total / 30.0, time.perf_counter() - start, "dense")

  def model_inputs(self, v: VideoInputs, question: str):
    """Batch-of-one model inputs (text padded to a length bucket) and the token counts."""
    visual = int(self.cfg.visual_positions(v.kinds))
    turns = with_video_prompt([("user", question)], v.duration_s, v.times.tolist())
    ids = generation_prompt(self.tok, turns[0][1])
    need = len(ids) - 1 + visual  # the placeholder becomes the visual tokens
    if need > self.cfg.llm.max_positions:
      raise PromptTooLong(f"{need} prompt positions exceed the model's "
                          f"{self.cfg.llm.max_positions}")
    # Padding slots take no RoPE position, only cache slots: a bucket may pass max_positions.
    length = prompt_bucket(need)
    text = np.full((1, length), self.tok.token_to_id("<|endoftext|>"), np.int32)
    text[0, :len(ids)] = ids
    mask = np.zeros((1, length), bool)
    mask[0, :len(ids)] = True
    pixels = np.stack([siglip_pixels(f, self.image_size) for f in v.rgb])[None]
    kinds = v.kinds.astype(np.int32)[None]
    # No Δ-frames (dense, keyframes): (1, 0, H, W, …) primitives, and no Δ-encoder runs.
    return (text, mask, pixels, v.mv[None], v.residual[None], kinds), visual, need

  def _checked_inputs(self, video, mode, keyframes_per_gop, dense_frames, min_change,
                      inputs: VideoInputs | None) -> VideoInputs:
    """The frames given (checked: the mode against this model — an RGB-only one has no
    Δ-encoder to run — and the frames against the mode, or a dense answer would be reported for
    cope's frames), or extracted (``video_inputs`` checks the mode)."""
    if inputs is None:
      return self.video_inputs(video, mode, keyframes_per_gop, dense_frames, min_change)
    self.check_mode(mode)
    inputs.check_fits(mode)
    return inputs

  def ask(self, video: str, question: str, mode: str = "cope", keyframes_per_gop: int = 1,
          max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
          inputs: VideoInputs | None = None, min_change: float = 0.0,
          dense_frames: int = DENSE_FRAMES, seed: int = 0) -> Answer:
    """Answers ``question`` about ``video`` (pass ``inputs`` to reuse extracted frames: then
    ``keyframes_per_gop``, ``min_change`` (adaptive fusion) and ``dense_frames`` are theirs).
    ``seed`` picks the sampling stream when ``temperature`` > 0."""
    from cope_jax.infer.sampling import SamplingOptions  # pylint: disable=import-outside-toplevel
    # (checked before the video is extracted: a long one took its time before a typo was said)
    sampling = SamplingOptions(max_new_tokens, temperature, top_p, seed)
    v = self._checked_inputs(video, mode, keyframes_per_gop, dense_frames, min_change, inputs)
    start = time.perf_counter()  # primitives in memory
    # Host arrays go to the jitted prefill as they are: its C++ argument path moves them, 0.6 ms
    # sooner than a jax.device_put of the six first (demo cope prompts, 12.1 vs 12.7 ms).
    batch, visual, prompt_tokens = self.model_inputs(v, question)
    tokens, timings, _ = self.generator.generate(
        batch, sampling,
        zero_delta=mode == "cope_zero_delta", start=start)
    ids = [t for t in tokens[0] if t != self.generator.eos_id]
    return Answer(self.tok.decode(ids).strip(), mode, timings["ttft_s"], timings["e2e_s"],
                  v.extract_s, timings["compile_s"], visual, prompt_tokens, timings["new_tokens"])

  def rank_options(self, video: str, question: str, options: list[str], mode: str = "cope",
                   keyframes_per_gop: int = 1, inputs: VideoInputs | None = None,
                   min_change: float = 0.0, dense_frames: int = DENSE_FRAMES) -> RankedOptions:
    """Ranks ``options`` by the model's log-likelihood of each one's text, then <|im_end|>, as the
    answer to ``question`` asked alone (lm-eval-harness's multiple-choice scoring, for models
    that do not follow the "answer with the option's letter" instruction); nothing is
    generated."""
    if isinstance(options, str) or not options:  # (a string ranked its characters)
      raise ValueError(f"rank_options needs a list of at least one option, got {options!r}")
    v = self._checked_inputs(video, mode, keyframes_per_gop, dense_frames, min_change, inputs)
    batch, visual, prompt_tokens = self.model_inputs(v, question)
    answers = [self.tok.encode(o, add_special_tokens=False).ids + [self.generator.eos_id]
               for o in options]
    scores = self.generator.score(batch, answers, zero_delta=mode == "cope_zero_delta")
    return RankedOptions([float(x) for x in scores], int(np.argmax(scores)), mode, visual,
                         prompt_tokens)
