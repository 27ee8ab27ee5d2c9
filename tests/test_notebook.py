"""The Colab notebook executes end to end (on the tiny recipe, a few training steps)."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("COPE_NOTEBOOK_WORKDIR", str(tmp_path / "stage2"))
  monkeypatch.setenv("COPE_NOTEBOOK_TRAIN", "1")  # (as at its default workdir)
  monkeypatch.setenv("COPE_NOTEBOOK_STEPS", "2")
  monkeypatch.setenv("COPE_NOTEBOOK_VIDEOS", "24")
  monkeypatch.setenv("COPE_REPO", ROOT)
  nb = nbformat.read(os.path.join(ROOT, "launch", "colab_inference.ipynb"), as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "TTFT" in outputs and "visual tokens" in outputs
  assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", []))


def _model_cell() -> str:
  nb = nbformat.read(os.path.join(ROOT, "launch", "colab_inference.ipynb"), as_version=4)
  return next(c.source for c in nb.cells if c.cell_type == "code" and "WORKDIR =" in c.source)


def test_a_workdir_with_no_model_is_refused_unless_it_is_the_notebook_s_own(tmp_path,
                                                                            monkeypatch):
  """A mistyped WORKDIR trained a random tiny model there; one whose run was stopped before its
  first checkpoint (model_config.json written, no checkpoint) was taken for a model, and loading
  failed on every re-run."""
  import pytest  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
  (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)
  (tmp_path / "stopped" / "model_config.json").write_text("{}")
  for workdir in ("typo", "stopped"):
    monkeypatch.setenv("COPE_NOTEBOOK_WORKDIR", str(tmp_path / workdir))
    with pytest.raises(SystemExit, match="no model there"):
      exec(_model_cell(), {})  # pylint: disable=exec-used
  monkeypatch.setenv("COPE_NOTEBOOK_TRAIN", "1")  # the notebook's own: trained (resumed) there
  monkeypatch.setenv("COPE_REPO", ROOT)
  exec(_model_cell(), {})  # pylint: disable=exec-used
  assert len(calls) == 1 and f"--workdir={tmp_path / 'stopped'}" in calls[0][0]
  # stopped after a checkpoint (a SIGTERM saves; the tiny recipe saves every 50 steps): resumed
  (tmp_path / "stopped" / "train_config.json").write_text('{"total_steps": 20}')
  (tmp_path / "stopped" / "checkpoints" / "10").mkdir()
  exec(_model_cell(), {})  # pylint: disable=exec-used
  assert len(calls) == 2
  (tmp_path / "stopped" / "checkpoints" / "20").mkdir()  # trained: loaded, not trained again
  exec(_model_cell(), {})  # pylint: disable=exec-used
  assert len(calls) == 2
  monkeypatch.delenv("COPE_NOTEBOOK_TRAIN")  # a workdir of the user's own: loaded as it is
  os.rmdir(tmp_path / "stopped" / "checkpoints" / "20")
  (tmp_path / "stopped" / "train_config.json").write_text("{}")  # (total_steps not needed)
  exec(_model_cell(), {})  # pylint: disable=exec-used
  assert len(calls) == 2


def test_a_relative_workdir_is_trained_where_it_is_loaded_from(tmp_path, monkeypatch):
  """Training runs in the source folder: a relative WORKDIR was trained there, then looked for
  (and loaded) in the kernel's folder — not found, trained again on every run."""
  import subprocess  # pylint: disable=import-outside-toplevel
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("COPE_NOTEBOOK_WORKDIR", "mine")
  monkeypatch.setenv("COPE_NOTEBOOK_TRAIN", "1")
  monkeypatch.setenv("COPE_REPO", ROOT)
  scope = {}
  exec(_model_cell(), scope)  # pylint: disable=exec-used
  assert scope["WORKDIR"] == str(tmp_path / "mine")
  assert f"--workdir={tmp_path / 'mine'}" in calls[0][0]


def _install_cell() -> str:
  nb = nbformat.read(os.path.join(ROOT, "launch", "colab_inference.ipynb"), as_version=4)
  return next(c.source for c in nb.cells if c.cell_type == "code" and "REPO =" in c.source)


def test_the_install_cell_installs_what_is_not_installed(tmp_path, monkeypatch):
  """Cloned into Colab's working folder (/content/cope_jax), the source imported as a namespace
  package: the install was skipped and the next cell failed. And a clone left by a run whose
  install failed made every re-run fail at `git clone`."""
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  def not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)

  calls = []
  monkeypatch.setattr(subprocess, "run", lambda args, **k: calls.append(args))
  monkeypatch.setattr(importlib.metadata, "version", not_installed)
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.setenv("COPE_REPO", "")
  (tmp_path / "cope_jax" / "cope_jax").mkdir(parents=True)  # a clone, in the working folder
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("COPE_REPO_URL", str(tmp_path / "cope_jax"))
  exec(_install_cell(), {})  # pylint: disable=exec-used
  assert [c[3:] for c in calls] == [["install", "-q", "-e", str(tmp_path / "cope_jax")]]
  calls.clear()  # a URL whose clone is there already (its install failed): installed, not cloned
  real_isdir = os.path.isdir
  monkeypatch.setattr(os.path, "isdir",
                      lambda p: p == "/content/cope_jax_src/.git" or real_isdir(p))
  monkeypatch.setenv("COPE_REPO_URL", "https://example.org/cope_jax.git")
  exec(_install_cell(), {})  # pylint: disable=exec-used
  assert [c[3:] for c in calls] == [["install", "-q", "-e", "/content/cope_jax_src"]]
