"""Training configuration: typed dataclasses, YAML files and ``key=value`` overrides.

Unknown keys are errors (with the nearest valid key suggested), so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from agrnet.build import ABLATIONS, ModelConfig, ablation
from agrnet.data.classes import LabelSpec
from agrnet.data.datasets import label_spec
from agrnet.data.transforms import Augmentation, AugmentMode, Border
from agrnet.losses import LossWeights


@dataclass(frozen=True)
class DataConfig:
    """kind: lapa | synthetic | helen | celebamask_hq | lip | folder. size: training canvas height
    (paper 473, at least 32); width: its width (None: square, ``size``), e.g. 512 x 352 for standing
    people. classes: the label spec of a ``folder`` dataset (e.g. celebamask_hq);
    other kinds have their own. skip_bad_samples: skip unreadable samples during training (counted
    and listed at the end) instead of stopping at the first. scale_min, scale_max: the training scale
    range of ``augment=paper`` (and the clip of ``code``); the paper's 0.75-1.25. A lower ``scale_min``
    puts zoomed-out framings (a face small in its canvas, as in a wide crop) in distribution. degrade:
    the probability that a training sample is shown as a small, JPEG-compressed photo blown up to the
    canvas (0: never, the default; faces from small in-the-wild photos look like that). surround: what a
    zoomed-out or rotated training canvas shows beyond the photo: "pad" (image 0, labels ignored; the
    default), "mirror" (photo and labels reflected at its edges, so hair and neck go on past the crop) or
    "mirror_below" (reflected at the bottom edge only, padded elsewhere).
    repeat_threshold: repeat-factor sampling (LVIS): an image whose rarest class lies in a share f
    of the train images below this threshold t is seen sqrt(t / f) times as often (0: off, the
    default; e.g. 0.3 shows CCP's 9 glove photos 4.8 times as often)."""

    kind: str = "lapa"
    root: str = ""
    classes: str | None = None
    size: int = 473
    width: int | None = None
    augment: AugmentMode = "paper"
    flip: bool = False
    workers: int = 2
    skip_bad_samples: bool = False
    scale_min: float = 0.75
    scale_max: float = 1.25
    degrade: float = 0.0
    surround: Border = "pad"
    repeat_threshold: float = 0.0

    def spec(self) -> LabelSpec:
        return label_spec(self.kind, self.classes)

    def augmentation(self) -> Augmentation:
        """The training augmentation these settings describe."""
        return Augmentation(self.augment, self.flip, (self.scale_min, self.scale_max), self.degrade, self.surround)

    @property
    def canvas(self) -> tuple[int, int]:
        """The network canvas as (height, width)."""
        return self.size, self.width or self.size


@dataclass(frozen=True)
class OptimConfig:
    """SGD (the paper's recipe) or AdamW (decoupled weight decay; momentum unused), with poly decay
    lr = lr * (1 - it / max_it) ** power per iteration."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    batch_size: int = 8


@dataclass(frozen=True)
class LossConfig(LossWeights):
    """lambda_1..5 of Eq. 11 and the extra ``lovasz`` weight (inherited from ``LossWeights``), the
    discriminative-loss variant, and ``class_balance``: the exponent p of per-class weights
    f_c^-p on the two segmentation CE terms (final, raw), f_c the pixel frequency of class c in the
    train split (0: plain CE as in the paper; 0.5: square-root balancing, for rare classes such as
    gloves or earrings)."""

    dis_variant: Literal["paper", "code"] = "paper"
    dis_delta: float = 1.0
    class_balance: float = 0.0


# The losses each Table I(a) row trains with. The baseline is Table I(b) row 1 (cross-entropy alone,
# DESIGN-NOTES §14); the graph variants take the full objective (Table I(b) row 4), whose terms
# drop out where the variant lacks the output (no Z0: no raw loss; no edge module: no edge loss).
_PAPER_WEIGHTS = dataclasses.asdict(LossWeights())
ABLATION_LOSSES: dict[str, dict[str, float]] = {
    "baseline": {"raw": 0.0, "edge": 0.0, "boundary": 0.0, "final": 1.0, "discriminative": 0.0},
    **{name: _PAPER_WEIGHTS for name in ABLATIONS if name != "baseline"},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. ``iterations`` is the schedule length; ``ablation`` (a Table I(a)
    row name) overrides the model switches and, unless ``ablation_losses`` is false, the loss weights
    (``ABLATION_LOSSES``: the baseline trains with cross-entropy alone, Table I(b) row 1).
    ``amp``: auto = bf16 (or fp16 where bf16 is unsupported) on CUDA, off on CPU.
    ``on_nonfinite``: stop (default) or skip a step whose loss is NaN/inf.
    ``init_from``: fine-tuning: a checkpoint path or a shipped model name (``agrnet models``) whose weights
    start a new run; optimizer, schedule and iteration count start fresh. A resumed run ignores it (its
    ``last.pt`` holds the weights); the model settings must match the source's.
    ``snapshot_every``: also keep ``snapshot_<iteration>.pt`` every that many iterations (0: none), the
    checkpoints a weight average along one run (SWA) is built from.
    ``distill_from``: a checkpoint path or shipped model name whose flip- and multi-scale-averaged
    probabilities (``agrnet.distill.TtaTeacher``) are the soft targets of ``loss.distill`` (given together)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ablation: str | None = None
    ablation_losses: bool = True
    iterations: int = 50_000
    seed: int = 0
    out_dir: str = "runs/default"
    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    threads: int = 0
    checkpoint_every: int = 500
    snapshot_every: int = 0
    val_every: int = 2000
    log_every: int = 10
    on_nonfinite: Literal["stop", "skip"] = "stop"
    init_from: str | None = None
    distill_from: str | None = None

    def resolved_model(self) -> ModelConfig:
        return self.model if self.ablation is None else ablation(self.ablation, self.model)

    def resolved_loss(self) -> LossConfig:
        """The loss weights this run trains with: ``loss`` as given, or its ablation's row."""
        if self.ablation is None or not self.ablation_losses:
            return self.loss
        return dataclasses.replace(self.loss, **ABLATION_LOSSES[self.ablation])


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says which key and why."""


def _from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {where}{key}{hint}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _from_dict(hints[key], value, f"{where}{key}.")
        else:
            kwargs[key] = _check_type(value, hints[key], f"{where}{key}")
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, key: str) -> Any:
    text = str(hint)
    if value is None and ("None" in text or "Optional" in text):
        return None
    if hint is bool or text == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif hint is int or text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
    elif getattr(hint, "__origin__", None) is Literal:
        if value not in hint.__args__:
            raise ConfigError(f"{key} must be one of {list(hint.__args__)}, got {value!r}")
    elif hint is str or text.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    config = _from_dict(TrainConfig, values, "")
    if config.ablation is not None and config.ablation not in ABLATIONS:
        raise ConfigError(f"ablation must be one of {sorted(ABLATIONS)}, got {config.ablation!r}")
    check_ranges(config)
    return config


# The smallest canvas: the backbone divides it by up to 16, and the pyramid pooling and top-K vertex
# selection need a feature grid of at least 2 x 2.
MIN_SIZE = 32
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_ranges(config: TrainConfig) -> None:
    """Refuse values that would crash later or train on nothing, before any work starts.

    The batch needs two samples per process: BatchNorm after the 1 x 1 pyramid pooling cannot
    normalise a single value."""
    at_least = {
        "iterations": (config.iterations, 1), "checkpoint_every": (config.checkpoint_every, 1),
        "val_every": (config.val_every, 1), "log_every": (config.log_every, 1), "threads": (config.threads, 0),
        "snapshot_every": (config.snapshot_every, 0),
        "optim.batch_size": (config.optim.batch_size, 2), "data.size": (config.data.size, MIN_SIZE),
        "data.width": (config.data.canvas[1], MIN_SIZE),
        "data.workers": (config.data.workers, 0), "model.num_classes": (config.model.num_classes, 1),
        "model.top_k": (config.model.top_k, 1), "model.channels": (config.model.channels, 1),
        "model.context_channels": (config.model.context_channels, 1),
        "model.edge_channels": (config.model.edge_channels, 1),
    }  # fmt: skip
    for key, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{key} must be at least {low}, got {value}")
    # poly_power 0 is a constant learning rate; a negative power divides by zero at the last iteration.
    non_negative = {
        "optim.poly_power": config.optim.poly_power, "optim.momentum": config.optim.momentum,
        "optim.weight_decay": config.optim.weight_decay, "loss.dis_delta": config.loss.dis_delta,
        "loss.class_balance": config.loss.class_balance,
        **{f"loss.{f.name}": getattr(config.loss, f.name) for f in dataclasses.fields(LossWeights)},
    }  # fmt: skip
    for key, value in non_negative.items():
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{key} must be a finite number >= 0, got {value}")
    low, high = config.data.scale_min, config.data.scale_max
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ConfigError(f"data.scale_min and data.scale_max must satisfy 0 < min <= max, got {low} and {high}")
    if not (math.isfinite(config.data.degrade) and 0 <= config.data.degrade <= 1):
        raise ConfigError(f"data.degrade is a probability in [0, 1], got {config.data.degrade}")
    if not (math.isfinite(config.data.repeat_threshold) and 0 <= config.data.repeat_threshold <= 1):
        raise ConfigError(f"data.repeat_threshold is a share of images in [0, 1], got {config.data.repeat_threshold}")
    if not (math.isfinite(config.optim.lr) and config.optim.lr > 0):
        raise ConfigError(f"optim.lr must be a finite number > 0, got {config.optim.lr}")
    distill = config.resolved_loss().distill
    if bool(config.distill_from) != bool(distill):
        raise ConfigError(
            "distill_from (the teacher) and loss.distill (its weight) go together, got "
            f"distill_from={config.distill_from!r} and loss.distill={distill}"
        )
    if not DEVICE_PATTERN.fullmatch(config.device):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {config.device!r}")


def shipped_configs() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("agrnet.configs").iterdir()
                  if p.name.endswith(".yaml"))  # fmt: skip


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """A YAML file path, or the name of a shipped config (``lapa``, ``synthetic``, ...; a
    ``configs/<name>.yaml`` path also resolves to it), plus ``a.b=value`` overrides (YAML-typed)."""
    path = Path(name_or_path)
    if path.is_file():
        text = path.read_text()
    else:
        name = path.name.removesuffix(".yaml")
        if name not in shipped_configs():
            raise ConfigError(f"config {name_or_path!r} is neither a file nor one of {shipped_configs()}")
        text = resources.files("agrnet.configs").joinpath(f"{name}.yaml").read_text()
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{name_or_path}: invalid YAML ({error})") from None
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} must look like key=value (e.g. optim.lr=0.01)")
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {override!r}: {parent} is not a section")
        target[leaf] = yaml.safe_load(raw) if raw else ""
    return from_dict(values)
