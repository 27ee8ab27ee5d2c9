"""``python -m cope_jax.bench NAME [flags]``: run one benchmark (``--help`` after NAME for its flags)."""

import sys

from cope_jax.command_line import exit_on_sigterm

# name: (module, what it measures)
BENCHMARKS = {
    "codec": ("cope_jax.bench.codec_bench", "codec extraction speed vs plain decoding"),
    "data": ("cope_jax.bench.data_bench", "data loader samples/s per core, shard bytes"),
    "ttft": ("cope_jax.bench.ttft_bench", "time to first token: 64 dense frames vs CoPE"),
    "train": ("cope_jax.bench.train_bench", "train-step throughput and MFU"),
    "flops": ("cope_jax.bench.flops_bench", "prefill FLOPs per component, FLOP-bound TTFT"),
    "letter": ("cope_jax.bench.letter_step_bench",
               "how fast a from-scratch LLM learns the multiple-choice letter step"),
    "adaptive": ("cope_jax.bench.adaptive_bench",
                 "adaptive fusion: Δ-tokens and accuracy of the demo's model vs --min-change"),
}


def _usage() -> str:
  lines = [f"usage: python -m cope_jax.bench {{{','.join(BENCHMARKS)}}} [flags]", "",
           "benchmarks (python -m cope_jax.bench NAME --help for a benchmark's flags):"]
  lines += [f"  {name:10s}{what}" for name, (_, what) in BENCHMARKS.items()]
  return "\n".join(lines)


def main() -> None:
  if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help"):
    print(_usage())
    return
  if len(sys.argv) < 2:
    print(_usage() + "\nerror: name a benchmark", file=sys.stderr)
    sys.exit(2)
  if sys.argv[1] not in BENCHMARKS:
    print(f"error: unknown benchmark {sys.argv[1]!r}; one of {', '.join(BENCHMARKS)} (see "
          "python -m cope_jax.bench --help)", file=sys.stderr)
    sys.exit(2)
  import importlib  # pylint: disable=import-outside-toplevel
  from cope_jax.codec.errors import ConfigError, VideoError  # pylint: disable=import-outside-toplevel
  from cope_jax.infer import PromptTooLong  # pylint: disable=import-outside-toplevel
  try:
    importlib.import_module(BENCHMARKS[sys.argv[1]][0]).main(sys.argv[2:])
  # a bad input or setting (a video too long for the model among them); bugs keep tracebacks
  except (VideoError, ConfigError, OSError, PromptTooLong) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  exit_on_sigterm()
  main()
