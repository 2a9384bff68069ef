"""The notebooks run top to bottom on this CPU (small settings), each in a fresh kernel."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NOTEBOOKS = sorted(f for f in os.listdir(HERE) if f.endswith(".ipynb"))


def test_all_three_notebooks_exist():
    assert NOTEBOOKS == ["quickstart.ipynb", "scaling_on_a_mesh.ipynb", "train_a_guide.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    nb = nbformat.read(os.path.join(HERE, name), as_version=4)
    env_cells = "import os\nos.environ.setdefault('JAX_PLATFORMS', 'cpu')"
    nb.cells.insert(0, nbformat.v4.new_code_cell(env_cells))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "stream" for o in outputs)
