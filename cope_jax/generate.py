"""``python -m cope_jax.generate --workdir DIR --video VIDEO --question TEXT [--mode …] [--json]``

Answers a question about a video with a trained model. With ``--json`` prints
``answer``, ``ttft_s``, ``e2e_s``, ``visual_tokens``, ``prompt_tokens`` (and ``extract_s``,
``compile_s``, ``mode``, ``new_tokens``). ``ttft_s`` and ``e2e_s`` leave out compilation, which
a one-off command always pays: ``compile_s``; a newly compiled prefill also runs twice, and the
second run is timed (a program's first run is several times slower). The first call in a process
still pays one-off JAX set-up that is not compilation, and the decode step's first, slower runs
in ``e2e_s``: ``--repeat N`` asks N times and reports the warm calls' medians, with the first
call's as ``ttft_cold_s`` and ``e2e_cold_s``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys

from cope_jax.codec.errors import VideoError
from cope_jax.codec.sampling_flags import add_min_change_flag
from cope_jax.command_line import ArgumentParser, exit_on_sigterm
from cope_jax.infer import MODES, PromptTooLong, mode_sampling, settle_mode_flags


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(prog="python -m cope_jax.generate", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a stage-2 workdir or converted checkpoint "
                      "(a workdir trained on RGB frames only, as the demo's base model, and a "
                      "converted checkpoint, whose Δ-encoder is untrained: the dense and "
                      "keyframes modes)")
  parser.add_argument("--video", required=True, help="any video PyAV reads (re-encoded if needed)")
  parser.add_argument("--tokenizer", default=None,
                      help="the tokenizer.json (Hugging Face tokenizers' format) to use "
                           "(default: the one the model was trained with, as its "
                           "train_config.json names it — a path on the machine that trained it "
                           "— or Qwen2's for a converted checkpoint)")
  parser.add_argument("--question", required=True, help="the user turn, asked after the video")
  parser.add_argument("--mode", default="cope", choices=MODES,
                      help="cope: keyframes + Δ-frames (default); keyframes: without the "
                      "Δ-frames; dense: --dense-frames uniform RGB frames; cope_zero_delta: "
                      "Δ-tokens zeroed")
  parser.add_argument("--keyframes-per-gop", type=int, default=None,
                      help="RGB keyframes per GOP (the paper's K: 1, 2 or 4; default 1; "
                      "--mode dense ignores it, with a warning)")
  add_min_change_flag(parser)
  parser.add_argument("--dense-frames", type=int, default=None,
                      help="frames sampled uniformly in --mode dense (default 64, LLaVA-Video's; "
                      "the demo's base model was trained on 20; the other modes ignore it, with a "
                      "warning)")
  parser.add_argument("--max-new-tokens", type=int, default=64,
                      help="answer length limit (default 64)")
  parser.add_argument("--temperature", type=float, default=0.0,
                      help="sampling temperature, a finite number >= 0 (default 0 = greedy)")
  parser.add_argument("--top-p", type=float, default=1.0,
                      help="nucleus sampling mass, in (0, 1] (default 1: the whole vocabulary)")
  parser.add_argument("--seed", type=int, default=0,
                      help="the sampling stream when --temperature > 0 (default 0)")
  parser.add_argument("--repeat", type=int, default=1, help="ask this many times: ttft_s and "
                      "e2e_s become the medians of calls 2…N, the first call's are ttft_cold_s "
                      "and e2e_cold_s (default 1: the first call's only)")
  parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
  args = parser.parse_args(argv)
  settle_mode_flags(args)
  if args.repeat < 1:
    parser.error("--repeat must be at least 1")
  if args.dense_frames < 1:
    parser.error("--dense-frames must be at least 1")
  if not args.question.strip():
    parser.error("--question is empty")
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  from cope_jax.infer.sampling import SamplingOptions  # pylint: disable=import-outside-toplevel
  try:
    # refused before loading
    SamplingOptions(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    mode_sampling(args.mode, args.keyframes_per_gop, args.min_change)
    model = CoPE.load(args.workdir, tokenizer=args.tokenizer)
    answers = [model.ask(args.video, args.question, args.mode, args.keyframes_per_gop,
                         args.max_new_tokens, args.temperature, args.top_p,
                         min_change=args.min_change, dense_frames=args.dense_frames,
                         seed=args.seed)
               for _ in range(args.repeat)]
  except PromptTooLong as e:  # (a ValueError: named by the video it was asked about)
    print(f"error: {args.video}: {e}", file=sys.stderr)
    return 2
  except (VideoError, OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  answer, cold = answers[0], {}
  if args.repeat > 1:
    warm = answers[1:]
    answer = dataclasses.replace(
        answer, ttft_s=statistics.median(a.ttft_s for a in warm),
        e2e_s=statistics.median(a.e2e_s for a in warm),
        compile_s=sum(a.compile_s for a in answers))
    cold = {"ttft_cold_s": answers[0].ttft_s, "e2e_cold_s": answers[0].e2e_s,
            "repeat": args.repeat}
  if args.json:
    print(json.dumps({**answer.to_json(), **cold}))
  else:
    print(answer.text)
    print(f"[{answer.mode}: {answer.visual_tokens} visual tokens, TTFT {answer.ttft_s:.3f} s, "
          f"end-to-end {answer.e2e_s:.3f} s, extraction {answer.extract_s:.3f} s, "
          f"compilation {answer.compile_s:.1f} s"
          + (f"; medians of {args.repeat - 1} warm calls, the first call's TTFT "
             f"{cold['ttft_cold_s']:.3f} s" if cold else "") + "]",
          file=sys.stderr)
  return 0


if __name__ == "__main__":
  exit_on_sigterm()
  sys.exit(main())
