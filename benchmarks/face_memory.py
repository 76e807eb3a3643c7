"""Question: what do many faces, or a huge photo, cost one request in memory and time?

Each case runs in a fresh process (peak resident memory from ``getrusage``, so one case's peak does not
hide another's) through the shipped face parser:
- ``faces_256``: a 1024 x 1024 PNG tiled with 256 copies of the astronaut's face (64 px tiles), as one
  ``POST /parse?detect_faces=true`` body through ``agrnet.serve.parse_image`` (the server's working size);
- ``photo_40mp`` and ``photo_40mp_detect``: the astronaut photo resized to 7296 x 5472 (39.9 MP), parsed
  whole without and with ``detect_faces=True``, labels only.
Writes benchmarks/results/face_memory.json and .md.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time

from common import RESULTS, write_result

CASES = ("faces_256", "photo_40mp", "photo_40mp_detect")


def _tiled_faces() -> bytes:
    import numpy as np
    from PIL import Image
    from skimage import data

    face = np.asarray(Image.fromarray(data.astronaut()[20:260, 100:340]).resize((64, 64), Image.BILINEAR))
    tiled = np.tile(face, (16, 16, 1))
    buffer = io.BytesIO()
    Image.fromarray(tiled).save(buffer, format="PNG")
    return buffer.getvalue()


def run_case(case: str) -> dict[str, object]:
    """One case in this process: its seconds, faces and peak resident memory."""
    import cv2
    import torch
    from skimage import data

    from agrnet.inference import Parser
    from agrnet.serve import Limits, parse_image

    torch.set_num_threads(2)
    parser = Parser.from_pretrained(device="cpu")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if case == "faces_256":
        body = _tiled_faces()
        start = time.perf_counter()
        answer = json.loads(parse_image(parser, body, Limits(), detect_faces=True))
        seconds = time.perf_counter() - start
        faces = {"parsed": len(answer["faces"]), "skipped": answer["faces_skipped"]}
    else:
        photo = cv2.resize(data.astronaut(), (7296, 5472), interpolation=cv2.INTER_LINEAR)
        start = time.perf_counter()
        result = parser.predict(photo, detect_faces=case.endswith("detect"))
        seconds, faces = time.perf_counter() - start, {"parsed": len(result.faces or [])}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": round(seconds, 2), "faces": faces, "peak_gib": round(peak, 3),
            "model_loaded_gib": round(baseline, 3)}  # fmt: skip


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--case", choices=CASES, help="run one case in this process (used by the driver)")
    opts = args.parse_args()
    if opts.case:
        print(json.dumps(run_case(opts.case)))
        return
    results = {}
    for case in CASES:
        done = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True, check=True)
        results[case] = json.loads(done.stdout.strip().splitlines()[-1])
        print(case, results[case], flush=True)
    write_result("face_memory", {"cases": results})
    rows = ["| case | seconds | faces | peak GiB (process) | after model load GiB |", "|---|---|---|---|---|"]
    rows += [f"| {c} | {r['seconds']} | {r['faces']} | {r['peak_gib']} | {r['model_loaded_gib']} |"
             for c, r in results.items()]  # fmt: skip
    (RESULTS / "face_memory.md").write_text("# Memory and time per request\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
