"""Question: how fast do the shipped parsers run on a GPU, one photo at a time and in batches?

On one CUDA device, for the shipped face parser and the shipped human parser:
- ``Parser.predict`` on one photo (decode-free: the array is in memory), end to end: letterbox on the
  CPU, the network in bf16 autocast (``Parser``'s CUDA default), labels back at the photo's size;
- the face parser through ``detect_faces=True`` on a 1-megapixel photo (MTCNN on the same device);
- ``predict_batch`` over 256 faces, ``batch_size`` 32 (images per second, CPU pre/post-processing included);
- the network alone on its canvas (folded, channels_last, as ``Parser`` runs it) in bf16 and fp32 at
  batch 1, 32 and 128 (images per second), so the gap to the end-to-end figures shows what the CPU side costs.
Writes benchmarks/results/gpu_parse_cuda.json (``--quick``: CPU-sized, to check the script).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from agrnet.data.transforms import canvas_hw
from agrnet.inference import Parser
from agrnet.pretrained import HUMAN_PARSER
from common import median_time, result_name, table, write_result
from parse_speed import one_megapixel_photo, sample_images


def network(parser: Parser, batch: int, amp: bool) -> Callable[[], object]:
    """The network alone on a random batch of its canvas, as ``Parser`` runs it."""
    assert parser.model is not None
    height, width = canvas_hw(parser.size)
    canvas = torch.randn(batch, 3, height, width, device=parser.device).contiguous(memory_format=torch.channels_last)

    def run() -> object:
        with torch.inference_mode(), torch.autocast(parser.device.type, torch.bfloat16, enabled=amp):
            return parser.model(canvas)

    return run


def row(name: str, what: str, batch: int, fn: Callable[[], object], device: torch.device, repeats: int) -> dict:
    seconds = median_time(fn, device, warmup=min(3, repeats), repeats=repeats)
    return {"case": name, "input": what, "batch": batch, "ms": round(1000 * seconds, 2),
            "images_per_s": round(batch / seconds, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small batches, few repeats (checks the script)")
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats, mid, big = (1, 2, 2) if args.quick else (30, 32, 128)
    face_parser = Parser.from_pretrained(device=args.device)
    human = Parser.from_pretrained(HUMAN_PARSER, device=args.device)
    (face, person), photo = sample_images(), one_megapixel_photo()
    faces = [face] * (4 if args.quick else 256)
    cases = [
        ("face parser, predict", "512x512 face", 1, lambda: face_parser.predict(face)),
        ("face parser, detect_faces", "1155x866 photo", 1, lambda: face_parser.predict(photo, detect_faces=True)),
        (f"face parser, predict_batch (batch_size {mid})", "512x512 faces", len(faces),
         lambda: face_parser.predict_batch(faces, batch_size=mid)),
        ("human parser, predict", "550x830 photo", 1, lambda: human.predict(person)),
    ]  # fmt: skip
    for name, model in (("face", face_parser), ("human", human)):
        for batch in sorted({1, mid, big}):
            for amp in (True, False):
                label = f"{name} network only, {'bf16' if amp else 'fp32'}"
                height, width = canvas_hw(model.size)
                cases.append((label, f"{height}x{width} canvas", batch, network(model, batch, amp)))
    rows = []
    for name, what, batch, fn in cases:
        # A 256-face batch takes seconds end to end: fewer repeats keep the run within a lease's minutes.
        rows.append(row(name, what, batch, fn, device, repeats if batch <= big else max(1, repeats // 6)))
        print(table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
    print(table(rows, list(rows[0])))
    print(f"wrote {write_result(result_name('gpu_parse', args.quick, device), {'rows': rows})}")


if __name__ == "__main__":
    main()
