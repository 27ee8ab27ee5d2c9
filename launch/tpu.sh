#!/usr/bin/env bash
# Train on a GCP TPU v4 slice: create it (queued resources, optionally spot), install the
# project on every worker, run the trainer on all workers with jax.distributed, stream each
# worker's log, restart after preemption, delete.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: launch/tpu.sh [--dry-run] COMMAND

Commands:
  create    request the slice as a queued resource (SPOT=1 for spot capacity) and wait until
            it is ACTIVE (stops if the request fails)
  install   copy the committed tree (git archive HEAD) to every worker, make a Python 3.11
            virtualenv there (uv; the TPU image's Python is 3.10), pip install [tpu], then
            run SETUP on every worker
  train     run `python -m cope_jax.train` on all workers (jax.distributed is detected on TPU
            pods), one ssh per worker, and stream their logs, each line prefixed with its worker
  watch     train, and whenever a spot slice is preempted: recreate it, reinstall, train again
            (the trainer resumes from its newest checkpoint in WORKDIR)
  status    describe the queued resource (its state, and the slice's)
  delete    delete the slice and its queued resource
  workers   print the worker indices of ACCELERATOR (v4-8: 0; v4-32: 0–3; v4-128: 0–15)

Environment (required: PROJECT, ZONE, TPU_NAME, ACCELERATOR; train/watch also CONFIG, WORKDIR):
  PROJECT       GCP project            ZONE          e.g. us-central2-b (where v4 lives)
  TPU_NAME      name of the slice      ACCELERATOR   v4-8 | v4-32 | v4-128 | …
  RUNTIME       TPU VM image (default tpu-ubuntu2204-base)
  SPOT          1 for spot capacity (cheaper, preemptible; use `watch`)
  CONFIG        e.g. configs/finetune.py      WORKDIR   /gcs/bucket/run (a gcsfuse mount)
  DATA_DIR      /gcs/bucket/shards (optional; --config.data_dir)
  EXTRA_FLAGS   more trainer flags, e.g. "--config.mesh.fsdp=-1 --config.mesh.data=1"
  REPO_DIR      where the project goes on the workers (default ~/cope_jax)
  WORKER_ENV    environment for the trainer on every worker, e.g. "LIBTPU_INIT_ARGS=… XLA_FLAGS=…"
                (an ssh command sees none of this shell's)
  POLL_SECONDS  between looks at the queued resource's state (default 30)
  SETUP         a command install runs on every worker, e.g. mounting the buckets WORKDIR and
                DATA_DIR name: "sudo apt-get install -y gcsfuse && mkdir -p /gcs/b &&
                gcsfuse --implicit-dirs b /gcs/b" (watch reinstalls a recreated slice with it)

--dry-run (anywhere on the line) prints the gcloud commands instead of running them; watch's
dry run shows one round of training.
USAGE
}

check_accelerator() {
  # (no leading zero: gcloud knows no v4-08, and bash would read 08 as octal)
  if ! [[ "$ACCELERATOR" =~ ^v4-[1-9][0-9]*$ ]] || ((${ACCELERATOR#v4-} < 8 || ${ACCELERATOR#v4-} % 8)); then
    die "ACCELERATOR must be a TPU v4 slice v4-N (N a multiple of 8: v4-8, v4-32, …), got '$ACCELERATOR'"
  fi
}

workers() {
  # v4-N counts TensorCores: N/2 chips, 4 chips per host.
  local hosts=$((${ACCELERATOR#v4-} / 8))
  seq 0 $((hosts - 1)) | tr '\n' ' '
  echo
}

gcloud_tpu() {
  run gcloud compute tpus "$@" --project="$PROJECT" --zone="$ZONE"
}

create() {
  local spot=()
  if [[ "${SPOT:-0}" == 1 ]]; then
    spot=(--spot)
  fi
  gcloud_tpu queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR" --runtime-version="${RUNTIME:-tpu-ubuntu2204-base}" \
    "${spot[@]+"${spot[@]}"}"
  if [[ "$DRY_RUN" != 1 ]]; then
    local state
    while state=$(queued_state) && [[ "$state" != ACTIVE ]]; do
      # (MISSING: it cannot be described at all, three times in a row — waiting would not help)
      if [[ "$state" =~ ^(FAILED|SUSPENDED|MISSING)$ ]]; then
        die "the queued resource $TPU_NAME is $state; see \`launch/tpu.sh status\`"
      fi
      echo "waiting for $TPU_NAME ($ACCELERATOR) to become ACTIVE (${state:-no state yet})…"
      sleep "${POLL_SECONDS:-30}"
    done
  fi
}

# The queued resource's state; MISSING only after three failed describes in a row (one
# transient gcloud error must not make watch delete a healthy slice).
queued_state() {
  local try
  for try in 1 2 3; do
    if gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$PROJECT" \
      --zone="$ZONE" --format='value(state.state)' 2>/dev/null; then
      return 0
    fi
    [[ $try == 3 ]] || sleep "${POLL_SECONDS:-30}"
  done
  echo MISSING
}

ssh_all() {
  gcloud_tpu tpu-vm ssh "$TPU_NAME" --worker=all "$@"
}

install() {
  # The committed tree (git archive HEAD), not the folder: no virtualenv, .git or local runs.
  local repo src tarball
  repo=$(remote_path "${REPO_DIR:-~/cope_jax}")
  src=$(cd "$HERE/.." && pwd)
  tarball="${TMPDIR:-/tmp}/cope_jax_src.tar.gz"
  run git -C "$src" archive --format=tar.gz -o "$tarball" HEAD
  gcloud_tpu tpu-vm scp --worker=all "$tarball" "$TPU_NAME:/tmp/cope_jax_src.tar.gz"
  # jax 0.10 needs Python 3.11; uv fetches it where the image has 3.10 (tpu-ubuntu2204-base).
  ssh_all --command="mkdir -p $repo && tar -xzf /tmp/cope_jax_src.tar.gz -C $repo && cd $repo && python3 -m pip install -q --user uv && { [ -x .venv/bin/python ] || python3 -m uv venv -q --seed -p 3.11 .venv; } && .venv/bin/python -m pip install -q -e '.[tpu]'"
  if [[ -n "${SETUP:-}" ]]; then
    ssh_all --command="$SETUP"
  fi
}

train() {
  local repo cmd
  repo=$(remote_path "${REPO_DIR:-~/cope_jax}")
  cmd="cd $repo && COPE_DISTRIBUTED=1 ${WORKER_ENV:+$WORKER_ENV }$(PYTHON=.venv/bin/python train_command)"
  # One ssh per worker so that each log line can say where it comes from.
  local pids=() w
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# workers: $(workers)"
  fi
  for w in $(workers); do
    if [[ "$DRY_RUN" == 1 ]]; then
      gcloud_tpu tpu-vm ssh "$TPU_NAME" --worker="$w" --command="$cmd"
      continue
    fi
    (
      trap : TERM  # (see wait_all)
      gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
        --worker="$w" --command="$cmd" 2>&1 | prefix "worker $w"
    ) &
    pids+=($!)
  done
  REMOTE_WORKERS=1 wait_all "${pids[@]+"${pids[@]}"}"
}

preempted() {
  [[ "$(queued_state)" =~ ^(SUSPENDED|SUSPENDING|FAILED|MISSING)$ ]]
}

watch() {
  local rc
  while true; do
    rc=0
    train || rc=$?
    if [[ $rc == 0 ]]; then
      if [[ "$DRY_RUN" == 1 ]]; then
        echo "(dry run: watch would repeat this until training finishes, recreating the slice if it is preempted)"
      else
        echo "training finished"
      fi
      return 0
    fi
    if [[ "$DRY_RUN" == 1 ]]; then
      die "training failed (status $rc); see the logs above"
    fi
    if preempted; then
      echo "slice preempted: recreating $TPU_NAME and resuming from $WORKDIR"
      delete || true
      create
      install
    elif [[ $rc == 75 ]]; then  # SIGTERM (a maintenance event): saved; the slice is still there
      echo "training stopped by SIGTERM after saving; resuming on $TPU_NAME from $WORKDIR"
    else
      die "training failed (status $rc) and the slice was not preempted; see the logs above"
    fi
  done
}

delete() {
  gcloud_tpu queued-resources delete "$TPU_NAME" --force --quiet
}

status() {
  gcloud_tpu queued-resources describe "$TPU_NAME"
}

main() {
  parse_args "$@"
  local command=$COMMAND
  case "$command" in
    -h | --help | help | "")
      usage
      [[ -n "$command" ]] || exit 2
      ;;
    workers)
      require ACCELERATOR
      check_accelerator
      workers
      ;;
    create | install | train | watch | status | delete)
      local needs=(PROJECT ZONE TPU_NAME ACCELERATOR)
      if [[ "$command" == train || "$command" == watch ]]; then
        needs+=(CONFIG WORKDIR)  # (named with the others: one round, not two)
      fi
      require "${needs[@]}"
      check_accelerator
      if [[ "$command" != status && "$command" != delete ]]; then
        local_paths WORKDIR DATA_DIR
      fi
      "$command"
      ;;
    *) die "unknown command '$command' (see --help)" ;;
  esac
}

main "$@"
