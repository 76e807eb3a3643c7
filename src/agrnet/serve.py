"""``agrnet serve``: a one-page web demo on Starlette + uvicorn. Upload a photo, see the overlay and legend.

Routes (the JSON API is described by ``GET /openapi.json``):

- ``GET /`` the page; ``GET /healthz`` liveness and queue state;
- ``POST /parse[?detect_faces=true][&labels=png]`` takes the raw image bytes and answers JSON
  {"overlay": PNG data URL, "legend": [{name, color, fraction}], "size": [H, W], "faces": [{box,
  landmarks, score}] or null without detect_faces, "faces_skipped": int, "labels": index-PNG data URL
  with labels=png}; errors are JSON {"error": one line} with a 4xx/5xx status, never a traceback or a
  dropped connection.

Limits, so that one hostile or careless client cannot hold the server (see ``Limits``):

- bound to 127.0.0.1 unless told otherwise;
- the request head must arrive within ``header_timeout_s`` (uvicorn itself has no such deadline,
  so a slow-loris client would hold its connection forever), the body within ``body_timeout_s``;
  408 otherwise. Idle keep-alive connections close after ``keep_alive_s``;
- uploads over ``max_upload_bytes`` get 413 as soon as the limit is passed (or at once from
  Content-Length), without reading the rest; all bodies being read at once share
  ``max_buffered_bytes`` (503 beyond);
- the pixel budget is checked from the image header before decoding (422);
- photos are parsed at a bounded working size: the longer side is shrunk to ``working_side``
  pixels (the overlay and "size" are at that size). The network sees a fixed-size letterbox
  anyway, so this costs no accuracy that matters and makes a 4000x4000 photo about as cheap as a
  small one;
- decoding and inference run on ``workers`` threads off the event loop, with at most
  ``queue_size`` more requests waiting; beyond that 503 with Retry-After;
- a photo's faces go through the network a few at a time and at most the parser's ``max_faces``
  (default 32, the largest) are parsed; the answer counts the rest in ``faces_skipped``, so one photo
  tiled with hundreds of faces costs what 32 faces cost.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h11
import numpy as np
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from agrnet import __version__
from agrnet.data.classes import overlay
from agrnet.images import DEFAULT_MAX_PIXELS, ImageError, PixelBudgetError, check_size, decode_image, image_size
from agrnet.inference import Parser, Parsing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 16 * 2**20
    max_buffered_bytes: int = 128 * 2**20  # all uploads being read at once
    max_pixels: int = DEFAULT_MAX_PIXELS
    working_side: int = 1024
    workers: int = 2  # two, so that a small photo need not wait for a large one
    queue_size: int = 4  # requests waiting for a worker, beyond those running
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: int = 5
    retry_after_s: int = 2

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"serve limit {name} must be positive, got {value}")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>agrnet face parsing</title>
<style>
body { font-family: sans-serif; margin: 2em; }
#result img { max-width: 45vw; margin-right: 1em; }
.swatch { display: inline-block; width: 1em; height: 1em; margin-right: .4em; vertical-align: middle; }
#legend li { list-style: none; }
#error { color: #b00; }
</style></head>
<body>
<h1>agrnet face parsing</h1>
<p>Choose a face photo; it is parsed on the server and shown with a per-class legend.
Large photos are parsed at a reduced working size.</p>
<input type="file" id="file" accept="image/*">
<label><input type="checkbox" id="detect"> detect faces</label>
<p id="status"></p><p id="error"></p>
<div id="result"><img id="input" alt=""><img id="overlay" alt=""></div>
<ul id="legend"></ul>
<script>
document.getElementById("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const status = document.getElementById("status"), error = document.getElementById("error");
  status.textContent = "parsing..."; error.textContent = "";
  document.getElementById("input").src = URL.createObjectURL(file);
  const url = document.getElementById("detect").checked ? "/parse?detect_faces=true" : "/parse";
  let response, body;
  try {
    response = await fetch(url, {method: "POST", body: file});
    body = await response.json();
  } catch (failure) {
    status.textContent = ""; error.textContent = `request failed (${failure})`; return;
  }
  if (!response.ok) { status.textContent = ""; error.textContent = body.error; return; }
  document.getElementById("overlay").src = body.overlay;
  const legend = document.getElementById("legend");
  legend.innerHTML = "";
  for (const entry of body.legend) {
    const item = document.createElement("li");
    item.className = "class";
    item.innerHTML = `<span class="swatch" style="background:${entry.color}"></span>` +
      `${entry.name} (${(100 * entry.fraction).toFixed(1)}%)`;
    legend.appendChild(item);
  }
  status.textContent = `done: ${body.size[1]}x${body.size[0]}`;
});
</script></body></html>
"""


