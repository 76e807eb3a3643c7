"""``agrnet serve`` under hostile and heavy clients: a real uvicorn server on 127.0.0.1, a fixed
number of requests, each with a time limit.

Covers slow-loris heads and bodies (cut off by the deadlines), malformed requests (a JSON 4xx,
never a dropped connection), uploads over the limit (413 while streaming), a pixel bomb (422 from
the header), a full queue (503 with Retry-After), the detect_faces option, the OpenAPI schema,
and small requests answered while a 4000x4000 upload is parsed, with the server's memory bounded.
"""

from __future__ import annotations

import http.client
import io
import select
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import tiny_train_config
from PIL import Image

from agrnet.data.classes import LABEL_SPECS
from agrnet.data.synth import generate
from agrnet.inference import FaceParser, Parsing
from agrnet.serve import Limits, WebServer, make_server
from agrnet.train import train

LIMITS = Limits(max_upload_bytes=8 * 2**20, header_timeout_s=1.0, body_timeout_s=1.5, keep_alive_s=2)


@pytest.fixture(scope="module")
def parser(tmp_path_factory: pytest.TempPathFactory) -> FaceParser:
    root = tmp_path_factory.mktemp("serve_load")
    generate(root / "data", 12, 48, progress=False)
    config = tiny_train_config(root / "data", root / "run", "iterations=2", "val_every=2")
    return FaceParser.from_checkpoint(train(config, progress=False), device="cpu")


def _serve(parser: Any, limits: Limits) -> Iterator[tuple[str, int]]:
    server: WebServer = make_server(parser, "127.0.0.1", 0, limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def address(parser: FaceParser) -> Iterator[tuple[str, int]]:
    yield from _serve(parser, LIMITS)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


SMALL = _png(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8))


def _raw_exchange(address: tuple[str, int], chunks: list[bytes], pause_s: float = 0.0, wait_s: float = 5.0) -> bytes:
    """Send ``chunks`` (``pause_s`` apart) on a fresh socket until the server answers; then read until it closes."""
    answer = b""
    with socket.create_connection(address, timeout=wait_s) as sock:
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered (or hung up) before we finished
                sock.sendall(chunk)
                time.sleep(pause_s)
            while data := sock.recv(65536):
                answer += data
        except (BrokenPipeError, ConnectionResetError):
            pass  # a hang-up: the answer read so far is what counts
    return answer


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])


def test_an_idle_kept_alive_connection_is_closed_silently_not_with_a_408(address: tuple[str, int]) -> None:
    # A 408 written to an idle connection would be read as the answer to the client's next request on it.
    connection = http.client.HTTPConnection(*address, timeout=5)
    try:
        for pause_s in (0.0, LIMITS.header_timeout_s + 0.3):  # past the head deadline, within keep-alive
            time.sleep(pause_s)
            connection.request("GET", "/healthz")
            answer = connection.getresponse()
            assert answer.status == 200, answer.read()[:200]
            answer.read()
        assert connection.sock is not None
        time.sleep(LIMITS.keep_alive_s + 0.5)
        assert connection.sock.recv(4096) == b""  # closed after keep_alive_s, no unsolicited answer
    finally:
        connection.close()


