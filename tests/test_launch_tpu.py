"""`tpu.sh` against a fake `gcloud`: watching a run (resume after SIGTERM, recreate a preempted
slice) and creating a slice."""

import os

from test_launch import TPU, V4_32, sh


def _fake_gcloud(tmp_path, ssh_statuses: list[int], states: tuple[str, ...] = ("ACTIVE",)) -> dict:
  """A `gcloud` on PATH: each `tpu-vm ssh` (one per worker) exits with the next status, each
  `queued-resources describe` prints the next state (the last one repeats); calls are logged."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (tmp_path / "statuses").write_text("\n".join(map(str, ssh_statuses)) + "\n")
  (tmp_path / "states").write_text("\n".join(states) + "\n")
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {tmp_path}/calls
if [[ "$*" == *"tpu-vm ssh"* ]]; then
  status=$(head -n 1 {tmp_path}/statuses); sed -i 1d {tmp_path}/statuses
  exit "$status"
fi
if [[ "$*" == *"queued-resources describe"* ]]; then
  head -n 1 {tmp_path}/states
  if [[ $(wc -l < {tmp_path}/states) -gt 1 ]]; then sed -i 1d {tmp_path}/states; fi
fi
""")
  gcloud.chmod(0o755)
  return {**V4_32, "ACCELERATOR": "v4-8", "PATH": f"{bin_dir}:{os.environ['PATH']}",
          "POLL_SECONDS": "0"}


def test_tpu_watch_resumes_after_sigterm_and_stops_on_a_failure(tmp_path):
  """Status 75 (a trainer stopped by SIGTERM after saving) on a slice still there: train again on
  it; 0: done. Another failure on a slice that was not preempted: stop, naming the status."""
  (tmp_path / "a").mkdir()
  r = sh(TPU, "watch", **_fake_gcloud(tmp_path / "a", [75, 0]))
  assert r.returncode == 0, r.stdout + r.stderr
  assert "stopped by SIGTERM after saving; resuming on cope-v4-32" in r.stdout
  assert "training finished" in r.stdout and "recreating" not in r.stdout
  calls = (tmp_path / "a" / "calls").read_text()
  assert calls.count("tpu-vm ssh") == 2 and "queued-resources create" not in calls
  (tmp_path / "b").mkdir()
  r = sh(TPU, "watch", **_fake_gcloud(tmp_path / "b", [1]))
  assert r.returncode != 0 and "training failed (status 1) and the slice was not preempted" in (
      r.stdout + r.stderr)


def test_tpu_watch_recreates_a_preempted_slice_and_trains_again(tmp_path):
  """The trainer fails (the slice went away); the queued resource says SUSPENDED: delete,
  create (until ACTIVE), install the committed tree, train again — which finishes."""
  r = sh(TPU, "watch", TMPDIR=str(tmp_path),
         **_fake_gcloud(tmp_path, [1, 0, 0], states=("SUSPENDED", "ACTIVE")))
  assert r.returncode == 0, r.stdout + r.stderr
  assert "slice preempted: recreating cope-v4-32" in r.stdout and "training finished" in r.stdout
  calls = (tmp_path / "calls").read_text().splitlines()
  order = [next(k for k in ("queued-resources delete", "queued-resources create", "tpu-vm scp",
                            "tpu-vm ssh", "queued-resources describe") if k in c) for c in calls]
  assert order == ["tpu-vm ssh", "queued-resources describe", "queued-resources delete",
                   "queued-resources create", "queued-resources describe", "tpu-vm scp",
                   "tpu-vm ssh", "tpu-vm ssh"], calls
  assert os.path.getsize(tmp_path / "cope_jax_src.tar.gz") > 0  # git archive of HEAD


def test_tpu_create_stops_when_the_request_fails(tmp_path):
  r = sh(TPU, "create", **_fake_gcloud(tmp_path, [], states=("WAITING_FOR_RESOURCES", "FAILED")))
  assert r.returncode == 2 and "the queued resource cope-v4-32 is FAILED" in r.stderr, r.stderr
  assert "waiting for cope-v4-32 (v4-8) to become ACTIVE (WAITING_FOR_RESOURCES)" in r.stdout
  (tmp_path / "b").mkdir()  # describe failing for good: stop, not wait for ever
  r = sh(TPU, "create", **_fake_gcloud(tmp_path / "b", [], states=("MISSING",)))
  assert r.returncode == 2 and "the queued resource cope-v4-32 is MISSING" in r.stderr, r.stderr
