from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agrnet.data.classes import CELEBAMASK_HQ, LAPA, colorize
from agrnet.data.datasets import DatasetError, open_split
from agrnet.data.sampling import EpochSampler, repeat_factors
from agrnet.data.synth import generate
from agrnet.data.transforms import Augmentation, letterbox_matrix, unletterbox, unletterbox_labels, warp_pair


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _blocks(h: int, w: int, classes: int) -> np.ndarray:
    """A label map of coarse rectangles, every class present."""
    labels = np.zeros((h, w), dtype=np.uint8)
    for c in range(classes):
        y, x = (c * 7) % max(h - 4, 1), (c * 11) % max(w - 4, 1)
        labels[y : y + 4, x : x + 4] = c
    return labels


def _lapa(root: Path, n: int = 3, h: int = 20, w: int = 28) -> None:
    for split in ("train", "val", "test"):
        for i in range(n):
            labels = _blocks(h, w, 11)
            _save(root / split / "images" / f"{i}.jpg", colorize(labels, LAPA.palette))
            _save(root / split / "labels" / f"{i}.png", labels)


def test_lapa_reader_and_sample_contents(tmp_path: Path) -> None:
    _lapa(tmp_path)
    ds = open_split("lapa", tmp_path, "val", 32)
    assert len(ds) == 3
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["labels"].shape == (32, 32)
    assert item["labels"].dtype == torch.int64 and item["edges"].dtype == torch.bool
    assert set(item["labels"].unique().tolist()) <= set(range(11)) | {255}
    assert (item["labels"] == 255).any(), "letterboxing a 20x28 image onto a square must pad with 255"


