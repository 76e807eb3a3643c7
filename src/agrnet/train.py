"""A plain training loop: SGD + poly, autocast chosen once, DDP through torchrun, atomic checkpoints.

Launch on one device with ``agrnet train --config NAME``; on several with
``torchrun --nproc_per_node=G -m agrnet.cli train --config NAME`` (the torchrun environment selects
DistributedDataParallel + SyncBatchNorm).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import default_collate
from tqdm import tqdm

from agrnet.build import build_agrnet
from agrnet.checkpoints import atomic_save, load_checkpoint, model_from_checkpoint
from agrnet.config import OptimConfig, TrainConfig, from_dict, to_dict
from agrnet.data.datasets import DatasetError, ParsingDataset, Split, class_counts, open_split, pixel_frequencies
from agrnet.data.sampling import EpochSampler, repeat_factors
from agrnet.devices import resolve_device
from agrnet.distill import TtaTeacher
from agrnet.evaluate import evaluate_dataset
from agrnet.losses import AGRNetLoss, balanced_class_weights
from agrnet.modeling.agrnet import AGRNet
from agrnet.outputs import prepare_out_dir
from agrnet.pretrained import pretrained_path

log = logging.getLogger(__name__)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Read the torchrun environment; a single process otherwise."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Distributed()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    d = Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if backend == "nccl":
        torch.cuda.set_device(d.local_rank)
    return d


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Chosen once per run. None means full precision."""
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16") and device.type != "cuda":
            log.warning("amp=%s ignored on %s", amp, device)
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


class RunLockedError(ValueError):
    """Another training run holds the output folder."""


