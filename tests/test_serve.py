"""End-to-end test of ``agrnet serve`` in headless Chromium (skipped where Chromium is absent;
``.ci/run`` installs it)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_train_config
from PIL import Image

from agrnet.data.synth import generate
from agrnet.inference import FaceParser
from agrnet.serve import make_server
from agrnet.train import train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("serve")
    generate(root / "data", 12, 48, progress=False)
    config = tiny_train_config(root / "data", root / "run", "iterations=2", "val_every=2")
    httpd = make_server(FaceParser.from_checkpoint(train(config, progress=False), device="cpu"), port=0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_upload_in_browser_shows_overlay_and_legend(server: tuple[str, Path]) -> None:
    url, root = server
    photo = Path(root) / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8)).save(photo)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = browser.new_page()
            page.goto(url)
            assert page.title() == "agrnet face parsing"
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#status:has-text('done')", timeout=60_000)
            assert page.inner_text("#status") == "done: 50x70"
            overlay_src = page.get_attribute("#overlay", "src")
            assert overlay_src is not None and overlay_src.startswith("data:image/png;base64,")
            width = page.evaluate("document.getElementById('overlay').naturalWidth")
            assert width == 50
            legend = page.locator("#legend li.class").all_inner_texts()
            assert legend and all("%" in item for item in legend)
            # The "detect faces" box is sent as ?detect_faces=true; the parser may or may not support it (501).
            page.check("#detect")
            with page.expect_request("**/parse?detect_faces=true") as sent:
                again = {"name": "again.png", "mimeType": "image/png", "buffer": photo.read_bytes()}
                page.set_input_files("#file", again)
            assert sent.value.method == "POST"
            page.wait_for_selector("#status:has-text('done'), #error:has-text('cannot detect faces')", timeout=60_000)
            page.uncheck("#detect")
            page.set_input_files("#file", {"name": "bad.png", "mimeType": "image/png", "buffer": b"nope"})
            page.wait_for_selector("#error:has-text('cannot read image (unknown format)')", timeout=30_000)
        finally:
            browser.close()
