"""The notebooks run top to bottom on this CPU (small settings), each in a fresh Jupyter kernel (nbclient).

scaling_on_a_mesh once died or hung intermittently inside its sharded generate call on a loaded 2-core machine:
XLA:CPU deadlocks in two ways there (docs/sharding.md, "Host-device meshes"); `generate` now settles each sharded
dispatch on CPU meshes, and on host devices the notebook decodes with rows split only (0 hangs in 22 loaded runs,
against 2-3 in 9 with weights split over a model axis).
Each kernel gets its own TMPDIR, which must be empty afterwards: a notebook that leaves its temporary files behind
fills a user's disk (train_a_guide once left 1.3 GB per run)."""

import os

import nbformat
import pytest
from conftest import users_xla_flags
from nbclient import NotebookClient

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NOTEBOOKS = sorted(f for f in os.listdir(HERE) if f.endswith(".ipynb"))


def test_all_three_notebooks_exist_without_outputs():
    assert NOTEBOOKS == ["quickstart.ipynb", "scaling_on_a_mesh.ipynb", "train_a_guide.ipynb"]
    for name in NOTEBOOKS:  # outputs of one machine's run in the repository only make noisy diffs
        cells = nbformat.read(os.path.join(HERE, name), as_version=4).cells
        ran = [i for i, c in enumerate(cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not ran, f"{name}: cells {ran} were committed with outputs; clear them before committing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    nb = nbformat.read(os.path.join(HERE, name), as_version=4)
    env_cells = "import os\nos.environ.setdefault('JAX_PLATFORMS', 'cpu')"
    nb.cells.insert(0, nbformat.v4.new_code_cell(env_cells))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    # XLA's default compiler settings, as a user's kernel has them: a notebook runs its programs long enough that
    # the suite's faster-compiling settings cost it more than they save (each notebook 11-23% faster so)
    client.execute(env={**os.environ, "TMPDIR": str(tmp), "XLA_FLAGS": users_xla_flags()})
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "stream" for o in outputs)
    # no "IProgress not found" (tqdm.auto in a kernel without ipywidgets) or other noise on stderr
    noise = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr" and "IProgress" in o.text]
    assert not noise, noise
    assert not os.listdir(tmp), f"{name} left files in its TMPDIR: {os.listdir(tmp)}"
