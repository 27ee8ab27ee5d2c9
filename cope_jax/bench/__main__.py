"""``python -m cope_jax.bench NAME [flags]``: run one benchmark (``--help`` after NAME for its flags)."""

import sys

BENCHMARKS = {"codec": "cope_jax.bench.codec_bench", "data": "cope_jax.bench.data_bench",
              "ttft": "cope_jax.bench.ttft_bench", "train": "cope_jax.bench.train_bench",
              "flops": "cope_jax.bench.flops_bench", "letter": "cope_jax.bench.letter_step_bench"}


def main() -> None:
  if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
    print(f"usage: python -m cope_jax.bench {{{','.join(BENCHMARKS)}}} [--help]", file=sys.stderr)
    sys.exit(2)
  import importlib  # pylint: disable=import-outside-toplevel
  importlib.import_module(BENCHMARKS[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
  main()
