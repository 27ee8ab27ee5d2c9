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

# prefix NAME: prepend "[NAME] " to every line of stdin (per-worker log streams). It ignores
# SIGTERM, which wait_all sends every process under a failed run's jobs, so that a trainer's
# last words still show; it ends with their stream (or by SIGKILL).
prefix() {
  trap '' TERM
  local line
  while IFS= read -r line || [[ -n "$line" ]]; do  # (a last line without its newline too)
    printf '[%s] %s\n' "$1" "$line"
  done
}

# parse_args ARG …: --dry-run wherever it stands sets DRY_RUN (a misplaced flag must never run
# the real command), and --help wherever it stands asks for the help; the one other argument is
# COMMAND; anything more is refused.
parse_args() {
  COMMAND=""
  local arg help=""
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) help=1 ;;  # (anywhere too: `gpu.sh local --help` asks for it)
      *)
        [[ -z "$COMMAND" ]] || die "unexpected argument '$arg' after '$COMMAND' (see --help)"
        COMMAND=$arg
        ;;
    esac
  done
  if [[ -n "$help" ]]; then
    COMMAND=--help
  fi
}

# The training command every worker runs (CONFIG, WORKDIR, optional DATA_DIR and EXTRA_FLAGS;
# PYTHON, the interpreter, default checkout_python's).
# Values are quoted for the shell that runs the command (a WORKDIR with a space stays one
# argument); EXTRA_FLAGS is split into words on purpose.
# checkout_python: this checkout's .venv interpreter where it has one (a job run from a script
# or a scheduler sees no activated virtualenv), else python — quoted for a shell.
checkout_python() {
  if [[ -x "$HERE/../.venv/bin/python" ]]; then
    printf '%q' "$(cd "$HERE/.." && pwd)/.venv/bin/python"
  else
    printf python
  fi
}

# PYTHON is a path, quoted here like the other values (a space in it stays in the path);
# PYTHON_WORD, set by the ssh mode, is one already quoted for the remote shell.
train_command() {
  local cmd python
  if [[ -n "${PYTHON_WORD:-}" ]]; then
    python=$PYTHON_WORD
  elif [[ -n "${PYTHON:-}" ]]; then
    python=$(printf '%q' "$PYTHON")
  else
    python=$(checkout_python)
  fi
  cmd="$python -m cope_jax.train $(printf '%q' "--config=${CONFIG}")"
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
# A failure stops the local jobs still running — every process under them, SIGTERM, then SIGKILL
# after STOP_GRACE seconds (default 10: a trainer takes SIGTERM for a preemption and tries to
# save, which a run with a dead worker cannot) — rather than leave them to JAX's heartbeat and
# shutdown timeouts (100–300 s). Remote trainers (ssh, TPU workers) lose their connection and
# end by those timeouts. A 75 (a trainer stopped by SIGTERM after saving, which every worker
# does together) lets the others finish saving, and gives way to a later real failure.
# Start a pipeline in a subshell, ( trap : TERM; … | … ) &, so that its PID's status is the
# pipeline's (pipefail), not its last command's; the trap keeps the subshell waiting for its
# pipeline when a SIGTERM reaches the whole process group (timeout, most supervisors), where it
# would otherwise die at once, the launcher with it, and orphan its trainer.
wait_all() {
  local status=0 pid rc running=("$@") still more stopped_at="" stopping=() relayed=""
  # A SIGTERM to the launcher (kill, timeout, a job supervisor) goes to the workers, as a
  # preemption: they save and exit 75. Without this they ran on unsupervised. (Ctrl-C already
  # reaches the whole process group.)
  trap relay_sigterm TERM
  while ((${#running[@]})); do
    still=()
    for pid in "${running[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then
        still+=("$pid")
        continue
      fi
      rc=0
      wait "$pid" || rc=$?
      if [[ $rc != 0 && ($status == 0 || ($status == 75 && $rc != 75)) ]]; then
        status=$rc
        # (after a relayed SIGTERM, a worker ending otherwise than 75 — an ssh client, a
        # trainer that does not save — ended by it: no failure, and no kill clock for the rest)
        if [[ $rc != 75 && -z "$stopped_at" && -z "$relayed" ]]; then
          echo "error: a worker failed (status $rc); stopping the others" >&2
          stop_workers
        fi
      fi
    done
    running=("${still[@]+"${still[@]}"}")
    if ((${#running[@]})); then
      if [[ -n "$stopped_at" ]] && ((SECONDS - stopped_at >= ${STOP_GRACE:-10})); then
        read -r -a more <<<"$(descendants "${running[@]}" | tr '\n' ' ')"
        stopping+=("${more[@]+"${more[@]}"}" "${running[@]}")
        signal KILL "${stopping[@]+"${stopping[@]}"}"
      fi
      sleep 0.5 || true  # (a SIGTERM to the process group ends it early: not a failure)
    fi
  done
  trap - TERM
  return "$status"
}

# relay_sigterm: the launcher's SIGTERM to every process under wait_all's running jobs (its
# locals), once. No SIGKILL follows, unlike stop_workers': a trainer acts on it at its next step,
# and a multi-host one may first compile for minutes; whoever sent the SIGTERM decides how long
# to wait (timeout -k, a supervisor's own grace).
relay_sigterm() {
  [[ -n "$relayed" || -n "$stopped_at" ]] && return
  relayed=1
  if [[ -n "${REMOTE_WORKERS:-}" ]]; then
    echo "the launcher got SIGTERM: stopping the ssh clients (the remote trainers are not" \
      "signalled; they end by JAX's timeouts once their connection is gone)" >&2
  else
    echo "the launcher got SIGTERM: stopping the workers (SIGTERM; they save and exit)" >&2
  fi
  term_workers
}

# stop_workers: after a worker failed, SIGTERM to every process under wait_all's running jobs
# (its locals), once; STOP_GRACE later the loop kills what is left.
stop_workers() {
  [[ -n "$stopped_at" ]] && return
  stopped_at=$SECONDS
  term_workers
}

# term_workers: SIGTERM to every process under wait_all's running jobs, listed (in its
# `stopping`, which the STOP_GRACE kill also reads) before any is signalled — a shell that dies
# orphans its children, which the tree would no longer show; not the jobs' own subshells, which
# end with their pipelines and give their statuses.
term_workers() {
  read -r -a stopping <<<"$(descendants "${running[@]+"${running[@]}"}" | tr '\n' ' ')"
  signal TERM "${stopping[@]+"${stopping[@]}"}"
}

# signal NAME PID …: the signal to each process still there.
signal() {
  local name=$1
  shift
  if (($#)); then
    kill "-$name" "$@" 2>/dev/null || true
  fi
}

# descendants PID …: every process under them, one per line (pgrep, or /proc where procps is
# missing).
descendants() {
  local pid child
  for pid in "$@"; do
    for child in $(children "$pid"); do
      echo "$child"
      descendants "$child"
    done
  done
}

# children PID: the processes PID started.
children() {
  if command -v pgrep >/dev/null; then
    pgrep -P "$1" 2>/dev/null || true
    return
  fi
  local stat rest
  for stat in /proc/[0-9]*/stat; do
    # the fields after the command's closing parenthesis: state, then the parent's PID
    rest=$(sed 's/.*) //' "$stat" 2>/dev/null) || continue
    if [[ "$(cut -d' ' -f2 <<<"$rest")" == "$1" ]]; then
      basename "$(dirname "$stat")"
    fi
  done
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
