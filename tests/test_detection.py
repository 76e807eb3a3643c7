"""MTCNN detection, similarity alignment and paste-back (agrnet.detection)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from agrnet.detection import FACE_TEMPLATE, MTCNN, Face, align_face, alignment_matrix, parse_photo_faces, paste_back
from agrnet.detection.align import (
    MAX_VIEWS,
    PhotoCanvas,
    _sure_labels,
    content_window,
    crop_coordinates,
    inside_crop,
)
from agrnet.detection.mtcnn import WEIGHTS_DIR

VAL_IMAGES = Path("/work/shared/data/celebamask-mini/val/images")


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()  # public domain, 512x512 RGB, one face


def assert_plausible(face: Face) -> None:
    """Eyes above the nose above the mouth, left before right, all inside the box."""
    assert face.box.shape == (4,) and face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    (eye_l, eye_r, nose, mouth_l, mouth_r), (x0, y0, x1, y1) = face.landmarks, face.box
    assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    assert (face.landmarks[:, 0] > x0).all() and (face.landmarks[:, 0] < x1).all()
    assert (face.landmarks[:, 1] > y0).all() and (face.landmarks[:, 1] < y1).all()
    assert face.score > 0.9


def test_astronaut_has_exactly_one_face_with_plausible_landmarks(detector: MTCNN, astronaut: np.ndarray) -> None:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    assert_plausible(faces[0])
    x0, y0, x1, y1 = faces[0].box
    assert 150 < x0 < x1 < 300 and 30 < y0 < y1 < 200  # her face, not the flag or the helmet


def test_real_aligned_face_lands_on_the_template(detector: MTCNN) -> None:
    if not VAL_IMAGES.is_dir():
        pytest.skip(f"{VAL_IMAGES} is absent (celebamask-mini is not shipped with the repository)")
    image = np.asarray(Image.open(sorted(VAL_IMAGES.glob("*.jpg"))[0]).convert("RGB"))
    faces = detector.detect(image)
    assert faces
    assert_plausible(faces[0])
    size = image.shape[1]
    assert np.abs(faces[0].landmarks - FACE_TEMPLATE * size / 512).max() < 0.1 * size


def test_odd_sizes_and_grayscale_inputs(detector: MTCNN, astronaut: np.ndarray) -> None:
    reference = detector.detect(astronaut)[0].landmarks
    crop = np.ascontiguousarray(astronaut[13:400, 7:391])  # 387 x 384
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    for image in (crop, gray, np.repeat(gray[..., None], 3, axis=2)):
        faces = detector.detect(image)
        assert len(faces) == 1
        assert_plausible(faces[0])
        assert np.abs(faces[0].landmarks + [7, 13] - reference).max() < 6
    aligned, matrix = align_face(crop, faces[0].landmarks, 173)
    assert aligned.shape == (173, 173, 3) and aligned.dtype == np.uint8 and matrix.shape == (2, 3)


def test_photos_without_faces_give_no_faces(detector: MTCNN) -> None:
    gray = np.full((241, 319, 3), 128, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    tiny = np.zeros((5, 7, 3), dtype=np.uint8)  # smaller than P-Net's 12 px window
    for image in (gray, noise, tiny):
        assert detector.detect(image) == []


def test_corrupted_weight_file_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, weights)
    data = bytearray((weights / "rnet.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (weights / "rnet.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"rnet\.pt: sha256 [0-9a-f]{64} != expected .* corrupted"):
        MTCNN(weights_dir=weights)


def similar_landmarks(scale: float, degrees: float, centre: tuple[float, float], size: int) -> np.ndarray:
    """FACE_TEMPLATE for a size crop, scaled, rotated and moved: landmarks of a tilted face in a photo."""
    template = FACE_TEMPLATE * size / 512
    rotation = cv2.getRotationMatrix2D((size / 2, size / 2), degrees, scale)
    rotation[:, 2] += np.asarray(centre) - size / 2
    return cv2.transform(template[None], rotation)[0]


def test_alignment_matrix_undoes_a_similarity() -> None:
    landmarks = similar_landmarks(0.7, 25.0, (300.0, 200.0), 256)
    mapped = cv2.transform(landmarks[None], alignment_matrix(landmarks, 256))[0]
    np.testing.assert_allclose(mapped, FACE_TEMPLATE * 256 / 512, atol=1e-3)


def test_label_map_survives_warp_and_paste_back() -> None:
    height, width, size, num_classes = 301, 397, 256, 4
    ys, xs = np.mgrid[:height, :width]
    radius = np.hypot(xs - 210, ys - 140)
    labels = np.digitize(radius, [35, 70, 105]).astype(np.uint8)  # rings: classes 0..3 around the face centre
    matrix = alignment_matrix(similar_landmarks(0.8, 20.0, (210.0, 140.0), size), size)
    crop = cv2.warpAffine(labels, matrix, (size, size), flags=cv2.INTER_NEAREST)
    one_hot = (crop[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)

    pasted, probabilities = paste_back([one_hot], [matrix], height, width)

    crop_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    crop_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    footprint = (crop_x >= 0) & (crop_x <= size - 1) & (crop_y >= 0) & (crop_y <= size - 1)
    assert footprint.mean() > 0.3
    assert (pasted[footprint] == labels[footprint]).mean() >= 0.99
    assert (pasted[~footprint] == 0).all() and (probabilities[0][~footprint] == 1).all()
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)


def constant_probabilities(num_classes: int, size: int, winner: int, confidence: float) -> np.ndarray:
    probabilities = np.zeros((num_classes, size, size), dtype=np.float32)
    probabilities[0] = 1 - confidence
    probabilities[winner] = confidence
    return probabilities


def test_overlapping_faces_go_to_the_nearer_face() -> None:
    size = 64
    left = np.array([[1, 0, -10], [0, 1, -10]], dtype=np.float64)  # crop covers photo pixels 10..73
    right = np.array([[1, 0, -40], [0, 1, -40]], dtype=np.float64)  # 40..103: overlap 40..73
    unsure = constant_probabilities(3, size, winner=1, confidence=0.6)
    sure = constant_probabilities(3, size, winner=2, confidence=0.9)
    for crops, matrices in (([unsure, sure], [left, right]), ([sure, unsure], [right, left])):
        labels, probabilities = paste_back(crops, matrices, 120, 131)
        assert labels[20, 20] == 1 and labels[60, 60] == 2 and labels[90, 90] == 2
        assert labels[45, 45] == 1  # nearer the left crop's centre (41.5, 41.5) than the right's (71.5, 71.5)
        assert labels[5, 5] == 0 and labels[110, 125] == 0
        np.testing.assert_allclose(probabilities[:, 60, 60], [0.1, 0.0, 0.9])
        np.testing.assert_allclose(probabilities[:, 5, 5], [1.0, 0.0, 0.0])
    # Confidence does not let a face's crop take over near another face's centre.
    confident, doubtful = constant_probabilities(3, size, 1, 0.99), constant_probabilities(3, size, 2, 0.6)
    labels, _ = paste_back([confident, doubtful], [left, right], 120, 131)
    assert labels[60, 60] == 2 and labels[45, 45] == 1


def test_a_neighbours_background_never_erases_a_face() -> None:
    """Four tightly framed faces side by side: each crop is sure of its background around its own face, and
    every pixel that a face's own crop labels as a face part stays that part."""
    size, step = 64, 40
    ys, xs = np.mgrid[:size, :size]
    disc = np.hypot(xs - 31.5, ys - 31.5) < 24
    crops, matrices = [], []
    for face in range(4):
        probabilities = np.zeros((3, size, size), np.float32)
        probabilities[0], probabilities[1 + face % 2] = np.where(disc, 0.2, 0.99), np.where(disc, 0.8, 0.01)
        crops.append(probabilities)
        matrices.append(np.array([[1, 0, -step * face], [0, 1, 0]], dtype=np.float64))
    labels, _ = paste_back(crops, matrices, size, step * 3 + size)
    for face in range(4):
        own = np.zeros_like(labels, dtype=bool)
        own[:, step * face : step * face + size] = disc
        assert (labels[own] > 0).all(), f"face {face}: {(labels[own] == 0).mean():.1%} of its parts erased"


