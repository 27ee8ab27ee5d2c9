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

# wait_all PID …: wait for every background job; fail with the first failure's status (75: a
# trainer stopped by SIGTERM after saving). Start a pipeline in a subshell, ( … | … ) &, so
# that its PID's status is the pipeline's (pipefail), not its last command's.
wait_all() {
  local status=0 pid rc
  for pid in "$@"; do
    rc=0
    wait "$pid" || rc=$?
    if [[ $status == 0 ]]; then status=$rc; fi
  done
  return "$status"
}
