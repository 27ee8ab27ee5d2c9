"""Training: ``python -m cope_jax.train --config=configs/{pretrain,finetune}.py[:VARIANT] --workdir=DIR``."""
