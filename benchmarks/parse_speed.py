"""Question: how long does parsing one photo take on the CPU (fp32, batch 1), end to end?

Side by side, in interleaved rounds of one run: the shipped model (``Parser.from_pretrained()``,
its training canvas) and the same weights at the other two of 256, 384 and 512 (``size=``), against the
ResNet-18 AGRNet default (C = 256, 512 canvas, untrained: speed only) and the shipped weights rebuilt at
the other MobileNetV2 output stride (8 or 16: what the stride costs; speed only), each parsing a 512x512 aligned face
to a label map at 512x512; the shipped model on a ~1-megapixel photo with one face through face detection,
alignment and paste-back, with its wide second view (the default ``face_zoom``), without
(``face_zoom=1``) and with a third, wider one (``face_zoom=(1.5, 2.5)``); and the shipped human parser on
a 550 x 830 street photo (a person standing), whole, at its own canvas and at 384 x 256 (``size=``). Two
rows repeat the aligned face and the person with the labels taken from the full bilinear interpolation of
every class (``unletterbox`` then argmax: the path before ``unletterbox_labels``), to show what the
border-only interpolation saves. Two rows time the face network alone on its canvas: as trained (BatchNorm
layers, NCHW) and as ``Parser`` runs it (BatchNorm folded into the convolutions, channels_last). Writes
benchmarks/results/parse_speed[_quick]_cpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch
from skimage import data

from agrnet.build import ModelConfig, build_agrnet
from agrnet.data.classes import CELEBAMASK_HQ
from agrnet.data.transforms import to_tensor, unletterbox, warp_pair
from agrnet.inference import Parser
from agrnet.pretrained import HUMAN_PARSER, load_pretrained
from common import result_name, table, write_result


def full_interpolation(parser: Parser, image: np.ndarray) -> np.ndarray:
    """The labels as ``predict`` gave them before the border-only fast path: every class interpolated."""
    canvas = to_tensor(warp_pair(image, None, parser.size)[0])[None]
    with torch.no_grad():
        logits = parser._logits(canvas, flip=False).float()
    return unletterbox(logits, *image.shape[:2])[0].argmax(0).to(torch.uint8).numpy()


def fast_path_agreement() -> dict[str, float]:
    """Fraction of pixels where ``predict`` and the full interpolation give the same label (1.0: exact)."""
    face, person = sample_images()
    pairs = {
        "face": (Parser.from_pretrained(device="cpu"), face),
        "person": (Parser.from_pretrained(HUMAN_PARSER, device="cpu"), person),
    }
    return {
        name: float((parser.predict(image).labels == full_interpolation(parser, image)).mean())
        for name, (parser, image) in pairs.items()
    }


def sample_images() -> tuple[np.ndarray, np.ndarray]:
    """A 512 x 512 face filling the frame and a person resized to a CCP photo's 550 x 830 (speed only)."""
    return cv2.resize(data.astronaut()[40:200, 150:310], (512, 512)), cv2.resize(data.astronaut(), (550, 830))


def one_megapixel_photo() -> np.ndarray:
    """The astronaut at 1155 x 866 (1.0 megapixel), one face: the photo of the ``detect_faces`` rows."""
    return cv2.resize(data.astronaut(), (1155, 866))