@contextlib.contextmanager
def lock_out_dir(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.lock`` for the run, so a second run into the same folder is refused, naming
    the holder. The kernel drops an flock when its holder dies: a crashed run never blocks the next."""
    with open(out_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has just started"
            raise RunLockedError(
                f"{out_dir} is in use by another training run ({holder}); wait for it or choose another out_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and exit at the next step boundary."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NonFiniteLossError(FloatingPointError):
    pass


def train(config: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> Path:
    """Run (or resume) training; returns the path of the final checkpoint ``last.pt``.

    Files in ``config.out_dir``: ``last.pt`` (every ``checkpoint_every`` iterations, on SIGTERM/SIGINT
    and at the end), ``best.pt`` (best val mean F1), ``snapshot_<iteration>.pt`` (every ``snapshot_every``
    iterations, if set), ``log.csv``, ``config.yaml``, ``.lock`` (who
    runs in the folder now). A folder holding another run is refused unless ``resume`` (continue it)
    or ``overwrite`` (replace it); ``resume`` without a ``last.pt`` there is refused too.
    """
    d = setup_distributed(config.device)
    device = resolve_device(config.device, d.local_rank)
    if not d.main:
        return _train(config, resume, progress, d, device)
    out_dir = prepare_out_dir(config.out_dir)
    with lock_out_dir(out_dir):
        _claim_out_dir(out_dir, resume, overwrite)
        return _train(config, resume, progress, d, device)


# What a run leaves in its folder; a new run must not mix its files with them.
RUN_FILES = ("last.pt", "best.pt", "log.csv", "nonfinite.pt")


def _claim_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (out_dir / "last.pt").is_file():
            raise ValueError(
                f"--resume: {out_dir} holds no last.pt to continue (is out_dir right?); "
                "drop --resume to start a new run there"
            )
        return
    previous = [name for name in RUN_FILES if (out_dir / name).exists()]
    previous += sorted(path.name for path in out_dir.glob("snapshot_*.pt"))
    if previous and not overwrite:
        raise ValueError(
            f"{out_dir} holds a training run ({', '.join(previous)}): continue it with --resume, choose another "
            "out_dir, or pass --overwrite to replace it"
        )
    for name in previous:
        (out_dir / name).unlink()


@dataclass
class _Run:
    """The parts of one training run and the state its checkpoints carry from step to step."""

    config: TrainConfig
    model: AGRNet
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: AGRNetLoss
    device: torch.device
    amp_dtype: torch.dtype | None
    d: Distributed
    teacher: TtaTeacher | None = None
    iteration: int = 0
    best_f1: float = -1.0

    def save(self, path: Path) -> None:
        if self.d.main:
            atomic_save(
                {
                    "config": to_dict(self.config), "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(), "iteration": self.iteration, "best_f1": self.best_f1,
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                },
                path,
            )  # fmt: skip

    def _apply_optim_settings(self) -> None:
        """After loading a checkpoint's optimizer and schedule, the current config's lr, weight decay and
        momentum apply from here on (the saved config records them: it must record what is used)."""
        optim = self.config.optim
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["weight_decay"] = optim.lr, optim.weight_decay
            if "momentum" in group:
                group["momentum"] = optim.momentum
        self.scheduler.base_lrs = [optim.lr for _ in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)

    def _model_changes(
        self, stored_config: dict[str, Any], ignore: tuple[str, ...] = ()
    ) -> dict[str, tuple[Any, Any]]:
        """Model settings of a checkpoint's config that differ from this run's: {key: (stored, now)}."""
        stored = asdict(from_dict(stored_config).resolved_model())
        current = asdict(self.config.resolved_model())
        return {k: (stored.get(k), v) for k, v in current.items() if k not in ignore and stored.get(k) != v}

    def initialise_from(self, source: str) -> None:
        """Start from the weights of ``source`` (a checkpoint path or a shipped model name): fine-tuning.
        The models must agree in everything but their initialisation (``pretrained``) and output stride
        (dilation changes no weight's shape: DeepLab's way of fine-tuning a stride-16 model at stride 8)."""
        state = load_checkpoint(_source_path(source), self.device)
        changed = self._model_changes(state["config"], ignore=("pretrained", "output_stride"))
        if changed:
            raise ValueError(f"init_from={source}: its model differs from this run's (source vs now: {changed})")
        self.model.load_state_dict(state["model"])  # fp16 shipped weights are copied into fp32 parameters

    def restore(self, path: Path) -> None:
        """Continue from a ``last.pt`` of the same model; a different model is refused, naming the changes."""
        state = load_checkpoint(path, self.device)
        changed = self._model_changes(state["config"])
        if changed:
            raise ValueError(
                f"{path} was trained with another model (stored vs now: {changed}); resume with the "
                f"stored settings or choose a new out_dir"
            )
        stored_optim = from_dict(state["config"]).optim.name
        if stored_optim != self.config.optim.name:
            raise ValueError(
                f"{path} was trained with optim.name={stored_optim}, whose state does not carry over to "
                f"{self.config.optim.name}; resume with optim.name={stored_optim} or choose a new out_dir"
            )
        if state["config"] != to_dict(self.config):
            log.warning("resuming %s with a config that differs from the stored one", path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_optim_settings()
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best_f1 = state["iteration"], state["best_f1"]
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)


def _build_run(config: TrainConfig, d: Distributed, device: torch.device, class_weights: torch.Tensor | None) -> _Run:
    """Model (SyncBatchNorm + DDP under torchrun), optimizer with poly decay, GradScaler (fp16 only), loss."""
    model = build_agrnet(config.resolved_model()).to(device)
    amp_dtype = autocast_dtype(config.amp, device)
    if amp_dtype is not None:  # tensor cores prefer NHWC under autocast
        model.to(memory_format=torch.channels_last)
    if d.world > 1 and device.type == "cuda":  # SyncBatchNorm needs GPU collectives
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, config.optim)
    total, power = config.iterations, config.optim.poly_power
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / total) ** power)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_config = config.resolved_loss()
    criterion = AGRNetLoss(
        loss_config, dis_delta=loss_config.dis_delta, dis_variant=loss_config.dis_variant,
        num_classes=model.num_classes, class_weights=class_weights,
    )  # fmt: skip
    teacher = _teacher(config, device, amp_dtype) if config.distill_from else None
    return _Run(config, model, net, optimizer, scheduler, scaler, criterion, device, amp_dtype, d, teacher)


def _source_path(source: str) -> Path:
    """A checkpoint path, or the file of a shipped model name."""
    return Path(source) if Path(source).is_file() else pretrained_path(source)


def _teacher(config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None) -> TtaTeacher:
    """The frozen model of ``distill_from``; it must parse the same classes as the run's."""
    assert config.distill_from is not None
    model, teacher_config = model_from_checkpoint(_source_path(config.distill_from), device)
    spec, teacher_spec = config.data.spec(), teacher_config.data.spec()
    if teacher_spec.class_names != spec.class_names:
        raise ValueError(f"distill_from={config.distill_from}: it parses {teacher_spec.name}, this run {spec.name}")
    return TtaTeacher(model, spec, device, amp_dtype)


def _open_train_split(config: TrainConfig, num_classes: int) -> ParsingDataset:
    data = config.data
    train_set = open_split(data.kind, data.root, "train", data.canvas, data.augmentation(), config.seed, data.classes)
    if train_set.spec.num_classes != num_classes:
        raise ValueError(f"model.num_classes={num_classes} but {data.kind} has {train_set.spec.num_classes} classes")
    return train_set


def _train_label_counts(config: TrainConfig, train_set: ParsingDataset) -> np.ndarray | None:
    """(N, Nc) class pixels per train label, read once for both options that need them (None when neither
    does). Recomputed on resume: the same labels give the same counts, so checkpoints need not carry them."""
    if not (config.data.repeat_threshold or config.loss.class_balance):
        return None
    return class_counts(train_set, skip_bad=config.data.skip_bad_samples)


def _train_loader(
    config: TrainConfig, train_set: ParsingDataset, repeats: np.ndarray | None, d: Distributed, device: torch.device
) -> tuple[torch.utils.data.DataLoader, EpochSampler, int]:
    """-> (loader of (batch, errors), its sampler, iterations per epoch)."""
    batch = config.optim.batch_size
    sampler = EpochSampler(len(train_set), config.seed, d.rank, d.world, repeats)
    iters_per_epoch = sampler.per_rank() // batch
    if iters_per_epoch == 0:
        raise ValueError(f"the train split ({len(train_set)} images) is smaller than one batch ({batch} per process)")
    loader = torch.utils.data.DataLoader(
        _Guarded(train_set), batch_size=batch, sampler=sampler, num_workers=config.data.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=False, collate_fn=_collate_readable,
    )  # fmt: skip
    return loader, sampler, iters_per_epoch


def _repeat_factors(config: TrainConfig, counts: np.ndarray | None, d: Distributed) -> np.ndarray | None:
    """Per-image repeat factors of ``data.repeat_threshold`` (None at 0) from the train label counts."""
    threshold = config.data.repeat_threshold
    if not threshold:
        return None
    assert counts is not None
    factors = repeat_factors(counts > 0, threshold)
    if d.main:
        log.info(
            "repeat-factor sampling (data.repeat_threshold=%g): %d of %d images repeated, up to %.2f times",
            threshold, int((factors > 1).sum()), len(factors), factors.max(),
        )  # fmt: skip
    return factors


def _class_weights(
    config: TrainConfig, counts: np.ndarray | None, class_names: tuple[str, ...], d: Distributed
) -> torch.Tensor | None:
    """The CE class weights of ``loss.class_balance`` (None at 0) from the train label counts."""
    power = config.loss.class_balance
    if not power:
        return None
    assert counts is not None
    weights = balanced_class_weights(torch.from_numpy(pixel_frequencies(counts.sum(axis=0))), power)
    if d.main:
        named = ", ".join(f"{n}={w:.2f}" for n, w in zip(class_names, weights.tolist(), strict=True))
        log.info("class weights (loss.class_balance=%g): %s", power, named)
    return weights


def _train_step(run: _Run, data: dict[str, torch.Tensor], epoch: int, out_dir: Path) -> dict[str, torch.Tensor]:
    """One update; a non-finite loss or gradient undoes the step (BatchNorm statistics included) and
    then stops the run (weights saved to ``nonfinite.pt``) or skips the batch (``on_nonfinite``)."""
    images = data["image"].to(run.device, non_blocking=True)
    labels = data["labels"].to(run.device, non_blocking=True)
    edges = data["edges"].to(run.device, non_blocking=True)
    if run.amp_dtype is not None:
        images = images.contiguous(memory_format=torch.channels_last)
    # BatchNorm statistics move during the forward: keep them to undo a faulty step.
    buffers = [b.detach().clone() for b in run.model.buffers()]
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        output = run.net(images)
    soft_targets = run.teacher(images) if run.teacher is not None else None
    terms = run.criterion(output, labels, edges, soft_targets)
    run.optimizer.zero_grad(set_to_none=True)
    fault = _step(terms["total"], run.model, run.optimizer, run.scaler)
    if fault is not None:
        for buffer, saved in zip(run.model.buffers(), buffers, strict=True):
            buffer.copy_(saved)
        described = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        message = f"non-finite {fault} at iteration {run.iteration} (epoch {epoch}): {described}"
        if run.config.on_nonfinite == "stop":
            run.save(out_dir / "nonfinite.pt")
            raise NonFiniteLossError(f"{message}; weights before this step saved to {out_dir / 'nonfinite.pt'}")
        log.warning("skipping the step: %s", message)
    return terms


class _Progress:
    """The progress bar and ``log.csv`` (iteration, epoch, lr, images/s, loss terms), on the main rank."""

    def __init__(self, run: _Run, out_dir: Path, show_bar: bool) -> None:
        self.run, self.main = run, run.d.main
        self.file = open(out_dir / "log.csv", "a", newline="") if self.main else None
        self.writer = csv.writer(self.file) if self.file else None
        if self.writer and self.file and self.file.tell() == 0:
            self.writer.writerow(["iteration", "epoch", "lr", "images_per_s", "loss_terms"])
        total = run.config.iterations
        self.bar = tqdm(
            total=total, initial=run.iteration, disable=not (show_bar and self.main), desc="train", unit="it"
        )
        self.tick, self.seen = time.perf_counter(), 0

    def step(self, terms: dict[str, torch.Tensor] | None, images: int, epoch: int) -> None:
        """Called after every iteration; logs every ``log_every`` and at the last."""
        run = self.run
        self.seen += images
        self.bar.update()
        if terms is None or not _due(run.iteration, run.config.log_every, run.config.iterations):
            return
        speed = self.seen / (time.perf_counter() - self.tick)
        self.tick, self.seen = time.perf_counter(), 0
        values = {k: round(v.item(), 4) for k, v in terms.items()}
        self.bar.set_postfix(loss=values["total"], img_s=f"{speed:.1f}")
        if self.writer and self.file:
            lr = run.scheduler.get_last_lr()[0]
            self.writer.writerow([run.iteration, epoch, f"{lr:.6g}", f"{speed:.2f}", values])
            self.file.flush()

    def write(self, line: str) -> None:
        if self.main:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()


def _validate_and_keep_best(run: _Run, val_set: ParsingDataset, best_path: Path, progress: _Progress) -> None:
    f1 = validate(run.model, val_set, run.device, run.amp_dtype, run.d)
    run.net.train()
    if f1 > run.best_f1:
        run.best_f1 = f1
        run.save(best_path)
    progress.write(f"iteration {run.iteration}: val mean F1 {100 * f1:.2f} (best {100 * run.best_f1:.2f})")


def _due(iteration: int, every: int, total: int) -> bool:
    return iteration % every == 0 or iteration == total


def _train(config: TrainConfig, resume: bool, progress: bool, d: Distributed, device: torch.device) -> Path:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out_dir = Path(config.out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    train_set = _open_train_split(config, config.resolved_model().num_classes)
    counts = _train_label_counts(config, train_set)
    loader, sampler, iters_per_epoch = _train_loader(config, train_set, _repeat_factors(config, counts, d), d, device)
    run = _build_run(config, d, device, _class_weights(config, counts, train_set.spec.class_names, d))
    val_set = _optional_split(config, "val")
    if resume:
        run.restore(last_path)
        if d.main:
            log.info("resumed from %s at iteration %d", last_path, run.iteration)
    elif config.init_from:
        run.initialise_from(config.init_from)
    if d.main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    total, bad_samples = config.iterations, set[str]()
    report = _Progress(run, out_dir, progress)
    run.net.train()
    with _StopFlag() as stop, contextlib.closing(report):
        while run.iteration < total and stop.requested is None:
            epoch, offset = divmod(run.iteration, iters_per_epoch)
            sampler.set_epoch(epoch, offset * config.optim.batch_size)
            for data, errors in loader:
                bad_samples.update(_bad_samples(errors, config, run.iteration))
                count = 0 if data is None else len(data["index"])
                stepped = data is not None and _can_step(count, device)
                terms = _train_step(run, data, epoch, out_dir) if stepped else None
                run.scheduler.step()
                run.iteration += 1
                report.step(terms, count * d.world, epoch)
                if val_set is not None and _due(run.iteration, config.val_every, total):
                    _validate_and_keep_best(run, val_set, best_path, report)
                if _due(run.iteration, config.checkpoint_every, total) or stop.requested:
                    run.save(last_path)
                if config.snapshot_every and run.iteration % config.snapshot_every == 0:
                    run.save(out_dir / f"snapshot_{run.iteration:06d}.pt")
                if run.iteration >= total or stop.requested:
                    break
    _report_end(run, bad_samples, stop.requested, last_path)
    return last_path


def _report_end(run: _Run, bad_samples: set[str], stopped_by: str | None, last_path: Path) -> None:
    if bad_samples and run.d.main:
        log.warning("skipped %d bad sample(s) (data.skip_bad_samples=true):\n  %s", len(bad_samples),
                    "\n  ".join(sorted(bad_samples)))  # fmt: skip
    if stopped_by and run.d.main:
        log.warning("%s: saved %s at iteration %d; continue with --resume", stopped_by, last_path, run.iteration)
    if run.d.world > 1:
        dist.destroy_process_group()


class _Guarded(torch.utils.data.Dataset):
    """Training samples that cannot be read come back as their one-line error: raised in a
    DataLoader worker, the error would reach the user wrapped in the worker's whole traceback."""

    def __init__(self, dataset: ParsingDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | str:
        try:
            return self.dataset[key]
        except DatasetError as error:
            return str(error)


def _collate_readable(items: list[dict[str, Any] | str]) -> tuple[dict[str, Any] | None, list[str]]:
    """-> (the readable samples as one batch, or None when there are none; the errors of the rest)."""
    good = [item for item in items if not isinstance(item, str)]
    errors = [item for item in items if isinstance(item, str)]
    return (default_collate(good) if good else None), errors


def _bad_samples(errors: list[str], config: TrainConfig, iteration: int) -> list[str]:
    """The errors to count and list at the end; stops the run unless ``data.skip_bad_samples``."""
    if errors and not config.data.skip_bad_samples:
        data = config.data
        classes = f" --classes {data.classes}" if data.classes else ""
        raise DatasetError(
            f"{errors[0]} (at iteration {iteration}); list every problem with `agrnet check-data {data.root} "
            f"--kind {data.kind}{classes}`, or set data.skip_bad_samples=true to skip such samples"
        )
    return errors


def _can_step(count: int, device: torch.device) -> bool:
    """BatchNorm needs two samples: a batch left with fewer by skipped samples is skipped. Under DDP
    every rank must agree, or the ranks that go on to backward wait forever for the others."""
    short = torch.tensor([float(count < 2)], device=device)
    if dist.is_initialized():
        dist.all_reduce(short)
    return not short.item()


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def _step(
    loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> str | None:
    """Backward and update; returns what was non-finite ("loss" or "gradient") instead of stepping.

    Under fp16 the GradScaler owns overflow handling: it skips the update and lowers its scale.
    """
    # Under DDP every rank must agree, or the ranks that go on to backward wait forever for the others.
    bad_loss = (~torch.isfinite(loss.detach())).float()
    if dist.is_initialized():
        dist.all_reduce(bad_loss)
    if bad_loss.item():
        return "loss"
    scaler.scale(loss).backward()
    if not scaler.is_enabled():
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # the norm only: no clipping
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return "gradient"
    scaler.step(optimizer)
    scaler.update()
    return None


def _optional_split(config: TrainConfig, split: Split) -> ParsingDataset | None:
    try:
        return open_split(config.data.kind, config.data.root, split, config.data.canvas, classes=config.data.classes)
    except ValueError as error:
        log.warning("no %s split (%s): model selection falls back to the last checkpoint", split, error)
        return None


def validate(
    model: AGRNet,
    dataset: ParsingDataset,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    d: Distributed,
) -> float:
    """Mean F1 (without background) on the val split; every rank computes it on the main rank's view."""
    f1 = torch.zeros(1, device=device)
    if d.main:
        summary, _ = evaluate_dataset(model, dataset, device, amp_dtype=amp_dtype, progress=False)
        value = summary["mean_f1"]
        f1[0] = value if isinstance(value, float) and math.isfinite(value) else 0.0
    if d.world > 1:
        dist.broadcast(f1, 0)
    return float(f1.item())
