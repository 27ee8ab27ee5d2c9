#!/usr/bin/env bash
# Shared helpers for the launch scripts: fail fast, dry runs, per-worker log prefixes.
# shellcheck shell=bash

DRY_RUN=${DRY_RUN:-0}

die() {
  echo "error: $*" >&2
  exit 2
}

# require VAR [VAR …]: stop at once, naming every variable that is unset or empty.
require() {
  local missing=()
  local name value
  for name in "$@"; do
    value=${!name:-}
    if [[ -z "${value//[[:space:]]/}" ]]; then  # (unset, empty or blank)
      missing+=("$name")
    fi
  done
  if ((${#missing[@]})); then
    die "set ${missing[*]} (see --help)"
  fi
}

# local_paths VAR …: stop at once if a set one is a URL (gs://…): the trainer reads and writes
# local paths and refuses it too, but on the workers — after a slice was created and installed.
local_paths() {
  local name value
  for name in "$@"; do
    value=${!name:-}
    if [[ "$value" == *://* ]]; then
      die "$name=$value: URLs are not supported; mount the bucket with Cloud Storage FUSE on every host (gcsfuse --implicit-dirs BUCKET /gcs/BUCKET, e.g. in SETUP) and pass the mounted path"
    fi
  done
}

# run CMD …: execute, or with --dry-run print the exact command (shell-quoted) instead.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# prefix NAME: prepend "[NAME] " to every line of stdin (per-worker log streams).
prefix() {
  local line
  while IFS= read -r line; do
    printf '[%s] %s\n' "$1" "$line"
  done
}

# parse_args ARG …: --dry-run wherever it stands sets DRY_RUN (a misplaced flag must never run
# the real command); the one other argument is COMMAND; anything more is refused.
parse_args() {
  COMMAND=""
  local arg
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      *)
        [[ -z "$COMMAND" ]] || die "unexpected argument '$arg' after '$COMMAND' (see --help)"
        COMMAND=$arg
        ;;
    esac
  done
}

# The training command every worker runs (CONFIG, WORKDIR, optional DATA_DIR and EXTRA_FLAGS;
# PYTHON, the interpreter, default python).
# Values are quoted for the shell that runs the command (a WORKDIR with a space stays one
# argument); EXTRA_FLAGS is split into words on purpose.
train_command() {
  local cmd
  cmd="${PYTHON:-python} -m cope_jax.train $(printf '%q' "--config=${CONFIG}")"
  cmd+=" $(printf '%q' "--workdir=${WORKDIR}")"
  if [[ -n "${DATA_DIR:-}" ]]; then
    cmd+=" $(printf '%q' "--config.data_dir=${DATA_DIR}")"
  fi
  if [[ -n "${EXTRA_FLAGS:-}" ]]; then
    cmd+=" ${EXTRA_FLAGS}"
  fi
  printf '%s' "$cmd"
}

# wait_all PID …: wait for every background job; return the status of the first to fail, in
# time (the cause: the others then abort in their next collective, with statuses of their own).
# A failure stops the jobs still running at once (their process trees, SIGTERM) rather than
# leaving them to JAX's heartbeat and shutdown timeouts (100–300 s) — except 75, a trainer
# stopped by SIGTERM after saving, which every worker does together: the others finish saving.
# Start a pipeline in a subshell, ( … | … ) &, so that its PID's status is the pipeline's
# (pipefail), not its last command's.
wait_all() {
  local status=0 pid rc running=("$@") still
  while ((${#running[@]})); do
    still=()
    for pid in "${running[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then
        still+=("$pid")
        continue
      fi
      rc=0
      wait "$pid" || rc=$?
      if [[ $status == 0 && $rc != 0 ]]; then
        status=$rc
        if [[ $rc != 75 ]]; then
          echo "error: a worker failed (status $rc); stopping the others" >&2
          for other in "${running[@]}"; do
            stop_tree "$other"
          done
        fi
      fi
    done
    running=("${still[@]+"${still[@]}"}")
    if ((${#running[@]})); then
      sleep 0.5
    fi
  done
  return "$status"
}

# stop_tree PID: SIGTERM to a process and everything it started (a job's subshell alone would
# leave its trainer running).
stop_tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do
    stop_tree "$child"
  done
  kill -TERM "$1" 2>/dev/null || true
}

# remote_path PATH: PATH quoted for a remote shell, a leading ~/ left for it to expand.
# shellcheck disable=SC2088  # (the ~ is meant for the remote shell)
remote_path() {
  if [[ "$1" == "~/"* ]]; then
    printf '~/%q' "${1#"~/"}"
  else
    printf '%q' "$1"
  fi
}
