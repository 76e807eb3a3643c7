"""``Parser`` (alias ``FaceParser``): parse photos with a shipped model, a trained checkpoint or an
exported ONNX file; face parsers and the human parser alike.

Inputs are file paths, PIL images or numpy arrays (H, W, 3) **RGB** uint8 (grayscale (H, W) and RGBA
are converted). Paths and PIL images are treated alike: EXIF orientation applied (a sideways phone photo is
parsed upright, and label maps match it as displayed) and 16-bit images scaled to 8 bits; arrays are taken
as they are. Each image is letterboxed to the network size and the prediction is mapped back to
the image's own size, so label maps always match the input pixel for pixel.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from agrnet.config import MIN_SIZE
from agrnet.data.classes import LABEL_SPECS, LabelSpec
from agrnet.data.datasets import load_image
from agrnet.data.transforms import Canvas, canvas_hw, to_tensor, warp_pair
from agrnet.detection import MTCNN, Face, parse_photo_faces
from agrnet.detection.align import MAX_VIEWS
from agrnet.evaluate import flip_permutation, predict_logits
from agrnet.images import MAX_SIDE, pil_to_rgb
from agrnet.modeling.agrnet import AGRNet
from agrnet.modeling.layers import inference_copy
from agrnet.tta import canvas_labels, check_scales, mean_probabilities, scaled_canvas

ImageInput = str | Path | Image.Image | np.ndarray


@dataclass
class Parsing:
    """labels: (H, W) uint8 class indices at the input size; probabilities: (Nc, H, W) float32 or None;
    faces: the faces parsed (box, 5 landmarks, score) with ``detect_faces=True``, else None;
    faces_skipped: faces found beyond the parser's ``max_faces`` (the smallest ones), not parsed."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    faces: list[Face] | None = None
    faces_skipped: int = 0


# How much more of the photo around a detected face its second, wide crop shows than the CelebA-HQ framing,
# which cuts long hair and the neck off; chosen on the val split of benchmarks/wild_faces.py.
DEFAULT_FACE_ZOOM = 1.5


def wide_zooms(face_zoom: float | Sequence[float]) -> tuple[float, ...]:
    """The zooms of the wide crops ``face_zoom`` asks for (1.0 and (1.0,): none), checked: numbers from 1 to 4,
    strictly increasing, at most MAX_VIEWS - 1 above 1."""
    zooms = face_zoom if isinstance(face_zoom, Sequence) and not isinstance(face_zoom, str) else (face_zoom,)
    numbers = all(not isinstance(z, bool) and isinstance(z, (int, float)) and 1.0 <= z <= 4.0 for z in zooms)
    if not zooms or not numbers or any(b <= a for a, b in itertools.pairwise(zooms)):
        raise ValueError(f"face_zoom must be a number from 1 to 4 or an increasing list of them, got {face_zoom!r}")
    wide = tuple(float(zoom) for zoom in zooms if zoom > 1.0)
    if len(wide) > MAX_VIEWS - 1:
        raise ValueError(f"face_zoom: at most {MAX_VIEWS - 1} wide crops, got {face_zoom!r}")
    return wide


