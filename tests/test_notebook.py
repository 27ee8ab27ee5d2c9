"""The Colab notebook executes end to end (on the tiny recipe, a few training steps)."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv("COPE_NOTEBOOK_WORKDIR", str(tmp_path / "stage2"))
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