def test_lapa_reader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        open_split("lapa", tmp_path / "nope", "train", 32)
    _lapa(tmp_path)
    (tmp_path / "test" / "labels" / "1.png").unlink()
    with pytest.raises(DatasetError, match=r"no label PNG for 1 image\(s\).*1.jpg"):
        open_split("lapa", tmp_path, "test", 32)
    _save(tmp_path / "train" / "labels" / "0.png", np.full((20, 28), 42, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"0.png: label values \[42\] are outside 0..10"):
        open_split("lapa", tmp_path, "train", 32)[0]
    _save(tmp_path / "train" / "labels" / "1.png", np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(DatasetError, match="1.jpg: image size .* differs from its labels"):
        open_split("lapa", tmp_path, "train", 32)[1]
    _save(tmp_path / "train" / "labels" / "2.png", np.zeros((20, 28, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match="single-channel index PNGs, got mode RGB"):
        open_split("lapa", tmp_path, "train", 32)[2]
    (tmp_path / "val" / "images" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="0.jpg: cannot read image"):
        open_split("lapa", tmp_path, "val", 32)[0]


def test_helen_reader_merges_by_argmax(tmp_path: Path) -> None:
    (tmp_path / "testing.txt").write_text("1 , 100_a\n")
    _save(tmp_path / "images" / "100_a.jpg", np.zeros((6, 8, 3), dtype=np.uint8))
    expected = np.zeros((6, 8), dtype=np.uint8)
    expected[1:3, 2:5], expected[4:, :] = 6, 10
    for c in range(11):
        soft = np.where(expected == c, 200, 10 + c).astype(np.uint8)  # background wins where nothing else
        _save(tmp_path / "labels" / "100_a" / f"100_a_lbl{c:02d}.png", soft)
    ds = open_split("helen", tmp_path, "test", 16)
    _, labels = ds.load(0)
    assert np.array_equal(labels, expected)
    with pytest.raises(DatasetError, match="exemplars.txt is missing"):
        open_split("helen", tmp_path, "train", 16)


def test_celebamask_reader_paints_parts_in_order_and_splits(tmp_path: Path) -> None:
    (tmp_path / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx orig_idx orig_file\n0 1 a.jpg\n1 170000 b.jpg\n2 190000 c.jpg\n"
    )
    for k in range(3):
        _save(tmp_path / "CelebA-HQ-img" / f"{k}.jpg", np.zeros((16, 16, 3), dtype=np.uint8))
        skin = np.zeros((8, 8), dtype=np.uint8)
        skin[2:6, 2:6] = 255
        hair = np.zeros((8, 8), dtype=np.uint8)
        hair[2:4, :] = 255  # painted after skin: overwrites it
        _save(tmp_path / "CelebAMask-HQ-mask-anno" / "0" / f"{k:05d}_skin.png", skin)
        _save(tmp_path / "CelebAMask-HQ-mask-anno" / "0" / f"{k:05d}_hair.png", hair)
    splits = {s: open_split("celebamask_hq", tmp_path, s, 16) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [1, 1, 1]
    image, labels = splits["val"].load(0)
    assert image.shape[:2] == labels.shape == (8, 8), "1024-style images are resized to the mask size"
    assert labels[2, 3] == CELEBAMASK_HQ.class_names.index("hair")
    assert labels[5, 3] == CELEBAMASK_HQ.class_names.index("skin") and labels[0, 0] == 0


def test_lip_reader(tmp_path: Path) -> None:
    _save(tmp_path / "TrainVal_images" / "val_images" / "x.jpg", np.zeros((9, 5, 3), dtype=np.uint8))
    _save(tmp_path / "TrainVal_parsing_annotations" / "val_segmentations" / "x.png", np.full((9, 5), 19, np.uint8))
    assert open_split("lip", tmp_path, "val", 16).load(0)[1].max() == 19
    with pytest.raises(DatasetError, match="no labelled test split"):
        open_split("lip", tmp_path, "test", 16)


def test_synthetic_generator_is_readable_and_deterministic(tmp_path: Path) -> None:
    counts = generate(tmp_path / "a", 10, 48, seed=3, progress=False)
    generate(tmp_path / "b", 10, 48, seed=3, progress=False)
    assert counts == {"train": 8, "val": 1, "test": 1}
    a = (tmp_path / "a" / "train" / "labels" / "000004.png").read_bytes()
    assert a == (tmp_path / "b" / "train" / "labels" / "000004.png").read_bytes()
    ds = open_split("synthetic", tmp_path / "a", "train", 48)
    seen = set()
    for i in range(len(ds)):
        seen |= set(np.unique(ds.load(i)[1]).tolist())
    assert {0, 1, 2, 3, 4, 5, 6, 7, 9, 10} <= seen
    landmarks = (tmp_path / "a" / "test" / "landmarks" / "000009.txt").read_text().split()
    assert landmarks[0] == "106" and len(landmarks) == 1 + 212


@pytest.mark.parametrize("seed", range(4))
def test_warp_keeps_image_and_labels_aligned(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 11, (6, 9)), np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    image = colorize(labels, LAPA.palette)  # the image colour encodes the label
    scale, angle, flip = Augmentation("paper", flip=True).sample(rng)
    flip_lut = LAPA.flip_lut() if flip else None
    out_image, out_labels = warp_pair(image, labels, 64, scale, angle, flip_lut)
    assert out_labels is not None
    interior = _far_from_edges(out_labels)
    colour_labels = out_labels if flip_lut is None else flip_lut[out_labels]  # colours are not swapped
    expected = LAPA.palette[colour_labels[interior]]
    assert np.abs(out_image[interior].astype(int) - expected).max() <= 2
    assert interior.sum() > 200


@pytest.mark.parametrize("mode", ["paper", "code"])
def test_augmentation_scales_stay_in_the_configured_range(mode: str) -> None:
    rng = np.random.default_rng(0)
    scales = [Augmentation(mode, scale_range=(0.5, 0.9)).sample(rng)[0] for _ in range(400)]
    assert min(scales) >= 0.5 and max(scales) <= 0.9
    assert min(scales) < 0.55 and max(scales) > 0.85  # the whole range is used, not only its default part


def _far_from_edges(labels: np.ndarray) -> np.ndarray:
    from agrnet.edges import label_edges

    # Bilinear image pixels blend across label boundaries and into the zero padding.
    edges = label_edges(torch.from_numpy(labels.astype(np.int64))).numpy() | (labels == 255)
    grown = edges.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(edges, dy, 0), dx, 1)
    return ~grown


def test_flip_swaps_left_and_right_labels() -> None:
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[:, :4] = 2  # left brow on the image's left
    _, flipped = warp_pair(np.zeros((8, 8, 3), np.uint8), labels, 8, flip_lut=LAPA.flip_lut())
    assert flipped is not None
    assert (flipped[:, 4:] == 3).all() and (flipped[:, :4] == 0).all()


@pytest.mark.parametrize("shape", [(37, 53), (64, 20), (30, 30)])
def test_unletterbox_inverts_the_letterbox(shape: tuple[int, int]) -> None:
    h, w = shape
    labels = np.kron(np.arange(12).reshape(3, 4) % 11, np.ones((h // 3 + 1, w // 4 + 1)))[:h, :w].astype(np.uint8)
    size = 96
    matrix = letterbox_matrix(h, w, size)
    assert np.allclose(matrix[:, :2], np.eye(2) * size / max(h, w))
    one_hot = np.eye(11, dtype=np.float32)[labels].transpose(2, 0, 1)
    canvas = np.stack(
        [warp_pair(np.repeat(c[..., None], 3, 2), None, size)[0][..., 0] for c in (one_hot * 255).astype(np.uint8)]
    )
    back = unletterbox(torch.from_numpy(canvas.astype(np.float32))[None], h, w).argmax(1)[0].numpy()
    assert (back == labels).mean() > 0.97


@pytest.mark.parametrize(
    ("canvas", "shape"), [((48, 32), (830, 550)), ((48, 32), (37, 901)), ((40, 40), (23, 17)), ((40, 40), (40, 40))]
)
def test_label_fast_path_matches_the_argmax_of_the_full_interpolation(
    canvas: tuple[int, int], shape: tuple[int, int]
) -> None:
    """Up- and downsampling, odd sizes, tall and wide letterboxes; regions like a real parse."""
    torch.manual_seed(0)
    coarse = torch.randn(1, 7, canvas[0] // 4, canvas[1] // 4) * 4
    logits = torch.nn.functional.interpolate(coarse, size=canvas, mode="bilinear")[0] + 0.3 * torch.randn(7, *canvas)
    h, w = shape
    reference = unletterbox(logits[None], h, w)[0]
    fast = unletterbox_labels(logits, h, w)
    assert fast.shape == (h, w) and fast.dtype == torch.int64
    differ = fast != reference.argmax(0)
    # float rounding may only flip near-ties of the interpolated logits
    top2 = reference.topk(2, dim=0).values
    assert bool(((top2[0] - top2[1]) < 1e-4)[differ].all()), f"{int(differ.sum())} pixels differ beyond ties"
    assert differ.float().mean() < 1e-4
    rows = unletterbox_labels(logits, h, w, rows=(h // 3, h // 2))
    assert torch.equal(rows, fast[h // 3 : h // 2])


SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "celebamask-mini"


@pytest.mark.skipif(not SHARED_FACES.is_dir(), reason=f"real faces not present at {SHARED_FACES}")
def test_real_celebamask_faces_read_as_a_19_class_folder() -> None:
    for split in ("train", "val", "test"):
        dataset = open_split("folder", SHARED_FACES, split, 64, classes="celebamask_hq")
        assert dataset.spec is CELEBAMASK_HQ and dataset.spec.num_classes == 19
        for index in range(0, len(dataset), max(1, len(dataset) // 6))[:6]:  # at most 18 images in all
            image, labels = dataset.load(index)
            assert image.shape == (512, 512, 3) and labels.shape == (512, 512)
            assert labels.max() <= 18 and (labels == 1).any()  # every face has skin


def test_folder_dataset_needs_a_label_spec_and_its_splits(tmp_path: Path) -> None:
    _lapa(tmp_path)
    with pytest.raises(DatasetError, match="needs data.classes"):
        open_split("folder", tmp_path, "train", 32)
    with pytest.raises(DatasetError, match="unknown label spec 'faces'"):
        open_split("folder", tmp_path, "train", 32, classes="faces")
    assert len(open_split("folder", tmp_path, "train", 32, classes="celebamask_hq")) == 3
    (tmp_path / "val").rename(tmp_path / "validation")
    with pytest.raises(DatasetError, match="missing folder.*val/images"):
        open_split("folder", tmp_path, "val", 32, classes="celebamask_hq")


def test_folder_labels_outside_the_19_classes_name_the_file(tmp_path: Path) -> None:
    _lapa(tmp_path, n=1)
    bad = tmp_path / "train" / "labels"
    path = next(bad.glob("*.png"))
    labels = np.asarray(Image.open(path)).copy()
    labels[0, 0] = 19
    Image.fromarray(labels).save(path)
    dataset = open_split("folder", tmp_path, "train", 32, classes="celebamask_hq")
    with pytest.raises(DatasetError, match=rf"{path.name}: label values \[19\] are outside 0..18"):
        dataset.load(0)


def test_degradation_blurs_and_compresses_only_when_drawn() -> None:
    rng = np.random.default_rng(0)
    checker = (np.indices((96, 128)).sum(0) % 2 * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, axis=2)
    assert Augmentation(degrade=0.0).degrade_image(image, rng) is image
    draws = rng.bit_generator.state
    assert Augmentation(degrade=0.0).degrade_image(image, rng) is image and rng.bit_generator.state == draws
    degraded = Augmentation(degrade=1.0).degrade_image(image, np.random.default_rng(1))
    assert degraded.shape == image.shape and degraded.dtype == np.uint8
    # A one-pixel checkerboard cannot survive any shrink below full size: its contrast collapses.
    assert degraded.astype(float).std() < 0.5 * image.astype(float).std()
    again = Augmentation(degrade=1.0).degrade_image(image, np.random.default_rng(1))
    assert np.array_equal(degraded, again)


def test_mirror_surround_continues_photo_and_labels_past_the_edge() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (64, 64, 3), dtype=np.uint8)
    labels = np.tile(np.arange(64, dtype=np.uint8) // 8, (64, 1))  # class = column // 8: 0 left .. 7 right
    pad_image, pad_labels = warp_pair(image, labels, 64, scale=0.5)
    image_m, labels_m = warp_pair(image, labels, 64, scale=0.5, border="mirror")
    assert labels_m is not None and pad_labels is not None
    inside = pad_labels != 255
    assert 0.2 < inside.mean() < 0.3  # the photo fills the middle quarter of the canvas
    assert np.array_equal(labels_m[inside], pad_labels[inside])
    assert np.array_equal(image_m[16:48, 16:48], pad_image[16:48, 16:48])
    assert (labels_m != 255).all() and (image_m > 0).all()
    # Left of the photo the columns are mirrored: class 0 at its edge, higher classes further out.
    assert labels_m[32, 15] == 0 and labels_m[32, 0] > labels_m[32, 14]
    assert labels_m[32, 63] < 7 and labels_m[32, 48] == 7
    rows = np.repeat(np.arange(64, dtype=np.uint8)[:, None] // 8, 64, axis=1)  # class = row // 8
    image_b, labels_b = warp_pair(image, rows, 64, scale=0.5, border="mirror_below")
    assert labels_b is not None and np.array_equal(labels_b[inside], warp_pair(image, rows, 64, scale=0.5)[1][inside])
    assert (labels_b[:16] == 255).all() and (labels_b[:, :16] == 255).all() and (image_b[:16] == 0).all()
    # Below the photo the rows come back mirrored: the bottom class at the edge, higher rows further down.
    assert labels_b[48, 32] == 7 and labels_b[63, 32] < 7 and (labels_b[48:, 16:48] != 255).all()
    with pytest.raises(ValueError, match="border must be one of"):
        warp_pair(image, labels, 64, border="wrap")  # type: ignore[arg-type]


def test_dataset_mirrors_only_training_samples(tmp_path: Path) -> None:
    generate(tmp_path, 10, 48, seed=3, progress=False)
    zoomed_out = Augmentation("paper", scale_range=(0.5, 0.5), surround="mirror")
    train = open_split("synthetic", tmp_path, "train", (48, 64), zoomed_out, seed=0)
    assert (train[(0, 1)]["labels"] != 255).all()  # a training key: augmented, mirrored
    # A plain index (evaluation) letterboxes the square photo with ignored bars, as before.
    assert (train[1]["labels"][:, :8] == 255).all() and (train[1]["labels"][:, 8:56] != 255).all()


def test_repeat_factors_by_hand() -> None:
    # class 0 in all 4 images, class 1 in 1 of 4 (f = 0.25), class 2 in 2 of 4 (f = 0.5), class 3 in none
    presence = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=bool)
    np.testing.assert_allclose(repeat_factors(presence, 1.0), [2.0, np.sqrt(2), np.sqrt(2), 1.0])
    np.testing.assert_allclose(repeat_factors(presence, 0.25), [1.0, 1.0, 1.0, 1.0])  # f >= t: no repeat
    np.testing.assert_allclose(repeat_factors(presence, 0.0), np.ones(4))


def test_epoch_sampler_repeats_rare_images_and_keeps_its_order_and_length() -> None:
    size, rare = 40, 3
    repeats = np.ones(size)
    repeats[rare] = 3.5
    sampler = EpochSampler(size, seed=5, repeats=repeats)
    seen, copies_seen = np.zeros(size), 0
    for epoch in range(400):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(keys) == size == len(sampler)
        assert len(set(keys)) == size  # a repeated image's copies have keys (and augmentations) of their own
        for key in keys:
            seen[key[1]] += 1
            copies_seen += len(key) == 3
    # the rare image is drawn 3.5 times as often as each other image (binomial noise: about 3 %)
    ratio = seen[rare] / np.delete(seen, rare).mean()
    assert 3.1 < ratio < 3.9, ratio
    assert copies_seen > 0
    sampler.set_epoch(7)
    whole = list(sampler)
    sampler.set_epoch(7, start=13)
    assert list(sampler) == whole[13:]  # resume mid-epoch sees the same remaining keys
    plain = EpochSampler(size, seed=5)
    plain.set_epoch(2)
    assert sorted(key[1] for key in plain) == list(range(size))  # no repeats: a permutation
    with pytest.raises(ValueError, match="repeats must be 40 factors >= 1"):
        EpochSampler(size, seed=5, repeats=np.full(size, 0.5))


def test_copies_of_one_image_are_augmented_differently(tmp_path: Path) -> None:
    _lapa(tmp_path)
    ds = open_split("lapa", tmp_path, "train", 32, Augmentation("paper", flip=True), seed=0)
    first, copy = ds[(0, 1)], ds[(0, 1, 1)]
    assert first["index"] == copy["index"] == 1
    assert not torch.equal(first["image"], copy["image"])
    torch.testing.assert_close(ds[(0, 1)]["image"], first["image"])  # and each is reproducible
