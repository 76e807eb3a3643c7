"""Measures FACE_TEMPLATE (agrnet.detection.align): median MTCNN landmarks over aligned 512x512 training crops.

Also times MTCNN.detect on a 1-megapixel photo (skimage's astronaut upscaled to 1155x866): wall-clock and the
process's CPU time with one torch thread, which is the honest number on a machine shared with other jobs.
Writes benchmarks/results/face_template.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch

from agrnet.data.datasets import load_image
from agrnet.detection.mtcnn import MTCNN
from common import write_result

DEFAULT_IMAGES = Path("/work/shared/data/celebamask-mini/train/images")
LANDMARKS = ["eye_left", "eye_right", "nose", "mouth_left", "mouth_right"]


def measure_template(detector: MTCNN, images: list[Path]) -> dict[str, object]:
    points, sizes = [], set()
    for path in images:
        image = load_image(path)
        sizes.add(image.shape[:2])
        faces = detector.detect(image)
        if faces:
            points.append(faces[0].landmarks)  # the most confident face: the crop is centred on it
    stacked = np.stack(points)  # (N, 5, 2)
    return {
        "images": len(images),
        "image_sizes": sorted(f"{h}x{w}" for h, w in sizes),
        "detected": len(points),
        "median": per_landmark(np.median(stacked, axis=0)),
        "std": per_landmark(stacked.std(0)),
        "p05": per_landmark(np.percentile(stacked, 5, axis=0)),
        "p95": per_landmark(np.percentile(stacked, 95, axis=0)),
    }


def per_landmark(values: np.ndarray) -> dict[str, list[float]]:
    """(5, 2) -> {landmark name: [x, y]} rounded for the JSON file."""
    return {name: [round(float(v), 2) for v in values[i]] for i, name in enumerate(LANDMARKS)}


def time_detection(repeats: int) -> dict[str, object]:
    photo = cv2.resize(skimage.data.astronaut(), (1155, 866), interpolation=cv2.INTER_CUBIC)
    detector = MTCNN()
    detector.detect(photo)  # warm-up: first calls allocate
    wall, cpu = [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        faces = detector.detect(photo)
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return {
        "photo": "skimage astronaut upscaled to 1155x866 (1.0 MP)",
        "faces": len(faces),
        "torch_threads": torch.get_num_threads(),
        "wall_ms_median": round(1000 * statistics.median(wall), 1),
        "cpu_ms_median": round(1000 * statistics.median(cpu), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted(args.images.glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    step = max(1, len(paths) // args.num)
    template = measure_template(MTCNN(), paths[::step][: args.num])
    timing = time_detection(args.repeats)
    print(template, timing, sep="\n")
    write_result("face_template", {"template": template, "detect_1mp": timing, "source": str(args.images)})


if __name__ == "__main__":
    main()
