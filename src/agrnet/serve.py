"""``agrnet serve``: a one-page web demo. Upload a photo, see the parsing overlay and a class legend.

Standard library HTTP server only: ``GET /`` serves the page, ``POST /parse`` takes the raw image
bytes and answers JSON {"overlay": data URL, "legend": [{name, color, fraction}], "size": [H, W]}.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image, UnidentifiedImageError

from agrnet.data.classes import overlay
from agrnet.inference import FaceParser

log = logging.getLogger(__name__)
MAX_UPLOAD_BYTES = 32 * 1024 * 1024

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
<p>Choose a face photo; it is parsed on the server and shown with a per-class legend.</p>
<input type="file" id="file" accept="image/*">
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
  const response = await fetch("/parse", {method: "POST", body: file});
  const body = await response.json();
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


def parse_upload(parser: FaceParser, data: bytes) -> dict[str, object]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"not a readable image ({error})") from None
    labels = parser.predict(rgb).labels
    blended = overlay(rgb, labels, parser.spec.palette)
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG")
    counts = np.bincount(labels.ravel(), minlength=parser.spec.num_classes)
    legend = [
        {"name": name, "color": "#" + bytes(parser.spec.palette[i]).hex(), "fraction": counts[i] / labels.size}
        for i, name in enumerate(parser.spec.class_names)
        if counts[i] > 0
    ]
    return {
        "overlay": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
        "legend": legend,
        "size": list(labels.shape),
    }


def make_server(parser: FaceParser, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A ready server (not yet serving); port 0 picks a free port (see ``server.server_address``)."""
    lock = threading.Lock()  # one model, many request threads

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, payload: dict[str, object]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:
            if self.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/parse":
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_UPLOAD_BYTES:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"upload 1 byte to {MAX_UPLOAD_BYTES} bytes"})
                return
            data = self.rfile.read(length)
            try:
                with lock:
                    payload = parse_upload(parser, data)
            except ValueError as error:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                return
            self._json(HTTPStatus.OK, payload)

        def log_message(self, format: str, *args: object) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)