def test_slow_loris_heads_and_bodies_are_cut_off(address: tuple[str, int]) -> None:
    head = b"POST /parse HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    results: dict[str, bytes] = {}

    def slow_head(key: str) -> None:  # one byte every 0.1 s, never finishing the head
        results[key] = _raw_exchange(address, [bytes([b]) for b in head], pause_s=0.1)

    def slow_body(key: str) -> None:  # a complete head, then the body trickles
        start = head + f"Content-Length: {len(SMALL)}\r\n\r\n".encode()
        results[key] = _raw_exchange(address, [start] + [SMALL[i : i + 10] for i in range(0, 400, 10)], pause_s=0.1)

    start = time.perf_counter()
    threads = [threading.Thread(target=slow_head, args=(f"head{i}",)) for i in range(8)]
    threads += [threading.Thread(target=slow_body, args=(f"body{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    healthy = httpx.get(f"http://{address[0]}:{address[1]}/healthz", timeout=5)  # others are still served
    assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
    for thread in threads:
        thread.join(10)
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0  # sending takes these clients 4-6 s; the deadlines cut them at 1 and 1.5 s
    for key, answer in results.items():
        assert _status(answer) == 408, key
        assert b'"error"' in answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"POST /parse HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n",  # a TLS hello
        b"GET /\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["garbage", "no-colon", "huge-header", "bad-length", "tls", "control-chars"],
)
def test_malformed_requests_get_a_json_4xx(address: tuple[str, int], request_bytes: bytes) -> None:
    answer = _raw_exchange(address, [request_bytes])
    assert 400 <= _status(answer) < 500
    assert b"application/json" in answer.split(b"\r\n\r\n")[0].lower()
    assert b"Traceback" not in answer


def test_uploads_over_the_limit_get_413_while_streaming(address: tuple[str, int]) -> None:
    limit = LIMITS.max_upload_bytes
    head = b"POST /parse HTTP/1.1\r\nHost: x\r\n"
    # Refused from Content-Length alone: no body sent, and no waiting for it (that would be a 408).
    assert _status(_raw_exchange(address, [head + f"Content-Length: {limit + 1}\r\n\r\n".encode()])) == 413
    # Chunked, no length: refused once the limit is passed, though the client has not finished.
    chunk = b"100000\r\n" + bytes(2**20) + b"\r\n"  # 1 MiB per chunk
    answer = _raw_exchange(address, [head + b"Transfer-Encoding: chunked\r\n\r\n"] + [chunk] * (limit // 2**20 + 1))
    assert _status(answer) == 413 and b"larger than the limit" in answer
    # An ordinary client that sends everything before reading still gets the 413, not a reset.
    declared = httpx.post(f"http://{address[0]}:{address[1]}/parse", content=bytes(limit + 1), timeout=10)
    assert declared.status_code == 413 and declared.json()["error"] == f"upload larger than the limit of {limit} bytes"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_bomb_is_refused_with_the_budget_message(address: tuple[str, int]) -> None:
    buffer = io.BytesIO()
    Image.new("L", (13000, 13000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 1_000_000
    start = time.perf_counter()
    answer = httpx.post(f"http://{address[0]}:{address[1]}/parse", content=buffer.getvalue(), timeout=10)
    assert time.perf_counter() - start < 2.0
    assert answer.status_code == 422
    assert "13000×13000 = 169000000 pixels exceeds the pixel budget" in answer.json()["error"]


def test_openapi_schema_matches_the_api(address: tuple[str, int]) -> None:
    base = f"http://{address[0]}:{address[1]}"
    schema = httpx.get(base + "/openapi.json", timeout=5).json()
    parse = schema["paths"]["/parse"]["post"]
    assert set(parse["responses"]) == {"200", "400", "408", "413", "422", "500", "501", "503"}
    assert parse["parameters"][0]["name"] == "detect_faces"
    answer = httpx.post(base + "/parse", content=SMALL, timeout=30).json()
    parsing = schema["components"]["schemas"]["Parsing"]
    assert set(answer) == set(parsing["required"]) == set(parsing["properties"]) - {"labels"}
    with_labels = httpx.post(base + "/parse?labels=png", content=SMALL, timeout=30).json()
    assert set(with_labels) == set(parsing["properties"])
    assert answer["size"] == [64, 48]
    entry = parsing["properties"]["legend"]["items"]
    assert all(set(item) == set(entry["required"]) for item in answer["legend"])
    assert httpx.get(base + "/nowhere", timeout=5).json() == {"error": "Not Found"}


class _GatedParser:
    """A stand-in parser whose ``predict`` waits for a gate: fills the queue deterministically."""

    spec = LABEL_SPECS["lapa"]

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[dict[str, object]] = []

    def predict(self, image: np.ndarray, **options: object) -> Parsing:
        self.calls.append(options)
        self.gate.wait(10)
        return Parsing(np.ones(image.shape[:2], dtype=np.uint8), None)


class _ParserWithoutDetection:
    spec = LABEL_SPECS["lapa"]

    def predict(self, image: np.ndarray) -> Parsing:
        return Parsing(np.zeros(image.shape[:2], dtype=np.uint8), None)


def test_detect_faces_on_a_parser_without_it_is_501() -> None:
    for host, port in _serve(_ParserWithoutDetection(), Limits()):
        url = f"http://{host}:{port}/parse"
        assert httpx.post(url, content=SMALL, timeout=10).status_code == 200
        refused = httpx.post(url + "?detect_faces=true", content=SMALL, timeout=10)
        assert refused.status_code == 501 and "cannot detect faces" in refused.json()["error"]
        assert httpx.post(url + "?detect_faces=maybe", content=SMALL, timeout=10).status_code == 400


def test_full_queue_answers_503_with_retry_after_and_detect_faces_is_passed_on() -> None:
    fake = _GatedParser()
    limits = Limits(workers=1, queue_size=2, retry_after_s=3)
    for host, port in _serve(fake, limits):
        url, health = f"http://{host}:{port}/parse", f"http://{host}:{port}/healthz"
        answers: list[httpx.Response] = []
        senders = [threading.Thread(target=_post_into, args=(answers, url)) for _ in range(3)]
        for sender in senders:
            sender.start()
        _wait_for(lambda url=health: httpx.get(url, timeout=5).json()["busy"] == 3)
        refused = httpx.post(url, content=SMALL, timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
        assert "busy" in refused.json()["error"]
        fake.gate.set()
        for sender in senders:
            sender.join(15)
        assert [answer.status_code for answer in answers] == [200, 200, 200]
        assert httpx.post(url + "?detect_faces=true", content=SMALL, timeout=5).status_code == 200
        assert fake.calls[-1] == {"detect_faces": True} and fake.calls[0] == {}


def _post_into(answers: list[httpx.Response], url: str) -> None:
    answers.append(httpx.post(url, content=SMALL, timeout=15))


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _big_photo() -> bytes:
    """4000 x 4000 PNG with smooth structure (a few MB, under the upload limit)."""
    ramp = np.arange(4000, dtype=np.uint16) * 255 // 3999
    red = (np.add.outer(ramp, ramp) // 2).astype(np.uint8)
    return _png(np.stack([red, red[::-1], red.T], axis=-1))


def _p95_latency(client: httpx.Client, count: int) -> float:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        assert client.post("/parse", content=SMALL).status_code == 200
        latencies.append(time.perf_counter() - start)
    return float(np.percentile(latencies, 95))


def _upload_repeatedly(client: httpx.Client, photo: bytes, stop: threading.Event, outcomes: list[str]) -> None:
    """Keep one large upload in flight until ``stop``; ``outcomes`` gets "ok" or what went wrong."""
    while not stop.is_set():
        try:
            answer = client.post("/parse", content=photo)
            good = answer.status_code == 200 and max(answer.json()["size"]) == LIMITS.working_side
            outcomes.append("ok" if good else f"{answer.status_code} {answer.text[:200]}")
        except httpx.HTTPError as error:
            outcomes.append(repr(error))
            return


def _memory_bytes(field: str) -> int:
    """VmHWM (peak resident set) or VmRSS of this process, which runs the server and its clients."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak_memory() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM restarts from VmRSS
    except OSError:
        pass  # then the peak covers the whole module, which is only stricter


def test_small_requests_stay_fast_while_a_large_upload_is_parsed(address: tuple[str, int]) -> None:
    big = _big_photo()
    assert len(big) < LIMITS.max_upload_bytes
    _reset_peak_memory()
    rss_start = _memory_bytes("VmRSS")
    base = f"http://{address[0]}:{address[1]}"
    ratios: list[float] = []
    alone: list[float] = []
    loaded: list[float] = []
    bigs_done: list[int] = []
    with httpx.Client(base_url=base, timeout=60) as small_client, httpx.Client(base_url=base, timeout=60) as big_client:
        _p95_latency(small_client, 3)  # warm up
        for _ in range(3):  # the median of three rounds: the machine is shared
            alone.append(_p95_latency(small_client, 15))
            stop, done = threading.Event(), []
            uploader = threading.Thread(target=_upload_repeatedly, args=(big_client, big, stop, done))
            uploader.start()
            time.sleep(0.2)  # let the first large upload reach a worker
            loaded.append(_p95_latency(small_client, 15))
            stop.set()
            uploader.join(120)
            assert not uploader.is_alive() and done and set(done) == {"ok"}, done
            bigs_done.append(len(done))
            ratios.append(loaded[-1] / alone[-1])
    ratio = statistics.median(ratios)
    peak = _memory_bytes("VmHWM")
    print(f"p95 small alone {[f'{s * 1000:.0f}' for s in alone]} ms, with a 4000x4000 upload in flight "
          f"{[f'{s * 1000:.0f}' for s in loaded]} ms, ratios {[f'{r:.2f}' for r in ratios]}, large parsed "
          f"{bigs_done}, RSS {rss_start / 2**20:.0f} MiB at start, peak {peak / 2**20:.0f} MiB")  # fmt: skip
    assert ratio <= 3.0
    # The server shares this process with its clients and with whatever earlier tests left (1.8 GB in a full
    # run), so its cost here is the growth over the load. A fresh `agrnet serve` with the shipped model starts at
    # 0.74 GB (measured), so growth under 1.2 GB keeps a real server under 2 GB throughout.
    assert peak - rss_start < 1.2 * 2**30
