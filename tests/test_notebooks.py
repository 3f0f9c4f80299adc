"""The notebooks run top to bottom on a small generated CRM, so they never rot."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from tests.conftest import FAST

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01-explore-crm.ipynb", "02-model-review.ipynb"])
def test_notebook_runs(name, sim_export, tmp_path, monkeypatch):
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(FAST))
    monkeypatch.setenv("CONVERT_DATA", str(sim_export))
    monkeypatch.setenv("CONVERT_CONFIG", str(config))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=dict(os.environ))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, f"{name} shows {len(images)} plots"