def test_a_wide_view_adds_context_without_overriding_the_primary_crop() -> None:
    size = 64
    primary = np.array([[1, 0, -40], [0, 1, -40]], dtype=np.float64)  # photo 40..103
    wide = np.array([[0.5, 0, -8], [0, 0.5, -8]], dtype=np.float64)  # photo 16..143 at half the scale
    canvas = PhotoCanvas(160, 160, 3, probabilities=False)
    canvas.paste(constant_probabilities(3, size, 1, 0.7), primary)
    canvas.paste(constant_probabilities(3, size, 2, 0.99), wide, view=1)
    assert canvas.probabilities is None
    assert (canvas.labels[40:104, 40:104] == 1).all()
    assert canvas.labels[20, 20] == 2 and canvas.labels[140, 140] == 2 and canvas.labels[5, 5] == 0


def test_a_third_view_adds_only_beyond_the_second() -> None:
    """Three nested views of one face: each wider view's foreground fills only what the narrower ones called
    background or did not reach; where two wide views both see foreground, the narrower decides."""
    size = 64
    narrow = np.array([[1, 0, -60], [0, 1, -60]], dtype=np.float64)  # photo 60..123
    middle = np.array([[0.5, 0, -28], [0, 0.5, -28]], dtype=np.float64)  # photo 56..183
    widest = np.array([[0.25, 0, -12], [0, 0.25, -12]], dtype=np.float64)  # photo 48..303
    canvas = PhotoCanvas(320, 320, 4, probabilities=False)
    canvas.paste(constant_probabilities(4, size, 1, 0.7), narrow, view=0)
    canvas.paste(constant_probabilities(4, size, 2, 0.9), middle, view=1)
    canvas.paste(constant_probabilities(4, size, 3, 0.99), widest, view=2)
    assert (canvas.labels[60:124, 60:124] == 1).all()
    assert canvas.labels[150, 150] == 2 and canvas.labels[58, 58] == 2
    assert canvas.labels[250, 250] == 3 and canvas.labels[50, 50] == 3 and canvas.labels[310, 310] == 0
    with pytest.raises(ValueError, match="view must be"):
        canvas.paste(constant_probabilities(4, size, 1, 0.7), narrow, view=MAX_VIEWS)


