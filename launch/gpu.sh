#!/usr/bin/env bash
# Train on GPU hosts: one multi-GPU host, several hosts over ssh or SLURM, or N local processes
# (CPU, gloo) that exercise the same multi-host path on one machine.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: launch/gpu.sh [--dry-run] COMMAND

Commands:
  host      train on this machine's GPUs (one process sees them all: 8×H100/H200 is one mesh)
  ssh       train on HOSTS (space-separated) over ssh; the first host coordinates
  slurm     submit an sbatch job of NODES nodes × GPUS_PER_NODE (jax.distributed reads SLURM)
  local     start PROCESSES processes here, each with DEVICES_PER_PROCESS emulated CPU devices,
            through the same multi-host entry point (what the tests run)

Environment (required: CONFIG, WORKDIR):
  CONFIG, WORKDIR, DATA_DIR, EXTRA_FLAGS   as for the trainer (see launch/tpu.sh --help)
  HOSTS           ssh: "gpu1 user@gpu2 …" (ssh destinations separated by spaces or newlines;
                  IPv6 and ssh://host:port too)
  PORT            ssh and local: the coordinator's port (default 12355)
  COORDINATOR_HOST  ssh: the address the hosts reach the first one at (default: its ssh
                  destination without user@, an ~/.ssh/config alias resolved to its HostName)
  REPO_DIR        ssh: the project on the hosts (default: this checkout's path)
  PYTHON          the trainer's interpreter, a path (default: the checkout's .venv/bin/python
                  where it has one, else python; ssh: REPO_DIR/.venv/bin/python where each host
                  has one, else python)
  WORKER_ENV      ssh: environment for the trainer on every host, e.g. "NCCL_DEBUG=WARN XLA_FLAGS=…"
                  (an ssh command sees none of this shell's)
  NODES, GPUS_PER_NODE, PARTITION         slurm (defaults 2, 8, none)
  CPUS_PER_TASK   slurm: CPUs per GPU process, for its Grain decoding workers (default 8;
                  given to srun too: since SLURM 22.05 its tasks do not inherit sbatch's)
  PROCESSES, DEVICES_PER_PROCESS          local (defaults 2, 4; XLA_FLAGS given here are kept)
  STOP_GRACE      when a worker fails, seconds between SIGTERM and SIGKILL for the others'
                  processes on this machine (default 10)

The trainer starts in the checkout (ssh: REPO_DIR): a relative CONFIG, WORKDIR or DATA_DIR is
read from there, not from where the launcher runs.
A SIGTERM to the launcher reaches the trainers in host (the launcher becomes the trainer) and
local, which save and exit 75, the launcher's status; in ssh it reaches only the ssh clients,
and the remote trainers end by JAX's timeouts once their connection is gone.

--dry-run (anywhere on the line) prints the exact commands instead of running them.
USAGE
}

host() {
  local cmd
  cmd="cd $(printf '%q' "$HERE/..") && exec $(train_command)"
  if [[ "$DRY_RUN" == 1 ]]; then
    run bash -c "$cmd"
  else
    # The launcher becomes the trainer: a SIGTERM sent to it reaches the trainer, which saves
    # and exits 75, and the trainer's status is the launcher's.
    exec bash -c "$cmd"
  fi
}

# coordinator_host SSH_DESTINATION: the address the workers reach the first host at —
# COORDINATOR_HOST if set, else the destination without its user@, and an ~/.ssh/config alias
# resolved to its HostName (the trainers connect over the network, not through ssh).
coordinator_host() {
  if [[ -n "${COORDINATOR_HOST:-}" ]]; then
    printf '%s' "$COORDINATOR_HOST"
    return
  fi
  local host=${1#ssh://} resolved=""
  host=${host##*@}
  if [[ "$host" == \[* ]]; then  # [IPv6] or [IPv6]:port
    host=${host#\[}
    host=${host%%]*}
  elif [[ "$1" == ssh://* ]]; then  # ssh://host:port: the port is ssh's, not the trainers'
    host=${host%:*}
  fi
  if command -v ssh >/dev/null; then
    resolved=$(ssh -G "$host" 2>/dev/null | awk '$1 == "hostname" {print $2; exit}') || true
  fi
  host=${resolved:-$host}
  if [[ "$host" == *:* ]]; then  # an IPv6 address: bracketed before the port is added
    host="[$host]"
  fi
  printf '%s' "$host"
}

# check_port PORT: the coordinator's port, 1–65535.
check_port() {
  if ! [[ "$1" =~ ^[1-9][0-9]{0,4}$ ]] || (($1 > 65535)); then
    die "PORT must be 1-65535, got '$1'"
  fi
}

ssh_hosts() {
  local host_list=()
  # Any whitespace separates hosts, newlines too (HOSTS=$(cat hostfile)).
  read -r -d '' -a host_list <<<"${HOSTS:?}" || true  # (main's require: not blank)
  local coordinator repo="${REPO_DIR:-$HERE/..}"
  check_port "${PORT:-12355}"
  coordinator="$(coordinator_host "${host_list[0]}"):${PORT:-12355}"
  # An ssh command runs outside any activated virtualenv: REPO_DIR's own, where the host has one
  # (the host decides, after the cd: this machine's checkout may have one where it has not).
  # shellcheck disable=SC2016  # (expanded by the remote shell)
  local python='$(test -x .venv/bin/python && echo .venv/bin/python || echo python)'
  if [[ -n "${PYTHON:-}" ]]; then
    python=$(remote_path "$PYTHON")  # (one word for the remote shell, a space in it or not)
  fi
  local pids=() i
  for i in "${!host_list[@]}"; do
    local cmd
    cmd="cd $(remote_path "$repo") && ${WORKER_ENV:+$WORKER_ENV }COPE_DISTRIBUTED=1"
    cmd+=" COPE_COORDINATOR=$coordinator"
    cmd+=" COPE_NUM_PROCESSES=${#host_list[@]} COPE_PROCESS_ID=$i"
    cmd+=" $(PYTHON_WORD=$python train_command)"
    if [[ "$DRY_RUN" == 1 ]]; then
      run ssh "${host_list[$i]}" "$cmd"
    else
      # The command is built here on purpose: each host gets its own process id.
      # shellcheck disable=SC2029
      (trap : TERM; ssh "${host_list[$i]}" "$cmd" 2>&1 | prefix "${host_list[$i]}") &
      pids+=($!)
    fi
  done
  REMOTE_WORKERS=1 wait_all "${pids[@]+"${pids[@]}"}"
}

slurm() {
  local script
  script=$(cat <<SBATCH
#!/bin/bash
#SBATCH --job-name=cope_jax
#SBATCH --nodes=${NODES:-2}
#SBATCH --ntasks-per-node=${GPUS_PER_NODE:-8}
#SBATCH --gpus-per-node=${GPUS_PER_NODE:-8}
#SBATCH --cpus-per-task=${CPUS_PER_TASK:-8}
${PARTITION:+#SBATCH --partition=$PARTITION}
#SBATCH --requeue
cd $(printf '%q' "$HERE/..")
srun --cpus-per-task=${CPUS_PER_TASK:-8} env COPE_DISTRIBUTED=1 $(train_command)
SBATCH
)
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "$script"
  else
    sbatch <<<"$script"
  fi
}

local_processes() {
  local n=${PROCESSES:-2} port=${PORT:-12355}
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "PROCESSES must be a whole number >= 1, got '$n'"
  [[ "${DEVICES_PER_PROCESS:-4}" =~ ^[1-9][0-9]*$ ]] ||
    die "DEVICES_PER_PROCESS must be a whole number >= 1, got '${DEVICES_PER_PROCESS}'"
  check_port "$port"
  local pids=() i
  for ((i = 0; i < n; i++)); do
    local env=(COPE_DISTRIBUTED=1 "COPE_COORDINATOR=localhost:$port" "COPE_NUM_PROCESSES=$n"
      "COPE_PROCESS_ID=$i" JAX_PLATFORMS=cpu
      "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}")
    if [[ "$DRY_RUN" == 1 ]]; then
      run env "${env[@]}" bash -c "cd $(printf '%q' "$HERE/..") && $(train_command)"
    else
      (
        trap : TERM  # (see wait_all)
        (cd "$HERE/.." && exec env "${env[@]}" bash -c "exec $(train_command)") 2>&1 |
          prefix "process $i"
      ) &
      pids+=($!)
    fi
  done
  wait_all "${pids[@]+"${pids[@]}"}"
}

main() {
  parse_args "$@"
  local command=$COMMAND
  case "$command" in
    -h | --help | help | "")
      usage
      [[ -n "$command" ]] || exit 2
      ;;
    host | ssh | slurm | local)
      if [[ "$command" == ssh ]]; then
        require CONFIG WORKDIR HOSTS  # (named with the others: one round, not two)
      else
        require CONFIG WORKDIR
      fi
      local_paths WORKDIR DATA_DIR
      case "$command" in
        host) host ;;
        ssh) ssh_hosts ;;
        slurm) slurm ;;
        local) local_processes ;;
      esac
      ;;
    *) die "unknown command '$command' (see --help)" ;;
  esac
}

main "$@"
