"""The Python API (dltrain.train, open_run, list_runs, register_model, set_alias, load_model) as a user calls it, over
a real run: the same runs, records and predictions as the `dltrain` command's, and one-line DltrainErrors."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import dltrain
from dltrain.data import fashion_mnist

DLTRAIN = str(Path(sys.executable).parent / "dltrain")
HEAVY = ("keras", "tensorflow", "jax", "ray", "hydra", "pandas")  # what `import dltrain` must not load


def _dltrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DLTRAIN, *args], capture_output=True, text=True, timeout=300)


def _one_line_error(call, message: str) -> None:
    """`call()` raises a DltrainError of one line that holds `message`."""
    with pytest.raises(dltrain.DltrainError) as raised:
        call()
    assert message in str(raised.value) and "\n" not in str(raised.value), str(raised.value)


@pytest.fixture
def storage(completed_run, tmp_path) -> Path:
    """A storage of this test's own holding a copy of the real completed run."""
    shutil.copytree(completed_run, tmp_path / "runs" / completed_run.name)
    return tmp_path / "runs"


def test_import_dltrain_loads_no_framework_and_offers_the_api_by_name():
    script = (
        "import json, sys, dltrain\n"
        f"loaded = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "names = {name: type(getattr(dltrain, name)).__name__ for name in dltrain.__all__}\n"
        f"print(json.dumps([loaded, names, [name for name in {HEAVY!r} if name in sys.modules]]))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    loaded, names, after_access = json.loads(result.stdout)
    assert loaded == [] and after_access == []  # the API's modules load none of them either, until used
    assert names == {"train": "function", "RunHandle": "type", "open_run": "function", "list_runs": "function",
                     "LoadedModel": "type", "load_model": "function", "register_model": "function",
                     "set_alias": "function", "DltrainError": "type"}  # fmt: skip


def test_bad_arguments_are_dltrain_errors_in_one_line(tmp_path):
    _one_line_error(lambda: dltrain.open_run("../x", storage=tmp_path), "'../x' is not a run id")
    _one_line_error(lambda: dltrain.open_run("20990101-000000-abcdef", storage=tmp_path), "no run '20990101-")
    _one_line_error(lambda: dltrain.open_run("fashion@production", storage=tmp_path), "no model 'fashion' in ")
    _one_line_error(lambda: dltrain.load_model("fashion:x", storage=tmp_path), "'fashion:x' is not a model reference")
    _one_line_error(lambda: dltrain.register_model("../x", "ok", storage=tmp_path), "'../x' is not a run id")
    _one_line_error(lambda: dltrain.set_alias("nope", 1, "9lives", storage=tmp_path), "'9lives' is not an alias")
    _one_line_error(lambda: dltrain.set_alias("nope", "1", "p", storage=tmp_path), "version='1': expected an integer")
    _one_line_error(lambda: dltrain.list_runs(tmp_path, status="DONE"), "status='DONE': expected one of PENDING")
    _one_line_error(lambda: dltrain.list_runs(tmp_path, limit=0), "limit=0: expected an integer >= 1")
    _one_line_error(lambda: dltrain.list_runs(tmp_path, sweep="../x"), "'../x' is not a run id")
    _one_line_error(lambda: dltrain.list_runs("ftp://host/runs"), "storage: storage.uri=ftp://host/runs: expected a")
    # Hydra's own messages, in one line, before anything imports Keras or starts a run.
    _one_line_error(lambda: dltrain.train(["model=nope"], storage=tmp_path),
                    "overrides: In 'config': Could not find 'model/nope'; Available options in 'model': backbone, "
                    "fashion")  # fmt: skip
    _one_line_error(
        lambda: dltrain.train(["trainer.epocs=2"], storage=tmp_path),
        "overrides: Could not override 'trainer.epocs'; To append to your config use +trainer.epocs=2",
    )
    _one_line_error(lambda: dltrain.train("model=fashion", storage=tmp_path), "expected a list of key=value strings")
    assert dltrain.list_runs(tmp_path) == [] and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_run_opened_by_id_gives_its_status_config_metrics_summary_plots_and_model(storage, real_data):
    (folder,) = storage.iterdir()
    run = dltrain.open_run(folder.name, storage=storage)
    assert (run.id, run.uri, run.status()) == (folder.name, str(folder), "COMPLETED")
    assert run.config()["trainer"]["epochs"] == 2 and run.config()["framework"]["name"] == "tensorflow"
    metrics = run.metrics()
    assert list(metrics["epoch"]) == [1, 2] and {"loss", "val_accuracy", "seconds"} <= set(metrics.columns)
    assert metrics.equals(pq.read_table(folder / "metrics.parquet").to_pandas())
    summary = run.summary()
    assert summary == json.loads((folder / "summary.json").read_text()) and summary["status"] == "COMPLETED"
    plots = run.plots()
    assert list(plots) == ["confusion_matrix.png", "curves.png"]
    assert all(png == (folder / "plots" / name).read_bytes() for name, png in plots.items())
    assert run.overview() == dltrain.list_runs(storage)[0]
    # The final Keras model scores the run's own test accuracy on the 10,000 test images.
    model = run.model()
    _, (images, labels) = fashion_mnist.load(real_data)
    predicted = model.predict(images.astype(np.float32) / 255.0, verbose=0).argmax(axis=1)
    assert (predicted == labels).mean() == pytest.approx(summary["test_accuracy"], abs=2e-4)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_the_command_lists_registers_aliases_and_predicts_as_the_api_does(storage, real_data, tmp_path):
    (run_id,) = [path.name for path in storage.iterdir()]
    listed = json.loads(_dltrain("runs", "list", "--json", "--storage", str(storage)).stdout)
    assert dltrain.list_runs(storage) == listed
    assert dltrain.list_runs(storage, status="FAILED") == [] and len(dltrain.list_runs(storage, limit=1)) == 1

    first = dltrain.register_model(run_id, "fashion", tags={"team": "vision"}, alias="staging", storage=storage)
    assert (first["version"], first["run_id"], first["tags"]) == (1, run_id, {"team": "vision"})
    assert first["uri"] == str(storage / "models" / "fashion" / "1")
    second = dltrain.open_run(run_id, storage=storage).register("fashion")
    assert second["version"] == 2 and dltrain.set_alias("fashion", 2, "staging", storage=storage) == 1
    shown = json.loads(_dltrain("models", "show", "fashion@staging", "--json", "--storage", str(storage)).stdout)
    assert shown["version"] == 2 and shown["status"] == "READY"  # the command reads what the API wrote
    assert dltrain.open_run("fashion@staging", storage=storage).id == run_id  # the run that version came from
    _one_line_error(lambda: dltrain.register_model(run_id, "fashion", tags={"a=b": "c"}, storage=storage),
                    "tags {'a=b': 'c'}: a key is letters, digits")  # fmt: skip

    model = dltrain.load_model("fashion@staging", storage=storage)
    assert (model.source.name, model.source.version, model.source.run_id) == ("fashion", 2, run_id)
    assert model.input_shape == (28, 28, 1) and model.class_names == list(fashion_mnist.CLASS_NAMES)
    _, (images, _) = fashion_mnist.load(real_data)
    images = images[:5]
    probabilities = model.predict(images)
    expected = model.keras.predict(images.astype(np.float32) / 255.0, verbose=0)
    assert probabilities.shape == (5, 10) and np.allclose(probabilities, expected, atol=1e-5)
    # Without the channel, as floats in [0, 1], as PNG files or their bytes: the same images, the same answer.
    assert np.allclose(model.predict(images[..., 0]), probabilities, atol=1e-6)
    assert np.allclose(model.predict(images.astype(np.float32) / 255.0), probabilities, atol=1e-6)
    files = []
    for index, image in enumerate(images):
        files.append(tmp_path / f"item-{index}.png")
        files[-1].write_bytes(_png(image))
    assert np.allclose(model.predict(files), probabilities, atol=1e-6)
    assert np.allclose(model.predict([path.read_bytes() for path in files]), probabilities, atol=1e-6)
    # `dltrain predict` prints the API's top 3.
    top = model.top(files, k=3)
    printed = _dltrain("predict", "fashion@staging", *map(str, files), "--storage", str(storage)).stdout.splitlines()
    for row, path, classes in zip(printed[1:], files, top, strict=True):
        expected_row = "  ".join(f"{c['label']} {c['probability']:.3f}" for c in classes)
        assert " ".join(row.split()) == " ".join(f"{path} {expected_row}".split())

    _one_line_error(lambda: model.predict(images[:, :20]), "inputs of shape [5, 20, 28, 1]: expected a batch of the "
                    "model's input, [N, 28, 28, 1]")  # fmt: skip
    _one_line_error(lambda: model.predict(images.astype(np.int64)), "inputs of dtype int64: expected uint8 pixels")
    _one_line_error(lambda: model.predict([tmp_path / "missing.png"]), "missing.png: No such file or directory")
    _one_line_error(lambda: model.predict([b"not an image"]), "image 1: not a readable image")
    _one_line_error(lambda: model.top(images, k=11), "top_k=11: expected 1 to 10, the model's classes")


@pytest.mark.slow
def test_train_returns_the_run_and_keeps_to_the_framework_keras_was_imported_on(real_data, tmp_path):
    # As in a notebook: train, then ask for another framework in the same process; the run's driver log keeps
    # the INFO records, as the command's does.
    script = (
        "import json, sys, dltrain\n"
        "run = dltrain.train(['trainer.epochs=1', 'dataset.limit=640', 'trainer.batch_size=64', "
        f"'trainer.progress=none', 'dataset.path={real_data}'], storage=sys.argv[1])\n"
        "found = {'id': run.id, 'status': run.status(), 'epochs': len(run.metrics())}\n"
        "for overrides in (['framework=jax'], ['trainer.epochs=0']):\n"
        "    try:\n"
        "        dltrain.train(overrides, storage=sys.argv[1])\n"
        "    except dltrain.DltrainError as error:\n"
        "        found[overrides[0]] = str(error)\n"
        "print(json.dumps(found))\n"
    )
    storage = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-c", script, str(storage)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    assert (found["status"], found["epochs"]) == ("COMPLETED", 1)
    assert f"dltrain: run {found['id']} -> {storage / found['id']}\n" in result.stdout
    assert found["framework=jax"] == ("framework=jax: this process imported Keras on tensorflow already, and Keras "
                                      "keeps the backend it was first imported with; train framework=jax in a new "
                                      "process")  # fmt: skip
    assert found["trainer.epochs=0"] == "trainer.epochs=0 is invalid: expected an integer >= 1"
    assert [path.name for path in storage.iterdir()] == [found["id"]]  # the refused ones made no run
    run = storage / found["id"]
    assert " INFO " in (run / "logs" / "driver.log").read_text()
    command = json.loads((run / "provenance.json").read_text())["command"]
    assert command == (f"python -m dltrain trainer.epochs=1 dataset.limit=640 trainer.batch_size=64 "
                       f"trainer.progress=none dataset.path={real_data} storage.uri={storage}")  # fmt: skip
