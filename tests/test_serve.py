"""`dltrain serve` and `dltrain predict` as a user runs them: a real Ray Serve on 127.0.0.1 serving a registered
model (`NAME@alias`) of a real run, asked over HTTP with real Fashion-MNIST test images."""

import collections
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import keras
import numpy as np
import pyarrow.fs
import pytest
from PIL import Image

from dltrain.data.idx import read_idx
from dltrain.job import StorageConfig
from dltrain.registry import Registry
from dltrain.runs import RunStore
from dltrain.storage import open_storage

from helpers.ports import free_port
from helpers.s3server import create_bucket

pytestmark = pytest.mark.slow

KEY = "test-key-" + uuid.uuid4().hex  # the server's API key, passed through the environment as users would
IMAGES = 8  # the test images sent


@pytest.fixture(scope="module")
def served(completed_run, tmp_path_factory):
    """`dltrain serve fashion@production` with an API key, started and stopped here: (base URL, run folder)."""
    storage = tmp_path_factory.mktemp("served")
    run_folder = storage / completed_run.name
    shutil.copytree(completed_run, run_folder)
    Registry(open_storage(StorageConfig(uri=str(storage)))).register(
        RunStore(open_storage(StorageConfig(uri=str(storage)))).get(run_folder.name), "fashion", {}, alias="production"
    )
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dltrain"), "serve", "fashion@production", "--storage", str(storage),
         "--port", str(port), "--api-key-env", "DLTRAIN_TEST_KEY"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "DLTRAIN_TEST_KEY": KEY},
    )  # fmt: skip
    watchdog = threading.Timer(300, process.kill)  # a server that never comes up fails the tests, not the suite
    watchdog.start()
    try:
        line = process.stdout.readline()  # its first line says it serves, once the replica is up
        watchdog.cancel()
        assert line.startswith("dltrain: serving run"), line + process.stderr.read()[-3000:]
        yield f"http://127.0.0.1:{port}", run_folder, process
    finally:
        watchdog.cancel()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()


def _request(url: str, body: bytes | None = None, headers: dict | None = None, key: str | None = KEY):
    """(status, JSON answer) of a GET (or a POST of `body`), with the API key unless `key` is None."""
    headers = dict(headers or {}) | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
            for name, data in files
        )
        + f"--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _encoded(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0]).save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def test_images(real_data) -> tuple[np.ndarray, np.ndarray]:
    """The first IMAGES test-set images (uint8, 28x28x1) and their labels."""
    images = read_idx(real_data / "t10k-images-idx3-ubyte.gz")[:IMAGES, ..., np.newaxis]
    return images, read_idx(real_data / "t10k-labels-idx1-ubyte.gz")[:IMAGES]


@pytest.fixture(scope="module")
def offline(served, test_images) -> np.ndarray:
    """The run's final model's `predict` on the same images, preprocessed as in training."""
    model = keras.models.load_model(served[1] / "model" / "model.keras")
    return model.predict(test_images[0].astype(np.float32) / 255.0, verbose=0)