def smooth_probabilities(rng: np.random.Generator, num_classes: int, size: int, sharpness: float) -> np.ndarray:
    """(Nc, S, S) softmax of upsampled noise: regions, boundaries and unsure zones like a parsed face's."""
    logits = rng.normal(size=(num_classes, 9, 9)).astype(np.float32) * sharpness
    logits = np.stack([cv2.resize(plane, (size, size), interpolation=cv2.INTER_CUBIC) for plane in logits])
    exp = np.exp(logits - logits.max(0))
    return (exp / exp.sum(0)).astype(np.float32)


def test_labels_only_paste_matches_the_full_warp_exactly() -> None:
    """The fast path (interpolate only where the 3 x 3 window is unsure) gives the argmax of the fully warped
    probabilities at every pixel: rotated, scaled, shifted partly off the photo, 19 and 3 classes, in strips."""
    rng = np.random.default_rng(0)
    checked, sure = 0, []
    for trial in range(12):
        num_classes, size = (19, 96) if trial % 2 else (3, 80)
        probabilities = smooth_probabilities(rng, num_classes, size, sharpness=[1.0, 5.0, 40.0][trial % 3])
        angle, scale = rng.uniform(-40, 40), rng.uniform(0.4, 2.5)
        centre = rng.uniform(-20, 150, size=2)
        matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, scale)
        matrix[:, 2] += (size - 1) / 2 - centre
        full = PhotoCanvas(131, 157, num_classes, probabilities=True)
        fast = PhotoCanvas(131, 157, num_classes, probabilities=False)
        for canvas in (full, fast):
            canvas.paste(probabilities, matrix, view=trial % 3)
        np.testing.assert_array_equal(fast.labels, full.labels)
        np.testing.assert_array_equal(fast.claim, full.claim)
        checked += int((full.claim >= 0).sum())
        sure.append((_sure_labels(probabilities)[0] != 255).mean())
    assert checked > 40_000  # the footprints covered enough of the photos to mean something
    assert min(sure) < 0.3 and max(sure) > 0.6  # both paths taken: mostly unsure crops and mostly sure ones