def network_only(model: torch.nn.Module, canvas: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(canvas)

    return run


def other_output_stride(shipped: Parser, model: torch.nn.Module, config: ModelConfig) -> Parser:
    """The shipped face model rebuilt at the other MobileNetV2 output stride (8 <-> 16), its weights loaded
    unchanged (dilation changes no shape): the cost of the stride, side by side; its labels mean nothing."""
    stride = 8 if config.output_stride == 16 else 16
    rebuilt = build_agrnet(dataclasses.replace(config, output_stride=stride, pretrained=None))
    rebuilt.load_state_dict(model.state_dict())
    return Parser(shipped.spec, shipped.size, model=rebuilt.eval())


def candidates() -> dict[str, tuple[Callable[[], object], str]]:
    shipped = Parser.from_pretrained(device="cpu")
    as_trained, shipped_config = load_pretrained()
    as_trained.eval()
    one_view = Parser.from_pretrained(device="cpu")
    one_view.face_zoom = 1.0
    three_views = Parser.from_pretrained(device="cpu")
    three_views.face_zoom = (1.5, 2.5)
    # The same weights on the two other usual canvases: whichever of 256, 384 and 512 it was not trained at.
    other_sizes = {s: Parser.from_pretrained(device="cpu", size=s) for s in (256, 384, 512) if s != shipped.size[0]}
    other_stride = other_output_stride(shipped, as_trained, shipped_config.model)
    human = Parser.from_pretrained(HUMAN_PARSER, device="cpu")
    human_small = Parser.from_pretrained(HUMAN_PARSER, device="cpu", size=(384, 256))
    resnet = build_agrnet(ModelConfig(num_classes=19, backbone="resnet18")).eval()
    resnet18 = Parser(CELEBAMASK_HQ, 512, model=resnet)
    face, person = sample_images()
    photo = one_megapixel_photo()
    canvas = to_tensor(warp_pair(face, None, shipped.size)[0])[None]
    side = f"{shipped.size[0]}x{shipped.size[1]} canvas"
    return {
        f"shipped (MobileNetV2, its {shipped.size[0]} canvas)": (lambda: shipped.predict(face), "512x512 face"),
        "shipped, full interpolation": (lambda: full_interpolation(shipped, face), "512x512 face"),
        **{f"shipped, size={s}": ((lambda p=p: p.predict(face)), "512x512 face") for s, p in other_sizes.items()},
        f"shipped weights at output stride {other_stride.model.backbone.feature_info[-1].stride} (speed only)": (
            lambda: other_stride.predict(face),
            "512x512 face",
        ),
        "ResNet-18 AGRNet default, 512 canvas": (lambda: resnet18.predict(face), "512x512 face"),
        "shipped + detect_faces": (lambda: shipped.predict(photo, detect_faces=True), "1155x866 photo"),
        "shipped + detect_faces, face_zoom 1": (lambda: one_view.predict(photo, detect_faces=True), "1155x866 photo"),
        "shipped + detect_faces, face_zoom (1.5, 2.5)": (
            lambda: three_views.predict(photo, detect_faces=True),
            "1155x866 photo",
        ),
        "network only, as trained (BatchNorm, NCHW)": (network_only(as_trained, canvas), side),
        "network only, as Parser runs it (folded, channels_last)": (
            network_only(shipped.model, canvas.contiguous(memory_format=torch.channels_last)),
            side,
        ),
        f"human parser ({human.size[0]}x{human.size[1]} canvas)": (lambda: human.predict(person), "550x830 photo"),
        "human parser, size=(384, 256)": (lambda: human_small.predict(person), "550x830 photo"),
        "human parser, full interpolation": (lambda: full_interpolation(human, person), "550x830 photo"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = candidates()
    for run, _ in runs.values():  # warm-up: first-call allocations and detector construction
        run()
    rounds = 3 if args.quick else 15
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):  # interleaved so that machine noise hits every candidate alike
        for name, (run, _) in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(next(iter(times.values())))  # the shipped model at its own canvas
    rows = [
        {
            "candidate": name,
            "input": runs[name][1],
            "median_ms": round(1000 * statistics.median(t), 1),
            "min_ms": round(1000 * min(t), 1),
            "vs_shipped": round(statistics.median(t) / base, 2),
        }
        for name, t in times.items()
    ]
    print(table(rows, list(rows[0])))
    agreement = fast_path_agreement()
    print(f"labels equal to the full interpolation's: {agreement}")
    result = {"rounds": rounds, "rows": rows, "fast_path_agreement": agreement}
    path = write_result(result_name("parse_speed", args.quick, torch.device("cpu")), result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
