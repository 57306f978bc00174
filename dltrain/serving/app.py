"""The HTTP API on Ray Serve: a FastAPI ingress in front of replicas that micro-batch their predictions.

- `POST /v1/predict`: image files (multipart), each answered with its top-k labels (`?top_k=`, default 3);
- the Open Inference Protocol v2 (KServe, Triton, Seldon Core 2): `GET /v2/health/live`, `/v2/health/ready`,
  `/v2/models/{name}` and `POST /v2/models/{name}/infer` with a UINT8 (pixels 0-255) or FP32 (values in [0, 1])
  tensor shaped like the model's input batch, answered with the probabilities tensor;
- Seldon's v1 protocol: `POST /api/v1.0/predictions` with `{"data": {"ndarray": ...}}` (pixels 0-255);
- `GET /metadata`: the model, its run and version, class names, input shape and preprocessing;
- `GET /`: a page to try the model in a browser (page.html: uploads, their top 3, a gallery and a word cloud).
Bad input gets a 4xx and a one-line JSON error, `{"error": "..."}`; the replica stays up. With an API key, every
request but the health checks needs `Authorization: Bearer KEY` (or `X-API-Key: KEY`). A server on a loopback address
answers only requests for a loopback host name (the Host header), so that no web page can reach it by DNS rebinding.
There is no /docs, /redoc or /openapi.json.
"""

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from dltrain.serving.images import BadImage, decode
from dltrain.serving.source import ModelSource

MAX_BODY_BYTES = 16 * 1024 * 1024  # a request's body: 16 MiB
MAX_IMAGES = 64  # images (or tensor rows) in one request
MAX_TOP_K = 100
BATCH_SIZE = MAX_IMAGES  # images a replica predicts at once, gathered from concurrent requests (one request fits)
BATCH_WAIT_S = 0.005  # how long a replica waits for more requests to fill a batch
PREPROCESSING = (
    "image uploads: decoded by Pillow, converted to grayscale (or RGB for 3-channel models), resized to the "
    "model's input, inverted when the background is light (training items are light on black), pixels scaled to "
    "[0, 1]; tensors: UINT8 scaled to [0, 1], FP32 taken as already scaled, never resized or inverted"
)

PAGE = (Path(__file__).parent / "page.html").read_text()

FLOAT32_MAX = float(np.finfo(np.float32).max)

# No generated docs: /docs and /redoc load scripts from a CDN, and /openapi.json would describe the API to anyone.
app = FastAPI(title="dltrain model server", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(StarletteHTTPException)  # FastAPI's, and Starlette's own (404, 405, a malformed form)
async def _one_line_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(error.detail).split())}, status_code=error.status_code)


@app.exception_handler(RequestValidationError)
async def _invalid_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0]
    where = " ".join(str(part) for part in first.get("loc", ()))
    return JSONResponse({"error": " ".join(f"{where}: {first.get('msg', 'invalid')}".split())}, status_code=422)


