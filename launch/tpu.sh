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
  create    request the slice as a queued resource (SPOT=1 for spot capacity) and wait for it
  install   copy the committed tree (git archive HEAD) to every worker, pip install [tpu]
  train     run `python -m cope_jax.train` on all workers (jax.distributed is detected on TPU
            pods) and stream their logs, each line prefixed with its worker
  watch     train, and whenever a spot slice is preempted: recreate it, reinstall, train again
            (the trainer resumes from its newest checkpoint in WORKDIR)
  status    show the queued resource and the TPU
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

--dry-run prints the exact gcloud commands instead of running them.
USAGE
}

workers() {
  local chips=${ACCELERATOR#v4-}
  [[ "$chips" =~ ^[0-9]+$ ]] || die "ACCELERATOR must look like v4-N, got '$ACCELERATOR'"
  # v4-N counts TensorCores: N/2 chips, 4 chips per host.
  local hosts=$(((chips / 2 + 3) / 4))
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
    "${spot[@]}"
  if [[ "$DRY_RUN" != 1 ]]; then
    until gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$PROJECT" \
      --zone="$ZONE" --format='value(state.state)' | grep -q ACTIVE; do
      echo "waiting for $TPU_NAME ($ACCELERATOR) to become ACTIVE…"
      sleep 30
    done
  fi
}

ssh_all() {
  gcloud_tpu tpu-vm ssh "$TPU_NAME" --worker=all "$@"
}

install() {
  # The committed tree (git archive HEAD), not the folder: no virtualenv, .git or local runs.
  local repo="${REPO_DIR:-~/cope_jax}" src tarball
  src=$(cd "$HERE/.." && pwd)
  tarball="${TMPDIR:-/tmp}/cope_jax_src.tar.gz"
  run git -C "$src" archive --format=tar.gz -o "$tarball" HEAD
  gcloud_tpu tpu-vm scp --worker=all "$tarball" "$TPU_NAME:/tmp/cope_jax_src.tar.gz"
  ssh_all --command="mkdir -p $repo && tar -xzf /tmp/cope_jax_src.tar.gz -C $repo && cd $repo && python3 -m pip install -q -e '.[tpu]'"
}

train() {
  require CONFIG WORKDIR
  local repo="${REPO_DIR:-~/cope_jax}"
  local cmd
  cmd="cd $repo && COPE_DISTRIBUTED=1 $(train_command)"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# workers: $(workers)"
    ssh_all --command="$cmd"
    return
  fi
  # One ssh per worker so that each log line can say where it comes from.
  local pids=() w
  for w in $(workers); do
    (gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
      --worker="$w" --command="$cmd" 2>&1 | prefix "worker $w") &
    pids+=($!)
  done
  wait_all "${pids[@]}"
}

preempted() {
  local state
  state=$(gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$PROJECT" \
    --zone="$ZONE" --format='value(state.state)' 2>/dev/null || echo MISSING)
  [[ "$state" =~ ^(SUSPENDED|SUSPENDING|FAILED|MISSING)$ ]]
}

watch() {
  require CONFIG WORKDIR
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
  if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
  fi
  local command=${1:-}
  case "$command" in
    -h | --help | help | "")
      usage
      [[ -n "$command" ]] || exit 2
      ;;
    workers)
      require ACCELERATOR
      workers
      ;;
    create | install | train | watch | status | delete)
      require PROJECT ZONE TPU_NAME ACCELERATOR
      "$command"
      ;;
    *) die "unknown command '$command' (see --help)" ;;
  esac
}

main "$@"
