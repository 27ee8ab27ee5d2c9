"""Training: ``python -m cope_jax.train --config=configs/{pretrain,finetune}.py[:VARIANT] --workdir=DIR``."""

# The exit status of a run stopped by SIGTERM after saving (sysexits' EX_TEMPFAIL: "try again"):
# not 0, so that `stage1 && stage2`, a job scheduler or launch/tpu.sh's watch do not take a
# preempted run for a finished one.
PREEMPTED = 75
