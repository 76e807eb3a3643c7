"""The shipped model: checksum, fp16 packing, and a plausible parse of a real public-domain photo."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import agrnet.pretrained as pretrained
from agrnet.detection.align import alignment_matrix, crop_coordinates, inside_crop
from agrnet.inference import FaceParser


@pytest.fixture(scope="module")
def parser() -> FaceParser:
    return FaceParser.from_pretrained(device="cpu")


def test_from_pretrained_is_the_celebamask_parser(parser: FaceParser) -> None:
    assert parser.spec.name == "celebamask_hq" and len(parser.class_names) == 19
    assert parser.model is not None
    assert all(p.dtype == torch.float32 for p in parser.model.parameters())


def test_corrupted_weights_are_refused_by_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = pretrained.PRETRAINED[pretrained.DEFAULT_PRETRAINED]
    weights = tmp_path / "weights"
    weights.mkdir()
    damaged = bytearray(pretrained.pretrained_path().read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (weights / entry.file).write_bytes(bytes(damaged))
    monkeypatch.setattr(pretrained, "_weights_dir", lambda: weights)
    with pytest.raises(ValueError, match=rf"{entry.file}: sha256 .* does not match .* corrupted"):
        FaceParser.from_pretrained()
    (weights / entry.file).unlink()
    with pytest.raises(ValueError, match="missing; reinstall agrnet"):
        FaceParser.from_pretrained()
    with pytest.raises(ValueError, match="unknown pretrained model 'nope'"):
        FaceParser.from_pretrained("nope")


def test_packing_keeps_the_predictions(tmp_path: Path, parser: FaceParser) -> None:
    """fp16 storage must not change what the model predicts on a real aligned face."""
    assert parser.model is not None
    checkpoint = tmp_path / "train.pt"
    from agrnet.config import to_dict
    from agrnet.pretrained import load_pretrained

    _, config = load_pretrained()
    torch.save({"config": to_dict(config), "model": parser.model.state_dict()}, checkpoint)
    digest = pretrained.pack_checkpoint(checkpoint, tmp_path / "packed.pt")
    assert digest == pretrained.sha256_of(tmp_path / "packed.pt")
    assert (tmp_path / "packed.pt").stat().st_size < 0.6 * checkpoint.stat().st_size
    shutil.copy(tmp_path / "packed.pt", tmp_path / "copy.pt")
    repacked = torch.load(tmp_path / "copy.pt", weights_only=True)["model"]
    for name, value in parser.model.state_dict().items():
        if value.is_floating_point():
            assert repacked[name].dtype == torch.float16
            torch.testing.assert_close(repacked[name].float(), value, rtol=1e-3, atol=1e-4)


def test_astronaut_photo_parses_plausibly(parser: FaceParser) -> None:
    """skimage's astronaut.png (public domain, NASA): one face, found, aligned, parsed, pasted back."""
    photo = data.astronaut()
    result = parser.predict(photo, detect_faces=True, probabilities=True)
    assert result.faces is not None and len(result.faces) == 1
    assert result.labels.shape == photo.shape[:2]
    assert result.probabilities is not None and result.probabilities.shape == (19, *photo.shape[:2])
    labels = result.labels
    x0, y0, x1, y1 = result.faces[0].box.astype(int)
    # The wide crop reaches the suit's collar ring, about 70 px left of the face box; the flag beyond is background.
    assert (labels[:, : max(0, x0 - 90)] == 0).all(), "far left of the face is background"
    assert (labels[y1 : y1 + 40, x0:x1] == parser.class_names.index("cloth")).mean() > 0.3, "the collar under the chin"
    names = parser.class_names
    counts = {name: int((labels == i).sum()) for i, name in enumerate(names)}
    face_classes = ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "u_lip", "l_lip", "mouth")
    assert max(face_classes, key=counts.__getitem__) == "skin"
    assert counts["l_eye"] > 20 and counts["r_eye"] > 20, counts

    def centre_y(name: str) -> float:
        return float(np.nonzero(labels == names.index(name))[0].mean())

    assert centre_y("l_eye") < centre_y("nose") < centre_y("u_lip") < centre_y("l_lip")
    assert centre_y("hair") < centre_y("l_eye")


def test_labels_alone_are_the_argmax_of_the_pasted_probabilities(parser: FaceParser) -> None:
    """detect_faces without probabilities takes the labels-only paste-back: the same map, pixel for pixel."""
    photo = cv2.resize(data.astronaut(), (431, 377))  # not the crop size, so every pixel is interpolated
    with_probabilities = parser.predict(photo, detect_faces=True, probabilities=True)
    labels_only = parser.predict(photo, detect_faces=True)
    assert labels_only.probabilities is None and with_probabilities.probabilities is not None
    np.testing.assert_array_equal(labels_only.labels, with_probabilities.labels)
    assert len(np.unique(labels_only.labels)) > 8