class DetectFacesUnsupported(RuntimeError):
    """The parser has no ``detect_faces`` option."""


def _png_data_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _parse(parser: Parser, rgb: np.ndarray, detect_faces: bool) -> Parsing:
    if not detect_faces:
        return parser.predict(rgb)
    if parser.spec.subject != "face":
        raise DetectFacesUnsupported(f"this model parses whole {parser.spec.subject}s; send it without detect_faces")
    try:
        return parser.predict(rgb, detect_faces=True)  # type: ignore[call-arg]
    except TypeError as error:
        if "detect_faces" not in str(error):
            raise
        raise DetectFacesUnsupported("this parser cannot detect faces (no detect_faces option)") from None


def parse_image(
    parser: Parser, data: bytes, limits: Limits, detect_faces: bool = False, label_png: bool = False
) -> bytes:
    """Encoded image bytes -> the JSON answer of ``POST /parse`` (encoded here, off the event loop)."""
    rgb = decode_image(data, max_pixels=limits.max_pixels, name="upload", max_side=limits.working_side)
    result = _parse(parser, rgb, detect_faces)
    labels = result.labels
    counts = np.bincount(labels.ravel(), minlength=parser.spec.num_classes)
    legend = [
        {"name": name, "color": "#" + bytes(parser.spec.palette[i]).hex(), "fraction": counts[i] / labels.size}
        for i, name in enumerate(parser.spec.class_names)
        if counts[i] > 0
    ]
    faces = None if result.faces is None else [
        {"box": [round(float(v), 2) for v in face.box], "landmarks": np.round(face.landmarks, 2).tolist(),
         "score": round(float(face.score), 4)}
        for face in result.faces
    ]  # fmt: skip
    payload = {
        "overlay": _png_data_url(overlay(rgb, labels, parser.spec.palette)),
        "legend": legend,
        "size": list(labels.shape),
        "faces": faces,
        "faces_skipped": result.faces_skipped,
    }
    if label_png:
        payload["labels"] = _png_data_url(labels)
    return json.dumps(payload).encode()


class QueueFull(RuntimeError):
    """Every worker is busy and the waiting line is full."""


class InferenceQueue:
    """``workers`` threads and at most ``waiting`` calls queued for them.

    Used from the event loop thread only, so ``in_use`` needs no lock. A slot is released when the
    call has really finished in its thread, not when an awaiting request is cancelled.
    """

    def __init__(self, workers: int, waiting: int) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="agrnet-parse")
        self.capacity = workers + waiting
        self.in_use = 0

    @property
    def full(self) -> bool:
        return self.in_use >= self.capacity

    async def run(self, fn: Any, /, *args: Any) -> Any:
        if self.full:
            raise QueueFull
        loop = asyncio.get_running_loop()
        future = self._executor.submit(fn, *args)
        self.in_use += 1
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self.in_use -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _State:
    parser: Parser
    limits: Limits
    queue: InferenceQueue
    buffered: int = 0  # bytes of request bodies being read right now (event loop thread only)


def _refuse(status: int, message: str, **headers: str) -> HTTPException:
    return HTTPException(status, message, headers=headers or None)


def _busy(limits: Limits) -> HTTPException:
    # Connection: close because the upload may be left unread.
    headers = {"Retry-After": str(limits.retry_after_s), "Connection": "close"}
    return HTTPException(503, "server busy: all parsing slots are taken; retry shortly", headers=headers)


async def _read_body(request: Request, state: _State) -> bytes:
    """The request body, refused (413) as soon as it passes the upload limit and (408) when too slow."""
    limit = state.limits.max_upload_bytes
    too_large = _refuse(413, f"upload larger than the limit of {limit} bytes", Connection="close")
    declared = request.headers.get("content-length")  # h11 has checked that it is a number
    if declared is not None and int(declared) > limit:
        raise too_large  # without reading any of it
    chunks: list[bytes] = []

    async def collect() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            if state.buffered + len(chunk) > state.limits.max_buffered_bytes:
                raise _busy(state.limits)
            state.buffered += len(chunk)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), state.limits.body_timeout_s)
    except asyncio.TimeoutError:
        message = f"request body not received within {state.limits.body_timeout_s:g} s"
        raise _refuse(408, message, Connection="close") from None
    except ClientDisconnect:
        raise _refuse(400, "client disconnected during the upload", Connection="close") from None
    finally:
        state.buffered -= sum(len(chunk) for chunk in chunks)
    return b"".join(chunks)