def test_parse_photo_faces(detector: MTCNN, astronaut: np.ndarray) -> None:
    seen: list[np.ndarray] = []

    def parse_crops(crops: list[np.ndarray]) -> list[np.ndarray]:
        seen.extend(crops)
        return [constant_probabilities(5, crop.shape[0], winner=3, confidence=0.8) for crop in crops]

    faces = detector.detect(astronaut)
    labels, probabilities = parse_photo_faces(astronaut, faces, parse_crops, 128, num_classes=5)
    assert [crop.shape for crop in seen] == [(128, 128, 3)]
    assert labels.shape == astronaut.shape[:2] and probabilities.shape == (5, *astronaut.shape[:2])
    for x, y in faces[0].landmarks.round().astype(int):
        assert labels[y, x] == 3
    assert labels[500, 10] == 0 and labels[10, 500] == 0

    labels, probabilities = parse_photo_faces(astronaut, [], parse_crops, 128, num_classes=5)
    assert (labels == 0).all() and probabilities.shape == (5, 512, 512) and (probabilities[0] == 1).all()


def test_all_views_of_a_chunk_go_to_the_network_in_one_call(detector: MTCNN, astronaut: np.ndarray) -> None:
    calls: list[list[tuple[int, ...]]] = []

    def parse_crops(crops: list[np.ndarray]) -> list[np.ndarray]:
        calls.append([crop.shape for crop in crops])
        return [constant_probabilities(5, crop.shape[0], winner=3, confidence=0.8) for crop in crops]

    faces = detector.detect(astronaut) * 3  # three (identical) faces, chunks of two
    views = [(96.0, 96), (64.0, 96)]
    parse_photo_faces(astronaut, faces, parse_crops, 96, num_classes=5, views=views, probabilities=False, chunk=2)
    assert calls == [[(96, 96, 3)] * 4, [(96, 96, 3)] * 2]
    with pytest.raises(ValueError, match="same side"):
        parse_photo_faces(astronaut, faces, parse_crops, 96, num_classes=5, views=[(96.0, 96), (64.0, 64)])


def test_content_window_cuts_flat_bars_between_a_face_and_its_crop_edge() -> None:
    """A letterboxed photo: a black bar above (30 rows) and a grey one on the right (25 columns, JPEG-like
    noise within the tolerance) of textured content; the face's box sits in the content, its crop reaches
    into both bars. Only those bars are cut; a one-line bar, or a bar broken by one strand of hair, is not."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (200, 160, 3), dtype=np.uint8)
    photo[:30] = 0
    photo[:, 135:] = 128 + rng.integers(-3, 4, (200, 25, 3))
    box = np.array([60, 80, 100, 130], np.float32)
    matrix = np.array([[1, 0, -10], [0, 1, -10]], dtype=np.float64)  # a 170 x 170 crop over rows/cols 10..179
    assert content_window(photo, box, matrix, 170) == (slice(30, 200), slice(0, 135))
    inside = np.array([[1, 0, -40], [0, 1, -40]], dtype=np.float64)  # crop over 40..129: no bar in reach
    assert content_window(photo, box, inside, 90) == (slice(0, 200), slice(0, 160))
    thin = photo.copy()
    thin[:30] = rng.integers(0, 256, (30, 160, 3), dtype=np.uint8)
    thin[10] = 0  # the crop's first row only
    assert content_window(thin, box, matrix, 170)[0] == slice(0, 200)
    strand = photo.copy()
    strand[20:30, 80] = 200  # hair reaching up into the bar's lower ten rows: the bar ends above it
    assert content_window(strand, box, matrix, 170)[0] == slice(20, 200)


def test_nothing_is_pasted_on_a_letterbox_bar(detector: MTCNN, astronaut: np.ndarray) -> None:
    """The astronaut letterboxed by a black bar of 60 rows above her, and every crop labelling all it sees as a
    face part: the bar stays background, the rest of the wide crop's reach is labelled."""
    photo = np.concatenate([np.zeros((60, 512, 3), np.uint8), astronaut])

    def parse_crops(crops: list[np.ndarray]) -> list[np.ndarray]:
        return [constant_probabilities(5, crop.shape[0], winner=2, confidence=0.9) for crop in crops]

    faces = detector.detect(photo)
    views = [(128.0, 128), (64.0, 128)]  # the wide crop shows twice the framing: it reaches above row 60
    labels, _ = parse_photo_faces(photo, faces, parse_crops, 128, num_classes=5, views=views)
    reach = inside_crop(*crop_coordinates(alignment_matrix(faces[0].landmarks, 64.0, 128), slice(0, 572),
                                          slice(0, 512)), 128)  # fmt: skip
    assert reach[:60].any() and not labels[:60].any()
    assert (labels[60:][reach[60:]] == 2).all()