def test_another_canvas_trades_detail_for_speed_not_the_layout(parser: FaceParser) -> None:
    """``size`` runs the network on another canvas: the same photo parses to nearly the same map."""
    photo = data.astronaut()
    small = FaceParser.from_pretrained(device="cpu", size=224)
    assert small.size == (224, 224) and small.size != parser.size
    reference, coarse = parser.predict(photo, detect_faces=True), small.predict(photo, detect_faces=True)
    assert coarse.labels.shape == photo.shape[:2]
    assert (coarse.labels == reference.labels).mean() > 0.95
    for bad in (16, (224,), 224.0, True):
        with pytest.raises(ValueError, match="size must be an integer or"):
            FaceParser.from_pretrained(device="cpu", size=bad)  # type: ignore[arg-type]


def test_a_wider_third_crop_only_adds_foreground(parser: FaceParser) -> None:
    """face_zoom=(1.5, 2.5): where the default two crops see a face part, the map is unchanged; the third
    crop only turns their background (or what they never reached) into face parts, and reaches further."""
    photo = data.astronaut()
    two = parser.predict(photo, detect_faces=True)
    wider = copy.copy(parser)
    wider.face_zoom = (1.5, 2.5)
    three = wider.predict(photo, detect_faces=True).labels
    np.testing.assert_array_equal(three[two.labels > 0], two.labels[two.labels > 0])
    assert two.faces is not None and len(two.faces) == 1
    matrix = alignment_matrix(two.faces[0].landmarks, parser.size[0] / 1.5, parser.size[0])
    reach = inside_crop(*crop_coordinates(matrix, slice(0, photo.shape[0]), slice(0, photo.shape[1])), parser.size[0])
    assert (three[~reach] > 0).sum() > 500 and not two.labels[~reach].any(), "the third crop reaches further"
    for bad in ((2.5, 1.5), (1.5, 1.5), (), (1.5, 5.0), "1.5", (True,), (1.2, 1.5, 2.0, 2.5)):
        with pytest.raises(ValueError, match="face_zoom"):
            FaceParser(parser.spec, parser.size, model=parser.model, face_zoom=bad)  # type: ignore[arg-type]


def test_photo_without_a_face_is_all_background(parser: FaceParser) -> None:
    result = parser.predict(np.full((120, 90, 3), 128, np.uint8), detect_faces=True)
    assert result.faces == [] and result.labels.shape == (120, 90) and not result.labels.any()


def test_photo_demo_finds_every_face_and_writes_its_files(parser: FaceParser, tmp_path: Path) -> None:
    from agrnet.demo_photos import run_photo_demo

    summary = run_photo_demo(tmp_path, parser)
    faces = {name: len(photo["faces"]) for name, photo in summary["photos"].items()}
    assert faces == {"astronaut": 1, "astronaut_turned": 1, "two_faces": 2}
    for photo in summary["photos"].values():
        assert all((tmp_path / file).is_file() for file in photo["files"])
        assert photo["pixels_per_class"]["skin"] > 1000
    # The collage's black band above the smaller photo: the wide crop reaches into it, and once labelled a
    # stripe of it as hat, hair and skin (1,375 pixels).
    labels = np.asarray(Image.open(tmp_path / "two_faces_labels.png"))
    assert not labels[: 512 - 384, 512:].any()


def test_faces_at_the_edge_larger_than_the_photo_or_thirty_small_ones(parser: FaceParser) -> None:
    """Full-size maps and every face pasted where it is, wherever the faces are."""
    photo = data.astronaut()
    at_edge = photo[:, 140:]  # the face's left side cut by the photo's edge
    too_big = cv2.resize(photo[60:260, 110:330], (180, 160))  # the face larger than the photo's framing
    tile = cv2.resize(photo[20:260, 100:340], (64, 64), interpolation=cv2.INTER_AREA)
    thirty = np.tile(tile, (5, 6, 1))
    for image in (at_edge, too_big, thirty):
        result = parser.predict(image, detect_faces=True)
        assert result.labels.shape == image.shape[:2] and result.faces_skipped == 0
        for face in result.faces or []:
            x, y = face.landmarks[2].round().astype(int)  # the nose of each face found
            assert result.labels[y, x] != 0, f"face at {face.box} not pasted"
    assert len(parser.predict(at_edge, detect_faces=True).faces or []) == 1
    assert len(parser.predict(thirty, detect_faces=True).faces or []) >= 25


def test_the_face_cap_keeps_the_largest_and_counts_the_rest() -> None:
    capped = FaceParser.from_pretrained(device="cpu")
    capped.max_faces = 1
    photo = data.astronaut()
    pair = np.zeros((512, 768, 3), np.uint8)
    pair[:, :512], pair[128:384, 512:] = photo, cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA)
    result = capped.predict(pair, detect_faces=True)
    assert result.faces is not None and len(result.faces) == 1 and result.faces_skipped == 1
    assert result.faces[0].box[2] < 512, "the larger face (the full-size one, on the left) is the one parsed"