# Faces parsed per photo at most (the largest first), and faces per network batch (each with its views: 8
# crops with the wide one): a photo tiled with hundreds of faces must not take the machine's memory or
# minutes of one request.
DEFAULT_MAX_FACES = 32
FACE_CHUNK = 4


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Any supported input -> (H, W, 3) uint8 RGB; files get the same pixel budget as everywhere else,
    and every image must have pixels and sides OpenCV can warp (ValueError otherwise)."""
    if isinstance(image, (str, Path)):
        return load_image(Path(image))
    if isinstance(image, Image.Image):
        array = pil_to_rgb(ImageOps.exif_transpose(image))
    elif isinstance(image, np.ndarray):
        array = _array_to_rgb(image)
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}; give a path, a PIL image or a numpy array")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"the image has no pixels (shape {_shape(image)})")
    if max(height, width) > MAX_SIDE:
        raise ValueError(f"the image is {width}×{height}: sides over {MAX_SIDE} pixels are beyond OpenCV; downscale it")
    return array


def _shape(image: Image.Image | np.ndarray) -> tuple[int, ...]:
    return image.shape if isinstance(image, np.ndarray) else (image.height, image.width)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, uint8 or uint16 -> (H, W, 3) uint8."""
    if array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 or uint16, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"numpy images must be (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, got {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def read_onnx_meta(path: Path) -> tuple[LabelSpec, tuple[int, int]]:
    """The label spec and canvas (height, width) in the side file that ``agrnet export`` writes, checked
    (files without ``width`` are square)."""
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); export the model again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object with dataset and size, got {type(meta).__name__}")
    dataset, size = meta.get("dataset"), meta.get("size")
    width = meta.get("width", size)
    if dataset not in LABEL_SPECS:
        raise ValueError(f"{path}: dataset must be one of {sorted(LABEL_SPECS)}, got {dataset!r}")
    for key, value in (("size", size), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_SIZE:
            raise ValueError(f"{path}: {key} must be an integer >= {MIN_SIZE}, got {value!r}")
    return LABEL_SPECS[dataset], (size, width)


class _OnnxLogits:
    """Runs an exported model with onnxruntime: no torch model code involved."""

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers or ort.get_available_providers())
        except Exception as error:  # onnxruntime has its own exception classes for corrupt or foreign files
            raise ValueError(
                f"{path}: not a loadable ONNX model ({str(error).strip().splitlines()[0][:200]}); "
                "is the file complete? export it again with agrnet export"
            ) from None
        self.input_name = self.session.get_inputs()[0].name

    def check(self, path: Path, canvas: tuple[int, int], num_classes: int) -> None:
        """The model must take (height, width) ``canvas`` images and give ``num_classes`` channels, as its
        side file says."""
        taken, given = self.session.get_inputs()[0].shape, self.session.get_outputs()[0].shape
        if len(taken) != 4 or taken[2:] != list(canvas):
            said = str(canvas[0]) if canvas[0] == canvas[1] else f"{canvas[0]}x{canvas[1]}"
            raise ValueError(f"{path}: the side file says size {said} but the model takes inputs of shape {taken}")
        if len(given) != 4 or given[1] != num_classes:
            raise ValueError(f"{path}: the side file says {num_classes} classes but the model gives shape {given}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: images.cpu().numpy()})
        return torch.from_numpy(logits)


class Parser:
    """Inference wrapper; construct with ``from_pretrained``, ``from_checkpoint`` or ``from_onnx``.

    ``face_zoom`` (``detect_faces=True``): besides its crop in the training framing, each face is parsed a
    second time in a wide crop of the same size that shows ``face_zoom`` times as much around it, so hair to
    the shoulders and the neck beyond the CelebA-HQ framing are parsed too; inside the framing the first
    crop decides (``PhotoCanvas``). 1.0: the framing alone, one pass. An increasing sequence, e.g. (1.5, 2.5),
    adds one wider crop per zoom (one more pass each), each adding face parts where the narrower ones saw
    background or did not reach; for long hair on full-body photos. ``max_faces``: faces parsed per photo,
    the largest first; the rest are counted in ``Parsing.faces_skipped``. ``scales``: multi-scale test-time
    augmentation (``agrnet.tta``): the network on the canvas times each factor, probabilities averaged; e.g.
    (0.833, 1.0, 1.167) costs about 3x the time of the default (1.0,). PyTorch models only (an ONNX file has
    a fixed canvas)."""

    def __init__(
        self,
        spec: LabelSpec,
        size: Canvas,
        model: AGRNet | None = None,
        onnx: _OnnxLogits | None = None,
        device: torch.device | None = None,
        face_zoom: float | Sequence[float] = DEFAULT_FACE_ZOOM,
        max_faces: int = DEFAULT_MAX_FACES,
        scales: Sequence[float] = (1.0,),
    ) -> None:
        if (model is None) == (onnx is None):
            raise ValueError("give exactly one of model and onnx")
        self.scales = check_scales(scales)
        if onnx is not None and self.scales != (1.0,):
            raise ValueError(f"scales={scales!r} needs the PyTorch model: an ONNX file has a fixed canvas")
        if isinstance(max_faces, bool) or not isinstance(max_faces, int) or max_faces < 1:
            raise ValueError(f"max_faces must be an integer >= 1, got {max_faces!r}")
        device = device or torch.device("cpu")
        self.spec, self.size, self.model, self.onnx, self.device = spec, size, model, onnx, device
        self.face_zoom, self.max_faces = face_zoom, max_faces  # face_zoom checked by its setter
        self.amp_dtype = torch.bfloat16 if device.type == "cuda" else None
        self._detector: MTCNN | None = None
        if model is not None:
            self.model = inference_copy(model, device)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", size: Canvas | None = None, scales: Sequence[float] = (1.0,)
    ) -> Parser:
        """``size``: the network canvas, S or (height, width) (default: the one the model was trained at);
        the network is convolutional, so a smaller canvas is faster and coarser, a larger one finer.
        ``scales``: see the class."""
        from agrnet.checkpoints import model_from_checkpoint
        from agrnet.devices import resolve_device

        torch_device = resolve_device(device)
        model, config = model_from_checkpoint(path, torch_device)
        canvas = _canvas(size, config.data.canvas)
        return cls(config.data.spec(), canvas, model=model, device=torch_device, scales=scales)

    @classmethod
    def from_onnx(cls, path: str | Path, providers: list[str] | None = None) -> Parser:
        """Load an ``agrnet export --format onnx`` file; its label spec and size sit beside it in
        ``<file>.json``."""
        path = Path(path)
        meta_path = path.with_suffix(path.suffix + ".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} (written by agrnet export next to the model) is missing")
        spec, size = read_onnx_meta(meta_path)
        runner = _OnnxLogits(path, providers)
        runner.check(meta_path, size, spec.num_classes)
        return cls(spec, size, onnx=runner)

    @property
    def face_zoom(self) -> float | Sequence[float]:
        return self._face_zoom

    @face_zoom.setter
    def face_zoom(self, value: float | Sequence[float]) -> None:
        """Checked when set (at construction or later), so a bad value fails here, not at the next photo."""
        self._wide_zooms = wide_zooms(value)
        self._face_zoom = value

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    def _logits(self, canvases: torch.Tensor, flip: bool) -> torch.Tensor:
        if self.onnx is not None:
            logits = self.onnx(canvases)
            if flip:
                perm = flip_permutation(self.spec, logits.shape[1])
                logits = (logits + self.onnx(canvases.flip(-1)).flip(-1)[:, perm]) / 2
            return logits
        assert self.model is not None
        perm = flip_permutation(self.spec, self.model.num_classes) if flip else None
        images = canvases.to(self.device).contiguous(memory_format=torch.channels_last)
        # Back to NCHW: the softmax over classes and the paste-back read one class plane at a time.
        return predict_logits(self.model, images, perm, self.amp_dtype).contiguous()

    @classmethod
    def from_pretrained(
        cls, name: str | None = None, device: str = "auto", size: Canvas | None = None, scales: Sequence[float] = (1.0,)
    ) -> Parser:
        """A model shipped inside the package (``agrnet.pretrained.PRETRAINED``; default: the
        CelebAMask-HQ parser), its file checked by sha256. ``size`` and ``scales`` as in ``from_checkpoint``."""
        from agrnet.devices import resolve_device
        from agrnet.pretrained import load_pretrained

        torch_device = resolve_device(device)
        model, config = load_pretrained(name, torch_device)
        canvas = _canvas(size, config.data.canvas)
        return cls(config.data.spec(), canvas, model=model, device=torch_device, scales=scales)

    @property
    def detector(self) -> MTCNN:
        """The face detector of ``detect_faces=True``, built on first use."""
        if self._detector is None:
            self._detector = MTCNN(device=self.device)
        return self._detector

    def predict(
        self, image: ImageInput, probabilities: bool = False, flip: bool = False, detect_faces: bool = False
    ) -> Parsing:
        """Parse one image at its own size. ``detect_faces``: find every face, align each to the
        training framing, parse it and paste it back (the rest is background); otherwise the image
        is taken as one aligned face crop."""
        return self.predict_batch([image], probabilities, flip, detect_faces=detect_faces)[0]

    @torch.no_grad()
    def predict_batch(
        self,
        images: Sequence[ImageInput],
        probabilities: bool = False,
        flip: bool = False,
        batch_size: int = 8,
        detect_faces: bool = False,
    ) -> list[Parsing]:
        """Parse several images (any sizes), ``batch_size`` at a time through the network
        (``detect_faces``: see ``predict``; the faces of one photo form one batch)."""
        if isinstance(images, (str, Path, np.ndarray, Image.Image)) or not isinstance(images, Sequence):
            raise TypeError(f"images must be a list of images, got {type(images).__name__}; predict takes one")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        for name, value in (("probabilities", probabilities), ("flip", flip), ("detect_faces", detect_faces)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if detect_faces and self.spec.subject != "face":
            raise ValueError(
                f"detect_faces=True needs a face parser; this model ({self.spec.name}) parses whole "
                f"{self.spec.subject}s: give the photo without detect_faces"
            )
        if detect_faces:
            return [self._parse_photo(to_rgb_array(image), probabilities, flip) for image in images]
        results: list[Parsing] = []
        for start in range(0, len(images), batch_size):
            arrays = [to_rgb_array(image) for image in images[start : start + batch_size]]
            per_scale = []  # one (N, Nc, Sh, Sw) per canvas
            for scale in self.scales:
                canvas = scaled_canvas(self.size, scale)
                batch = torch.stack([to_tensor(warp_pair(array, None, canvas)[0]) for array in arrays])
                per_scale.append(self._logits(batch, flip))
            for i, array in enumerate(arrays):
                results.append(_to_input_size([logits[i] for logits in per_scale], *array.shape[:2], probabilities))
        return results

    def _parse_photo(self, photo: np.ndarray, probabilities: bool, flip: bool) -> Parsing:
        found = self.detector.detect(photo)
        faces = sorted(found, key=lambda f: -float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))[: self.max_faces]
        size = canvas_hw(self.size)[0]
        views = [(size, size)] + [(size / zoom, size) for zoom in self._wide_zooms]
        labels, probs = parse_photo_faces(
            photo, faces, lambda crops: self._crop_probabilities(crops, flip), size, self.spec.num_classes,
            views=views, probabilities=probabilities, chunk=FACE_CHUNK,
        )  # fmt: skip
        return Parsing(labels, probs, faces, faces_skipped=len(found) - len(faces))

    def _crop_probabilities(self, crops: list[np.ndarray], flip: bool) -> list[np.ndarray]:
        """Aligned (S, S, 3) crops -> (Nc, S, S) float32 probabilities each, averaged over ``scales`` (the
        crops resized to each scale's canvas, the logits resized back)."""
        batch = torch.stack([to_tensor(crop) for crop in crops])
        side = (batch.shape[-2], batch.shape[-1])
        total = torch.zeros(())
        for scale in self.scales:
            canvas = scaled_canvas(side, scale)
            if canvas == side:
                logits = self._logits(batch, flip).float()
            else:
                logits = _resize(self._logits(_resize(batch, canvas, antialias=True), flip).float(), side)
            total = total + logits.softmax(1).cpu()
        return list((total / len(self.scales)).numpy())


