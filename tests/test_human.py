"""The shipped human parser (Clothing Co-Parsing): checksum, whole photos at their own size, plausible parts,
and what it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import agrnet.pretrained as pretrained
from agrnet.cli import main
from agrnet.inference import Parser

CCP = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp"


@pytest.fixture(scope="module")
def human() -> Parser:
    return Parser.from_pretrained(pretrained.HUMAN_PARSER, device="cpu")


def test_the_shipped_file_is_the_one_in_the_table(human: Parser) -> None:
    entry = pretrained.PRETRAINED[pretrained.HUMAN_PARSER]
    assert pretrained.sha256_of(pretrained.pretrained_path(pretrained.HUMAN_PARSER)) == entry.sha256
    assert human.spec.name == "ccp" and human.spec.subject == "person" and len(human.class_names) == 17
    assert "Apache-2.0" in entry.licence


def _centre_row(labels: np.ndarray, classes: list[int]) -> float:
    rows = np.nonzero(np.isin(labels, classes))[0]
    assert len(rows) > 200, f"classes {classes}: only {len(rows)} pixels"
    return float(rows.mean())


def test_the_astronaut_has_hair_above_skin_above_upper_clothes(human: Parser) -> None:
    """Upper clothes: any garment on the torso (CCP's upper_clothes, coat or dress; the space suit is a one-piece
    garment, which the parser calls a dress)."""
    names = human.class_names
    labels = human.predict(data.astronaut()).labels
    upper = [names.index(n) for n in ("upper_clothes", "coat", "dress")]
    assert _centre_row(labels, [names.index("hair")]) < _centre_row(labels, [names.index("skin")])
    assert _centre_row(labels, [names.index("skin")]) < _centre_row(labels, upper)


@pytest.mark.skipif(not CCP.is_dir(), reason=f"{CCP} (the Clothing Co-Parsing photos) is absent")
def test_real_street_photos_parse_top_to_bottom(human: Parser) -> None:
    """Hair above upper clothes above shoes on every one of 10 test photos (a person standing)."""
    names = human.class_names
    photos = sorted((CCP / "test" / "images").iterdir())[:10]
    for photo in photos:
        labels = human.predict(photo).labels
        assert labels.shape == Image.open(photo).size[::-1]
        hair = _centre_row(labels, [names.index("hair")])
        shoes = _centre_row(labels, [names.index("shoes")])
        assert hair < shoes, photo.name
        assert (labels == 0).mean() > 0.4, f"{photo.name}: the street is mostly background"


@pytest.mark.parametrize("shape", [(901, 37, 3), (37, 901, 3), (1, 1, 3)])
def test_photos_of_odd_sizes_parse_to_maps_of_their_size(human: Parser, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    result = human.predict(rng.integers(0, 255, shape, dtype=np.uint8), probabilities=True)
    assert result.labels.shape == shape[:2]
    assert result.probabilities is not None and result.probabilities.shape == (17, *shape[:2])


def test_a_photo_without_a_person_is_mostly_background(human: Parser) -> None:
    labels = human.predict(np.full((830, 550, 3), 200, np.uint8)).labels
    assert (labels == 0).mean() > 0.9


def test_detect_faces_with_the_human_parser_is_a_clear_error(human: Parser) -> None:
    with pytest.raises(ValueError, match="detect_faces=True needs a face parser; this model \\(ccp\\) parses whole"):
        human.predict(data.astronaut(), detect_faces=True)


def test_predict_selects_a_shipped_model_by_name(tmp_path: Path, capsys) -> None:
    Image.fromarray(data.astronaut()).save(tmp_path / "person.png")
    args = ["predict", str(tmp_path / "person.png"), "--out", str(tmp_path / "out"), "--model"]
    assert main([*args, pretrained.HUMAN_PARSER]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "person_labels.png"))
    assert labels.shape == (512, 512) and labels.max() <= 16
    capsys.readouterr()
    written = sorted((tmp_path / "out").iterdir())
    assert main([*args, "nope", "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "unknown pretrained model 'nope'; choose one of" in err and pretrained.HUMAN_PARSER in err
    assert sorted((tmp_path / "out").iterdir()) == written and not any((tmp_path / "out2").glob("*.png"))


def test_models_lists_both_with_classes_licence_and_scores(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, entry in pretrained.PRETRAINED.items():
        assert name in out and entry.licence in out and entry.scores in out
    assert "upper_clothes" in out and "l_brow" in out


def test_a_ccp_label_above_16_is_reported(tmp_path: Path, capsys) -> None:
    for split in ("train", "val", "test"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir(parents=True)
        Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / split / "images" / "a.jpg")
        Image.fromarray(np.full((40, 30), 16 if split != "val" else 17, np.uint8)).save(
            tmp_path / split / "labels" / "a.png"
        )
    assert main(["check-data", str(tmp_path), "--kind", "folder", "--classes", "ccp"]) == 1
    out = capsys.readouterr().out
    assert "a.png: label values [17] are outside 0..16" in out and "1 problem(s) found" in out