def _flag(value: str | None) -> bool:
    if value is None or value.lower() in ("", "0", "false", "off", "no"):
        return False
    if value.lower() in ("1", "true", "on", "yes"):
        return True
    raise _refuse(400, f"detect_faces must be true or false, got {value!r}")


def _labels_option(value: str | None) -> bool:
    if value is None or value == "":
        return False
    if value.lower() == "png":
        return True
    raise _refuse(400, f"labels must be png (the label map as an index PNG), got {value!r}")


async def parse_endpoint(request: Request) -> Response:
    state: _State = request.app.state.serve
    if state.queue.full:
        raise _busy(state.limits)  # before reading the upload: shed load cheaply
    data = await _read_body(request, state)
    detect_faces = _flag(request.query_params.get("detect_faces"))
    label_png = _labels_option(request.query_params.get("labels"))
    if not data:
        raise _refuse(400, "empty upload; send the image file as the request body")
    try:
        # Header only, on the event loop: a pixel bomb is refused before it takes a parsing slot.
        check_size(*image_size(data, name="upload"), max_pixels=state.limits.max_pixels, label="upload")
        body = await state.queue.run(parse_image, state.parser, data, state.limits, detect_faces, label_png)
    except PixelBudgetError as error:
        raise _refuse(422, str(error)) from None
    except ImageError as error:
        raise _refuse(400, str(error)) from None
    except QueueFull:
        raise _busy(state.limits) from None
    except DetectFacesUnsupported as error:
        raise _refuse(501, str(error)) from None
    return Response(body, media_type="application/json")


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def healthz(request: Request) -> Response:
    queue = request.app.state.serve.queue
    return JSONResponse({"status": "ok", "busy": queue.in_use, "capacity": queue.capacity})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_schema(request.app.state.serve.limits))


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def _server_error(request: Request, error: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse({"error": f"internal error ({type(error).__name__}); see the server log"}, status_code=500)


def make_app(parser: Parser, limits: Limits | None = None) -> Starlette:
    limits = limits or Limits()
    routes = [
        Route("/", page, methods=["GET"]),
        Route("/index.html", page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/parse", parse_endpoint, methods=["POST"]),
    ]
    handlers = {HTTPException: _http_error, Exception: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
    app.state.serve = _State(parser, limits, InferenceQueue(limits.workers, limits.queue_size))
    return app


_ERROR = {"$ref": "#/components/schemas/Error"}


def _answer(description: str, schema: dict[str, object] = _ERROR) -> dict[str, object]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_schema(limits: Limits) -> dict[str, object]:
    """The JSON API as OpenAPI 3.1 (hand-written: four routes, kept next to the handlers)."""
    parse = {
        "summary": "Parse one face photo",
        "parameters": [
            {"name": "detect_faces", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}},
            {"name": "labels", "in": "query", "required": False, "schema": {"enum": ["png"]},
             "description": "also return the label map as an index PNG"},
        ],
        "requestBody": {
            "required": True,
            "description": "the image file's bytes (any format Pillow reads)",
            "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        "responses": _parse_answers(limits),
    }  # fmt: skip
    health = {"type": "object", "properties": {"status": {"const": "ok"}, "busy": {"type": "integer"},
                                               "capacity": {"type": "integer"}}}  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "agrnet face parsing", "version": __version__},
        "paths": {
            "/parse": {"post": parse},
            "/healthz": {"get": {"summary": "Liveness and queue use", "responses": {"200": _answer("ok", health)}}},
            "/": {"get": {"summary": "The demo page", "responses": {"200": {"description": "HTML page"}}}},
            "/openapi.json": {"get": {"summary": "This schema", "responses": {"200": {"description": "OpenAPI"}}}},
        },
        "components": {
            "schemas": {
                "Parsing": _parsing_schema(limits),
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            }
        },
    }


def _parse_answers(limits: Limits) -> dict[str, object]:
    """POST /parse's status codes, with the limits that trigger them."""
    return {
        "200": _answer("the parsing", {"$ref": "#/components/schemas/Parsing"}),
        "400": _answer("not a readable image, an empty upload or a bad parameter"),
        "408": _answer(f"the body did not arrive within {limits.body_timeout_s:g} s"),
        "413": _answer(f"upload over {limits.max_upload_bytes} bytes"),
        "422": _answer(f"image over the pixel budget of {limits.max_pixels} pixels (checked from its header)"),
        "501": _answer("detect_faces asked of a parser without face detection"),
        "503": {
            **_answer("all parsing slots taken, or too many uploads at once"),
            "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        },
        "500": _answer("an unexpected failure; the server log has the details"),
    }


def _parsing_schema(limits: Limits) -> dict[str, object]:
    """POST /parse's 200 body."""
    legend_entry = {
        "type": "object",
        "required": ["name", "color", "fraction"],
        "properties": {
            "name": {"type": "string"},
            "color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
            "fraction": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }
    face = {
        "type": "object",
        "required": ["box", "landmarks", "score"],
        "properties": {
            "box": {"type": "array", "items": {"type": "number"}, "description": "x0, y0, x1, y1"},
            "landmarks": {"type": "array", "description": "5 x [x, y]: eyes, nose, mouth corners"},
            "score": {"type": "number"},
        },
    }
    parsing = {
        "type": "object",
        "required": ["overlay", "legend", "size", "faces", "faces_skipped"],
        "properties": {
            "overlay": {"type": "string", "description": "PNG data URL of the photo with the parsing blended in"},
            "legend": {"type": "array", "items": legend_entry, "description": "classes present, in class order"},
            "size": {
                "type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                "description": f"[H, W] parsed; photos are shrunk to a longer side of {limits.working_side}",
            },
            "faces": {
                "type": ["array", "null"], "items": face,
                "description": "faces parsed with detect_faces (empty: none found), in parsed-size pixels; "
                "null without detect_faces",
            },
            "faces_skipped": {"type": "integer", "minimum": 0,
                              "description": "faces found beyond the parser's cap (the smallest), not parsed"},
            "labels": {"type": "string", "description": "with labels=png: PNG data URL of the label map, "
                       "one class index per pixel (size as 'size')"},
        },
    }  # fmt: skip
    return parsing


class _LingeringTransport:
    """A transport whose ``close()`` first lets the client finish sending.

    Closing a socket with unread input makes the kernel answer with a reset, which can destroy a
    response the client has not read yet: a client still uploading would see "connection reset"
    instead of the 413. So: send FIN after the response, discard (never buffer) what arrives for
    at most ``LINGER_S`` seconds, then close.
    """

    LINGER_S = 2.0

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self.lingering = False
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()  # after the buffered response has been written
        self._transport.resume_reading()
        self._timer = self._loop.call_later(self.LINGER_S, self._transport.close)

    def cancel_linger(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head and JSON answers to malformed ones.

    uvicorn arms no timer until a first response has been sent, and a partial request cancels its
    keep-alive timer, so without this a client sending its headers byte by byte holds the
    connection forever. The deadline runs from the connection's start, then from the first byte of
    each further request: an idle kept-alive connection is left to uvicorn's keep-alive timer, which
    closes it silently. (A 408 written to an idle connection races with a client reusing it, which
    then reads the 408 as the answer to its next request.) ``make_server`` sets ``header_timeout_s``
    on a subclass.
    """

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lingering = _LingeringTransport(transport, self.loop)
        super().connection_made(self._lingering)  # type: ignore[arg-type]
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def data_received(self, data: bytes) -> None:
        if self._lingering.lingering:
            return  # the answer has been sent; what the client still sends is dropped
        if data and self._header_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()  # the first bytes of a further request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a whole request head has arrived
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        early = self.conn.trailing_data[0]  # part of the next request, pipelined before this answer ended
        if early and not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        self._lingering.cancel_linger()
        super().connection_lost(exc)

    def _header_timed_out(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        body = b'{"error": "request headers not received in time"}'
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer is text/plain
        body = json.dumps({"error": "malformed HTTP request; send a valid HTTP/1.1 request"}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


class WebServer:
    """uvicorn serving ``app`` on a socket bound at construction (port 0 picks a free port).

    The surface of the standard library's servers: ``server_address``, ``serve_forever()`` (blocks),
    ``shutdown()`` (from another thread) and ``server_close()``.
    """

    def __init__(self, app: Starlette, host: str, port: int, limits: Limits) -> None:
        self._socket = socket.create_server((host, port))
        protocol = type("Protocol", (GuardedH11Protocol,), {"header_timeout_s": limits.header_timeout_s})
        config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="off",
            log_config=None,  # leave the application's logging alone
            timeout_keep_alive=limits.keep_alive_s,
            timeout_graceful_shutdown=2,
            h11_max_incomplete_event_size=16 * 1024,  # request heads over 16 KiB get 400
        )
        self._server = uvicorn.Server(config)
        self._queue: InferenceQueue = app.state.serve.queue
        self._stopped = threading.Event()

    @property
    def server_address(self) -> tuple[str, int]:
        return self._socket.getsockname()[:2]

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self._socket.close()
        self._queue.close()


def make_server(
    parser: Parser, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None
) -> WebServer:
    """A ready server (not yet serving); port 0 picks a free port (see ``server.server_address``)."""
    limits = limits or Limits()
    return WebServer(make_app(parser, limits), host, port, limits)
