"""``python -m cope_jax.demo --workdir DIR [--quick] [--min-change G] [--seed N]``: the paper's
central claims, small, on a CPU.

1. codec: a clip with known motion → keyframes, motion vectors, residuals (exact reconstruction);
2. data: synthetic temporal-QA videos → dense-frame shards and CoPE shards;
3. base: a small SigLIP-shaped encoder + Qwen2-shaped LLM trained from scratch on dense RGB
   frames (the stand-in for LLaVA-Video);
4. stage 1: the Δ-encoder pre-trained against the base model's frozen vision encoder;
5. stage 2: fine-tuning on one keyframe + Δ-frames per GOP;
6. evaluation on the held-out split: dense and keyframes (the base model), keyframes_stage2
   (its keyframes only), cope and cope_zero_delta (the fine-tuned one) — accuracy overall and per question family, visual
   tokens, TTFT — and next-frame retrieval vs RGB only; then two probes over the same five runs,
   the questions asked without their options: open-ended (exact match with the right option's
   text) and options ranked by likelihood — what each model knows about the video apart from
   the multiple-choice letter step, which a from-scratch LLM learns slowly; how far each run
   has learned it (``letter_step``: its multiple-choice accuracy on the questions it answers
   right open-ended, and on the rest) and whether stage 2 recalls the letters it was trained on
   instead (``trained_letters``: cope on training questions it was asked by letter vs
   open-ended); last, the TTFT target's measurement: dense and cope asked in turn, question by
   question (``ttft``).

Writes ``DIR/results.json`` (after every stage), prints the table, saves ``DIR/losses.png`` and
``DIR/pareto.png``. Re-running resumes: finished stages are kept (a training stage is finished
once its last step's checkpoint is written), training resumes from its newest checkpoint; a
SIGTERM during training saves, ends the run with exit status 75, and the next run goes on from
there. ``elapsed_s_all_runs`` adds every run's time, and the time target is judged on it. A
workdir made with other settings (``--quick`` or not, another ``--min-change`` or ``--seed``) is
refused with exit status 2 rather than mixed. ``--min-change G`` builds the CoPE shards with
adaptive fusion (``codec extract --help``) and asks the cope modes with it: Δ positions that
hardly changed are left out, and stages 1 and 2 train on the longer windows that follow.
``--seed N`` draws other videos, questions and splits, initialisations and data order: another
sample of every figure. ``motion_margins`` in results.json has the targets' two margins by the
letter and by each probe.
"""
