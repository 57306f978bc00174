"""examples/transfer_learning.ipynb, run top to bottom by a real Jupyter kernel (nbclient) on small settings, so that
it never rots; and kept in git without outputs."""

import base64
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dltrain.job import StorageConfig
from dltrain.registry import Registry
from dltrain.runs import RunStore
from dltrain.storage import open_storage

REPOSITORY = Path(__file__).parents[1]
NOTEBOOK = REPOSITORY / "examples" / "transfer_learning.ipynb"
STEPS = ["pretrain", "before", "after", "fine-tune"]


def _read() -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return notebook


def _parameters(notebook: nbformat.NotebookNode) -> int:
    """The index of the cell tagged `parameters` (papermill's convention: settings are given after it)."""
    (index,) = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    return index


def test_the_notebook_is_kept_without_outputs():
    notebook = _read()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "PRETRAIN = []" in notebook.cells[_parameters(notebook)].source


@pytest.mark.slow
def test_the_transfer_learning_notebook_runs_top_to_bottom(real_data, tmp_path, monkeypatch):
    notebook = _read()
    storage = tmp_path / "runs"
    # Small settings, given in a cell after the parameters as papermill gives them: 100 images per class of 0-4
    # for 2 epochs of pretraining, then 3 epochs of each step on the experiment's 20 images per class of 5-9.
    settings = (
        f"DATA = {str(real_data)!r}\nSTORAGE = {str(storage)!r}\n"
        'PRETRAIN = ["dataset.per_class=100", "trainer.epochs=2", "trainer.progress=epochs"]\n'
        'TRANSFER = ["trainer.epochs=3", "trainer.progress=epochs"]\n'
    )
    notebook.cells.insert(_parameters(notebook) + 1, nbformat.v4.new_code_cell(settings))
    # What a test reads back from the kernel: the table, the registered model's accuracy on the test images, and
    # which interpreter and dltrain ran them.
    probe = (
        "import json, sys\nprint(json.dumps({'table': table.reset_index().to_dict('records'), 'accuracy': accuracy,"
        " 'python': sys.executable, 'dltrain': dltrain.__file__}))"
    )
    notebook.cells.append(nbformat.v4.new_code_cell(probe))
    # The kernel, a process of its own, is this interpreter (a kernel spec of its own: `python3` may name another
    # one) and runs this checkout's dltrain.
    kernels = tmp_path / "jupyter" / "kernels" / "dltrain-test"
    kernels.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "dltrain test", "language": "python"}
    (kernels / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])))
    in_tmp_path = {"metadata": {"path": str(tmp_path)}}  # the kernel's working folder
    NotebookClient(notebook, timeout=600, kernel_name="dltrain-test", resources=in_tmp_path).execute()

    (printed,) = [output["text"] for output in notebook.cells[-1].outputs if output.get("name") == "stdout"]
    found = json.loads(printed)
    assert found["python"] == sys.executable and found["dltrain"] == str(REPOSITORY / "dltrain" / "__init__.py")
    table = {row["step"]: row for row in found["table"]}
    assert list(table) == STEPS
    store = RunStore(open_storage(StorageConfig(uri=str(storage))))
    for step, row in table.items():
        run = store.get(row["run"])
        assert run.status()["status"] == "COMPLETED" and run.summary()["test_accuracy"] == row["test accuracy"]
        assert row["classes"] == ("0-4" if step == "pretrain" else "5-9")
    after = store.get(table["after"]["run"])
    assert after.config()["model"]["weights"] == f"run:{table['pretrain']['run']}"
    # The notebook shows one picture: the transferred model's confusion matrix, as its run drew it.
    (picture,) = [output["data"]["image/png"] for cell in notebook.cells if cell.cell_type == "code"
                  for output in cell.outputs if "image/png" in output.get("data", {})]  # fmt: skip
    assert base64.b64decode(picture) == after.storage.read_bytes(f"{after.path}/plots/confusion_matrix.png")
    # The best model of 5-9 was registered, and its predictions agree with its run's test accuracy.
    best = max(STEPS[1:], key=lambda step: table[step]["test accuracy"])
    assert Registry(store.storage).get("fashion-5-9@candidate")["run_id"] == table[best]["run"]
    assert found["accuracy"] == pytest.approx(table[best]["test accuracy"], abs=6e-4)  # 3 of 5,000 images