def test_image_uploads_get_the_offline_models_top_3(served, test_images, offline):
    url, run_folder, _ = served
    files = [(f"test-{index}.png", _encoded(image, "PNG")) for index, image in enumerate(test_images[0])]
    status, answer = _request(f"{url}/v1/predict", *_multipart(files))
    assert status == 200, answer
    assert (answer["model"], answer["version"], answer["run_id"]) == ("fashion", 1, run_folder.name)
    names = json.loads((run_folder / "model" / "confusion_matrix.json").read_text())["class_names"]
    for prediction, probabilities, (name, _) in zip(answer["predictions"], offline, files, strict=True):
        expected = np.argsort(-probabilities)[:3]
        assert prediction["file"] == name
        assert [entry["label"] for entry in prediction["top"]] == [names[index] for index in expected]
        np.testing.assert_allclose([entry["probability"] for entry in prediction["top"]], probabilities[expected],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip

    # A JPEG, and a photo-like light background (inverted back), give the same classes; top_k is honoured.
    light = 255 - test_images[0][0]
    status, answer = _request(f"{url}/v1/predict?top_k=1", *_multipart([("light.jpg", _encoded(light, "JPEG"))]))
    assert status == 200 and len(answer["predictions"][0]["top"]) == 1
    assert answer["predictions"][0]["top"][0]["label"] == names[int(np.argmax(offline[0]))]


def test_open_inference_protocol_v2_and_seldon_v1_match_the_offline_model(served, test_images, offline):
    url, _, _ = served
    assert _request(f"{url}/v2/health/live", key=None) == (200, {"live": True})
    assert _request(f"{url}/v2/health/ready", key=None) == (200, {"ready": True})
    status, described = _request(f"{url}/v2/models/fashion")
    assert status == 200 and described["inputs"][0]["shape"] == [-1, 28, 28, 1] and described["versions"] == ["1"]
    images = test_images[0]
    json_header = {"Content-Type": "application/json"}
    for datatype, data in (("UINT8", images.ravel().tolist()), ("FP32", (images / 255.0).ravel().tolist())):
        tensor = {"name": "images", "shape": list(images.shape), "datatype": datatype, "data": data}
        status, answer = _request(f"{url}/v2/models/fashion/infer", json.dumps({"inputs": [tensor]}).encode(),
                                  json_header)  # fmt: skip
        assert status == 200, answer
        output = answer["outputs"][0]
        assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP32", [IMAGES, 10])
        np.testing.assert_allclose(np.reshape(output["data"], (IMAGES, 10)), offline, rtol=1e-5, atol=1e-6)

    payload = {"data": {"ndarray": images[..., 0].tolist()}}  # the seed demo's 28x28 pixel arrays
    status, answer = _request(f"{url}/api/v1.0/predictions", json.dumps(payload).encode(), json_header)
    assert status == 200, answer
    assert answer["data"]["names"][0] == "T-shirt/top"
    np.testing.assert_allclose(answer["data"]["ndarray"], offline, rtol=1e-5, atol=1e-6)

    status, metadata = _request(f"{url}/metadata")
    assert status == 200 and metadata["input_shape"] == [28, 28, 1] and len(metadata["class_names"]) == 10
    assert "inverted when the background is light" in metadata["preprocessing"]


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "message"),
    [
        ("/v1/predict", [("notes.txt", b"not an image at all")], None, 400, "notes.txt: not a readable image"),
        ("/v1/predict", "truncated", None, 400, "truncated.png: not a readable image"),
        ("/v1/predict", [(f"{n}.png", b"x") for n in range(65)], None, 413, "65 images in one request; send 1 to 64"),
        ("/v1/predict", b"x" * (17 * 1024 * 1024), "application/octet-stream", 413, "the request body is 17,825,792"),
        ("/v1/predict", b"{}", "application/json", 415, "send the images as multipart/form-data files"),
        ("/v1/predict?top_k=0", [("a.png", b"x")], None, 400, "top_k=0: expected 1 to 100"),
        ("/v2/models/fashion/infer", {"inputs": [{"shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}]},
         "application/json", 400, "the tensor's shape [1, 28, 28] does not match the model's input [N, 28, 28, 1]"),
        ("/v2/models/fashion/infer", {"inputs": [{"shape": [1, 28, 28, 1], "datatype": "INT64", "data": [0] * 784}]},
         "application/json", 400, "datatype 'INT64' is not accepted: use UINT8"),
        ("/v2/models/fashion/infer", {"inputs": [{"shape": [1, 28, 28, 1], "datatype": "UINT8", "data": [300] * 784}]},
         "application/json", 400, "UINT8 data must be integers from 0 to 255"),
        ("/v2/models/fashion/infer", {"inputs": [{"shape": [2, 28, 28, 1], "datatype": "FP32", "data": [0.5] * 784}]},
         "application/json", 400, "the tensor has 784 values for shape [2, 28, 28, 1]"),
        ("/v2/models/fashion/infer", b"{not json", "application/json", 400, "the body is not JSON"),
        ("/v2/models/other/infer", {"inputs": []}, "application/json", 404, "no model 'other' here"),
        ("/api/v1.0/predictions", {"data": {"tensor": []}}, "application/json", 400, '{"data": {"ndarray": [...]}}'),
        # Hostile or broken clients: deep JSON, numbers beyond float32 or any float, FastAPI's own validation of a
        # parameter, malformed multipart bodies, formats other than PNG, JPEG, BMP and GIF, a decompression bomb.
        ("/v2/models/fashion/infer", b"[" * 100_000 + b"]" * 100_000, "application/json", 400,
         "the body's JSON is nested too deeply"),
        ("/v2/models/fashion/infer", {"inputs": [{"shape": [1, 28, 28, 1], "datatype": "FP32", "data": [1e39] * 784}]},
         "application/json", 400, "FP32 data must fit in 32 bits"),
        ("/v2/models/fashion/infer", b'{"inputs": [{"shape": [1, 28, 28, 1], "datatype": "UINT8", "data": [1' +
         b"0" * 400 + b"]}]}", "application/json", 400, "the tensor's data must be numbers"),
        ("/api/v1.0/predictions", {"data": {"ndarray": json.loads("[" * 100 + "1" + "]" * 100)}},
         "application/json", 400, "the tensor's data must be numbers"),
        ("/v1/predict?top_k=three", [("a.png", b"x")], None, 422, "query top_k: Input should be a valid integer"),
        ("/v1/predict", b"--x\r\nnot a part", "multipart/form-data", 400, "Missing boundary in multipart"),
        ("/v1/predict", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
         "multipart/form-data; boundary=b", 400, 'The Content-Disposition header field "name" must be provided'),
        ("/v1/predict", [("page.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n")], None, 400,
         "page.eps: not a readable image (not a PNG, JPEG, BMP or GIF)"),
        ("/v1/predict", "tiff", None, 400, "item.tiff: not a readable image (not a PNG, JPEG, BMP or GIF)"),
        ("/v1/predict", "bomb", None, 400, "bomb.png: 12000x12000 pixels, more than 50,000,000"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_4xx_and_one_line_and_the_server_stays_up(
    served, test_images, path, body, content_type, status, message
):
    url, _, _ = served
    if body == "truncated":
        body = [("truncated.png", _encoded(test_images[0][0], "PNG")[:60])]
    if body == "tiff":
        body = [("item.tiff", _encoded(test_images[0][0], "TIFF"))]
    if body == "bomb":
        body = [("bomb.png", _blank_png(12_000, 12_000))]  # 144 M pixels in 140 KB
    if isinstance(body, list):
        data, headers = _multipart(body)
    else:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        headers = {"Content-Type": content_type}
    if len(data) > 16 * 2**20:  # the server answers before the body's end: sent until it does
        head = f"POST {path} HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
        got, answer = _send_raw(url, head, [data[start : start + 2**20] for start in range(0, len(data), 2**20)])
    else:
        got, answer = _request(url + path, data, headers)
    assert (got, list(answer)) == (status, ["error"]), answer
    assert message in answer["error"] and "\n" not in answer["error"]
    assert _request(f"{url}/v2/health/ready", key=None) == (200, {"ready": True})


def _blank_png(width: int, height: int) -> bytes:
    """A black grayscale PNG, written row by row: small on disk whatever its size in pixels."""
    compressor, rows = zlib.compressobj(9), []
    row = b"\0" * (width + 1)  # filter byte, then the pixels
    rows = [compressor.compress(row) for _ in range(height)] + [compressor.flush()]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(rows)) + chunk(b"IEND", b"")


def test_only_the_api_answers_every_other_path_gets_a_json_404_or_405(served):
    url, _, _ = served
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/nope"):
        assert _request(url + path) == (404, {"error": "Not Found"}), path
    assert _request(f"{url}/v1/predict") == (405, {"error": "Method Not Allowed"})


def test_a_request_for_another_host_name_is_refused_as_dns_rebinding(served):
    url, _, _ = served
    port = url.rsplit(":", 1)[1]
    for host in (f"rebound.example:{port}", "rebound.example", f"127.0.0.1.rebound.example:{port}"):
        status, answer = _request(f"{url}/v2/health/ready", headers={"Host": host}, key=None)
        assert status == 400 and answer["error"].startswith(f"Host {host!r} is not this server's: it answers "), host
    for host in (f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}", "localhost"):
        assert _request(f"{url}/v2/health/ready", headers={"Host": host}, key=None) == (200, {"ready": True}), host


def _send_raw(url: str, head: str, pieces: list[bytes]) -> tuple[int, dict]:
    """(status, JSON answer) of a request sent as `head` (its request line and headers) and body `pieces`, sent
    until the server answers and closes (as a server that cuts a body off does), whatever is left unsent."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(head.encode() + f"Host: {host}:{port}\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
        for piece in pieces:
            try:
                connection.sendall(piece)
            except OSError:  # the server answered and closed: its answer is in the socket's buffer
                break
        answer = b""
        while not answer.endswith(b"}") and (data := connection.recv(65536)):
            answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.split(b"\r\n\r\n", 1)[1])


def test_bodies_over_the_limit_are_cut_off_not_read_to_their_end(served):
    url, _, _ = served
    megabyte = b"x" * 2**20
    # A GiB announced and 1 MiB of it sent; 17 MiB sent in chunks, without the last chunk: if the server read either
    # to its end, it would wait for the rest forever.
    declared = "POST /v1/predict HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 1073741824\r\n"
    assert _send_raw(url, declared, [megabyte]) == (
        413, {"error": "the request body is 1,073,741,824 bytes; at most 16,777,216"}
    )  # fmt: skip
    chunked = "POST /v1/predict HTTP/1.1\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
    assert _send_raw(url, chunked, [b"100000\r\n" + megabyte + b"\r\n"] * 17) == (
        413, {"error": "the request body is over 16,777,216 bytes; at most 16,777,216"}
    )  # fmt: skip
    assert _request(f"{url}/v2/health/ready", key=None) == (200, {"ready": True})


def test_images_are_decoded_off_the_event_loop(served):
    """While a request's large images decode, the replica answers health checks."""
    url, _, _ = served
    heavy = _blank_png(7_000, 7_000)  # 49 M pixels, under the limit: decoded and resized, a second or so each
    answered = []
    body, headers = _multipart([(f"large-{index}.png", heavy) for index in range(6)])
    predicting = threading.Thread(target=lambda: answered.append(("predict", _request(f"{url}/v1/predict", body,
                                                                                     headers)[0])))  # fmt: skip
    predicting.start()
    try:
        while predicting.is_alive() and len(answered) < 3:
            answered.append(("health", _request(f"{url}/v2/health/ready", key=None)[0]))
    finally:
        predicting.join(timeout=300)
    assert answered[:3] == [("health", 200)] * 3 and ("predict", 200) in answered, answered


def test_a_missing_or_wrong_api_key_gets_401(served, test_images):
    url, _, _ = served
    tensor = {"shape": [1, 28, 28, 1], "datatype": "UINT8", "data": test_images[0][0].ravel().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    for key in (None, "wrong"):
        status, answer = _request(f"{url}/v2/models/fashion/infer", body, {"Content-Type": "application/json"}, key)
        assert status == 401 and answer["error"].startswith("a missing or wrong API key")
        assert _request(f"{url}/metadata", key=key)[0] == 401
    assert _request(f"{url}/v2/models/fashion/infer", body, {"Content-Type": "application/json"})[0] == 200


def test_predict_prints_the_offline_top_3_from_a_model_in_s3(served, test_images, offline, s3_session_server, tmp_path):
    _, run_folder, _ = served
    paths = []
    for index, image in enumerate(test_images[0][:3]):
        paths.append(tmp_path / f"item-{index}.png")
        paths[-1].write_bytes(_encoded(image, "PNG"))
    server, bucket = s3_session_server, create_bucket(s3_session_server)
    pyarrow.fs.copy_files(str(run_folder.parent), f"{bucket}/runs", destination_filesystem=server.arrow_fs())
    storage = ["--storage", f"s3://{bucket}/runs", "--endpoint-url", server.endpoint_url]
    result = subprocess.run([str(Path(sys.executable).parent / "dltrain"), "predict", "fashion:1", *map(str, paths),
                             *storage], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **server.env()})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    names = json.loads((run_folder / "model" / "confusion_matrix.json").read_text())["class_names"]
    rows = result.stdout.splitlines()
    assert rows[0].split() == ["image", "#1", "#2", "#3"]
    for row, path, probabilities in zip(rows[1:], paths, offline[:3], strict=True):
        expected = "  ".join(f"{names[i]} {probabilities[i]:.3f}" for i in np.argsort(-probabilities)[:3])
        assert row.startswith(str(path)) and " ".join(row.split()) == " ".join(f"{path} {expected}".split())


@pytest.mark.parametrize(
    ("args", "environment", "message"),
    [
        (["20990101-000000-abcdef"], {}, "no run '20990101-000000-abcdef' in"),
        (["fashion@production"], {}, "no model 'fashion' in"),
        (["x", "--api-key-env", "DLTRAIN_UNSET_KEY"], {}, "--api-key-env DLTRAIN_UNSET_KEY: that environment variable"),
        (["x", "--replicas", "0"], {}, "--replicas 0: expected at least 1"),
        (["x", "--port", "70000"], {}, "--port 70000: expected 1 to 65535"),
        (["x", "--host", "0.0.0.0"], {}, "--host 0.0.0.0 without --api-key-env: anyone who reaches this machine"),
        (["x", "--host", "myhost.example"], {}, "--host myhost.example without --api-key-env"),
    ],
)
def test_serve_refuses_bad_input_in_one_line_before_starting_ray(args, environment, message, tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "dltrain"), "serve", *args, "--storage",
                             str(tmp_path)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("dltrain: error: ") and message in line, line


def test_serve_refuses_a_port_in_use(served, tmp_path):
    port = int(served[0].rsplit(":", 1)[1])
    result = subprocess.run([str(Path(sys.executable).parent / "dltrain"), "serve", "x", "--port", str(port),
                             "--storage", str(tmp_path)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"dltrain: error: cannot listen on 127.0.0.1:{port}: ")


ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"  # the page's screenshots, kept after the tests
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def test_the_page_uploads_images_and_shows_their_top_3_a_gallery_and_a_word_cloud(
    served, test_images, offline, tmp_path
):
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: the page is tested with Debian's chromium (apt install chromium)")
    from playwright.sync_api import sync_playwright

    url, run_folder, _ = served
    names = json.loads((run_folder / "model" / "confusion_matrix.json").read_text())["class_names"]
    paths = []
    for index, image in enumerate(test_images[0][:3]):
        paths.append(tmp_path / f"item-{index}.png")
        paths[-1].write_bytes(_encoded(image, "PNG"))
    expected = {
        path.name: [names[i] for i in np.argsort(-row)[:3]] for path, row in zip(paths, offline[:3], strict=True)
    }
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"{url}/")
            page.wait_for_selector("#key-row.shown")  # this server has a key: the page asks for it
            page.fill("#key", KEY)
            page.click("#key-save")
            page.wait_for_function("document.getElementById('title').textContent === 'fashion · version 1'")
            page.set_input_files("#files", [str(path) for path in paths])
            page.wait_for_function("document.querySelectorAll('.card .guess').length === 9", timeout=60_000)
            shown = page.eval_on_selector_all(
                ".card",
                "cards => cards.map(c => [c.querySelector('.name').textContent,"
                " [...c.querySelectorAll('.guess b')].map(b => b.textContent)])",
            )
            assert dict(shown) == expected
            words = page.eval_on_selector_all("#cloud .word", "ws => ws.map(w => [w.textContent, +w.dataset.count])")
            assert dict(words) == collections.Counter(label for labels in expected.values() for label in labels)
            page.screenshot(path=str(ARTIFACTS / "page-desktop.png"), full_page=True)

            label = expected[paths[0].name][0]  # clicking a word keeps the images with it in their top 3
            page.click(f"#cloud .word:text-is('{label}')")
            visible = page.eval_on_selector_all(".card:not([hidden]) .name", "ns => ns.map(n => n.textContent)")
            assert sorted(visible) == sorted(name for name, labels in expected.items() if label in labels)
            assert page.text_content("#filter").startswith(f"showing {len(visible)} of 3")
            page.click("#filter a")
            assert len(page.query_selector_all(".card:not([hidden])")) == 3

            page.set_viewport_size({"width": 390, "height": 844})  # a phone
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
            page.screenshot(path=str(ARTIFACTS / "page-phone.png"), full_page=True)
        finally:
            browser.close()
