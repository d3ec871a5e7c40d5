"""Every notebook runs top to bottom (quick mode, tiny shapes) and is stored without outputs."""
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient
from support import device_env

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "notebooks", "*.ipynb")))


def test_the_three_notebooks_exist():
    assert {os.path.basename(p) for p in NOTEBOOKS} >= {"attention_variants.ipynb", "load_and_generate.ipynb",
                                                         "reproduce_table.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("NEOJAX_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("NEOJAX_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("XLA_FLAGS", device_env(1)["XLA_FLAGS"])  # the kernel is a user's machine: one CPU device
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "every notebook draws at least one figure"
    if os.path.basename(path) == "attention_variants.ipynb":
        assert (tmp_path / "valid_loss.png").exists() and (tmp_path / "attention_patterns.png").exists()
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert "all properties hold" in text and "scaled" in text