# Strips of at most this many output pixels per class keep huge photos within memory.
_STRIP_PIXELS = 4_000_000


def _canvas(size: Canvas | None, trained: tuple[int, int]) -> tuple[int, int]:
    """A requested network canvas, checked, or the training canvas."""
    if size is None:
        return trained
    sides = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(sides) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= MIN_SIZE for s in sides):
        raise ValueError(f"size must be an integer or (height, width) of integers >= {MIN_SIZE}, got {size!r}")
    return sides[0], sides[1]


def _resize(images: torch.Tensor, canvas: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *canvas), bilinear; ``antialias`` for downscaled images."""
    return F.interpolate(images, size=canvas, mode="bilinear", align_corners=False, antialias=antialias)


def _to_input_size(canvas_logits: list[torch.Tensor], height: int, width: int, probabilities: bool) -> Parsing:
    """One image's logits, one (Nc, Sh, Sw) per canvas -> labels (and probabilities, averaged over the
    canvases) at (height, width), in row strips; labels alone go through ``canvas_labels``."""
    step = max(1, _STRIP_PIXELS // width)
    labels = np.empty((height, width), dtype=np.uint8)
    probs = np.empty((canvas_logits[0].shape[0], height, width), dtype=np.float32) if probabilities else None
    for start in range(0, height, step):
        stop = min(height, start + step)
        if probs is None:
            strip_labels = canvas_labels(canvas_logits, height, width, rows=(start, stop))
        else:
            strip = mean_probabilities(canvas_logits, height, width, rows=(start, stop))
            strip_labels = strip.argmax(0)
            probs[:, start:stop] = strip.cpu().numpy()
        labels[start:stop] = strip_labels.to(torch.uint8).cpu().numpy()
    return Parsing(labels, probs)


# The name from before the human parser; kept so existing code keeps working.
FaceParser = Parser