@app.middleware("http")
async def _check_host(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """On a loopback address, refuse a request whose Host is not a loopback name: a web page that rebinds its own
    name to 127.0.0.1 (DNS rebinding) sends its own name."""
    allowed = getattr(request.app.state, "allowed_hosts", None)
    host = request.headers.get("host", "")
    if allowed is not None and (urlsplit(f"//{host}").hostname or "").rstrip(".") not in allowed:
        message = f"Host {host!r} is not this server's: it answers {', '.join(allowed)} (see README.md, Serving)"
        return JSONResponse({"error": " ".join(message.split())}, status_code=400)
    return await call_next(request)


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


async def _body(request: Request) -> bytes:
    """The request's body, refused with 413 beyond MAX_BODY_BYTES: at once where its Content-Length says so, else
    as soon as that much has come; the rest is never read."""
    if hasattr(request, "_body"):  # read already
        return request._body
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _bad(f"the request body is {int(declared):,} bytes; at most {MAX_BODY_BYTES:,}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _bad(f"the request body is over {MAX_BODY_BYTES:,} bytes; at most {MAX_BODY_BYTES:,}", 413)
        chunks.append(chunk)
    request._body = b"".join(chunks)  # where Starlette keeps a read body, for request.form() to parse
    return request._body


async def _json(request: Request) -> dict:
    """The body's JSON object, parsed off the event loop (16 MiB of JSON takes a while)."""
    body = await _body(request)
    try:
        payload = await asyncio.to_thread(json.loads, body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _bad(f"the body is not JSON: {error}") from None
    except RecursionError:
        raise _bad("the body's JSON is nested too deeply") from None
    if not isinstance(payload, dict):
        raise _bad("the body must be a JSON object")
    return payload


def _rows(count: int) -> None:
    if count < 1 or count > MAX_IMAGES:
        raise _bad(f"{count} images in one request; send 1 to {MAX_IMAGES}", 413 if count > MAX_IMAGES else 400)


# Requests a replica takes at once: at least a full batch's worth, or the batches could never fill and the
# router would hold (and back off) the requests beyond Ray Serve's default of 5 (measured: 8 req/s at 32 clients).
MAX_ONGOING_REQUESTS = 2 * BATCH_SIZE


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress(app)
class ModelServer:
    """One replica: the model in memory, predicting micro-batches of the requests it is sent."""

    def __init__(self, source: ModelSource, api_key: str | None, allowed_hosts: tuple[str, ...] | None = None):
        """`allowed_hosts`: the Host names answered (a loopback server's), or None: any."""
        from dltrain.serving.classifier import Classifier  # Keras loads in the replicas only, not in the driver

        app.state.allowed_hosts = allowed_hosts  # read by _check_host, in this replica's process
        self.source, self.api_key = source, api_key
        self.classifier = Classifier(source.model_bytes, source.class_names)
        self.input_shape = self.classifier.input_shape

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        bearer = request.headers.get("authorization", "")
        given = bearer[7:] if bearer.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise _bad("a missing or wrong API key: send Authorization: Bearer KEY", 401)

    @serve.batch(
        max_batch_size=BATCH_SIZE,
        batch_wait_timeout_s=BATCH_WAIT_S,
        batch_size_fn=lambda requests: sum(len(inputs) for inputs in requests),  # images, not requests
    )
    async def _predict(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        """The probabilities of each request's inputs (float32 in [0, 1], shaped like the model's input batch),
        predicted together with those of the requests that came at the same time."""
        probabilities = self.classifier.probabilities(np.concatenate(requests))
        ends = np.cumsum([len(inputs) for inputs in requests])[:-1]
        return np.split(probabilities, ends)

    def _tensor(self, values: object, dtype: str) -> np.ndarray:
        """`values` (nested lists or a flat list) as a batch of the model's input shape, scaled to [0, 1]."""
        numeric = {"UINT8": np.uint8, "FP32": np.float32}
        if dtype not in numeric:
            raise _bad(f"datatype {dtype!r} is not accepted: use UINT8 (pixels 0-255) or FP32 (values in [0, 1])")
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError, RecursionError):  # text, ragged or deep lists, huge integers
            raise _bad("the tensor's data must be numbers") from None
        if dtype == "UINT8" and (array.min(initial=0) < 0 or array.max(initial=0) > 255 or np.any(array % 1)):
            raise _bad("UINT8 data must be integers from 0 to 255")
        if dtype == "FP32" and not np.all(np.isfinite(array)):
            raise _bad("FP32 data must be finite numbers")
        if dtype == "FP32" and np.abs(array).max(initial=0) > FLOAT32_MAX:
            raise _bad(f"FP32 data must fit in 32 bits: at most {FLOAT32_MAX:.4g} in size")
        return (array / 255.0 if dtype == "UINT8" else array).astype(np.float32)

    def _shaped(self, array: np.ndarray, shape: list) -> np.ndarray:
        expected = f"[N, {', '.join(map(str, self.input_shape))}]"
        if not isinstance(shape, list) or not all(isinstance(size, int) for size in shape):
            raise _bad(f"the tensor's shape must be a list of integers, {expected}")
        if tuple(shape[1:]) != self.input_shape or len(shape) != len(self.input_shape) + 1:
            raise _bad(f"the tensor's shape {shape} does not match the model's input {expected}")
        _rows(shape[0])
        if array.size != int(np.prod(shape)):
            raise _bad(f"the tensor has {array.size} values for shape {shape}")
        return array.reshape(shape)

    @app.get("/", response_class=HTMLResponse)
    def page(self) -> str:
        return PAGE  # it asks for the API key itself, when the server has one

    @app.get("/v2/health/live")
    def live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready(self) -> dict:
        return {"ready": True}

    @app.get("/metadata")
    def metadata(self, request: Request) -> dict:
        self._authorize(request)
        return self.source.metadata() | {
            "class_names": self.classifier.class_names,
            "input_shape": list(self.input_shape),
            "preprocessing": PREPROCESSING,
        }

    @app.get("/v2/models/{name}")
    def model_metadata(self, name: str, request: Request) -> dict:
        self._authorize(request)
        self._check_name(name)
        return {
            "name": self.source.name,
            "versions": [str(self.source.version)] if self.source.version is not None else [],
            "platform": "tensorflow_keras",
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, *self.input_shape]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.classifier.class_names)]}],
        }

    def _check_name(self, name: str) -> None:
        if name != self.source.name:
            raise _bad(f"no model {name!r} here: this server serves {self.source.name!r}", 404)

    @app.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> dict:
        self._authorize(request)
        self._check_name(name)
        payload = await _json(request)
        inputs = payload.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise _bad('"inputs" must be a list of one tensor: {"name", "shape", "datatype", "data"}')
        tensor = inputs[0]
        array = self._shaped(self._tensor(tensor.get("data"), tensor.get("datatype")), tensor.get("shape"))
        probabilities = await self._predict(array)
        return {
            "model_name": self.source.name,
            "model_version": str(self.source.version) if self.source.version is not None else None,
            "id": payload.get("id"),
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape),
                         "data": probabilities.ravel().tolist()}],
        }  # fmt: skip

    @app.post("/api/v1.0/predictions")
    async def seldon(self, request: Request) -> dict:
        self._authorize(request)
        payload = await _json(request)
        data = payload.get("data")
        if not isinstance(data, dict) or "ndarray" not in data:
            raise _bad('the body must be {"data": {"ndarray": [...]}}: images of pixels 0-255')
        array = self._tensor(data["ndarray"], "UINT8")
        if array.shape[1:] == self.input_shape[:-1] and self.input_shape[-1] == 1:
            array = array[..., np.newaxis]  # images given without their one channel
        array = self._shaped(array, list(array.shape))
        probabilities = await self._predict(array)
        return {"data": {"names": self.classifier.class_names, "ndarray": probabilities.tolist()},
                "meta": self.source.metadata()}  # fmt: skip

    @app.post("/v1/predict")
    async def predict(self, request: Request, top_k: int = 3) -> dict:
        self._authorize(request)
        if not 1 <= top_k <= MAX_TOP_K:
            raise _bad(f"top_k={top_k}: expected 1 to {MAX_TOP_K}")
        await _body(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise _bad("send the images as multipart/form-data files", 415)
        # One more than allowed, so that too many files get the count in _rows, not the parser's own message.
        form = await request.form(max_files=MAX_IMAGES + 1, max_fields=MAX_IMAGES + 1, max_part_size=MAX_BODY_BYTES)
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        _rows(len(files))
        pixels = []
        for index, file in enumerate(files):
            name = file.filename or f"file {index + 1}"
            try:  # decoded off the event loop, which goes on answering other requests (health checks too)
                pixels.append(await asyncio.to_thread(decode, await file.read(), self.input_shape, name))
            except BadImage as error:
                raise _bad(str(error)) from None
        probabilities = await self._predict(np.stack(pixels).astype(np.float32) / 255.0)
        predictions = self.classifier.top(probabilities, top_k)
        return self.source.metadata() | {
            "predictions": [{"file": file.filename, "top": top} for file, top in zip(files, predictions, strict=True)]
        }
