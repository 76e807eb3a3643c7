"""The ``agrnet`` command line: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from agrnet.build import ABLATIONS, ModelConfig, ablation, build_agrnet
from agrnet.data.classes import LABEL_SPECS
from agrnet.data.datasets import READERS
from agrnet.devices import set_threads
from agrnet.modeling.backbone import BACKBONES
from agrnet.profiling import format_table, profile_model

if TYPE_CHECKING:
    from agrnet.inference import Parser


def _cmd_profile(args: argparse.Namespace) -> int:
    settings = {"num_classes": args.num_classes, "backbone": args.backbone, "top_k": args.top_k,
                "output_stride": args.output_stride}  # fmt: skip
    if args.channels is not None:  # the heads' widths scale together, as in the shipped configs
        settings |= {"channels": args.channels, "context_channels": 2 * args.channels, "edge_channels": args.channels}
    config = ablation(args.variant, ModelConfig(**settings))
    with torch.device("meta"):
        model = build_agrnet(config)
    table = profile_model(model, (args.image_size, args.image_size), args.batch_size)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in {"func", "json", "command"}}
        print(json.dumps({"settings": settings, "parts": table}, indent=2))
    else:
        print(format_table(table, f"{args.variant} {args.backbone} @ {args.image_size}, {args.num_classes} classes"))
    return 0


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="parameters and FLOPs per module (Table I(d))")
    p.add_argument("--backbone", default="resnet101", choices=sorted(BACKBONES))
    p.add_argument("--output-stride", type=int, default=8, choices=[8, 16], help="8 (the paper); 16: mobilenet_v2")
    p.add_argument("--image-size", type=int, default=473)
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--channels", type=int, help="graph feature width C (default 256, the paper's; the shipped "
                   "models use 96, with the context width 2C and the edge width C)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--variant", default="full", choices=sorted(ABLATIONS))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_profile)


def _cmd_synth(args: argparse.Namespace) -> int:
    from agrnet.data.synth import generate

    counts = generate(args.out, args.num, args.size, args.seed)
    print(f"wrote {sum(counts.values())} synthetic faces to {args.out}: {counts}")
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate the procedural face-parsing set (LaPa layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=600)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)


def _cmd_train(args: argparse.Namespace) -> int:
    from agrnet.config import load_config
    from agrnet.train import train

    config = load_config(args.config, args.overrides)
    path = train(config, resume=args.resume, overwrite=args.overwrite)
    print(f"checkpoint: {path}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train AGRNet from a config (+ key=value overrides)")
    p.add_argument("--config", required=True, help="a YAML path or a shipped name: lapa, helen, ...")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in OUT_DIR (default: refuse)")
    p.add_argument("overrides", nargs="*", help="e.g. optim.lr=0.01 data.root=/data/LaPa")
    p.set_defaults(func=_cmd_train)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from agrnet.checkpoints import model_from_checkpoint
    from agrnet.data.classes import HELEN_GROUPS, LABEL_MAPS, label_map_lut
    from agrnet.data.datasets import open_split
    from agrnet.devices import resolve_device
    from agrnet.evaluate import evaluate_dataset
    from agrnet.metrics import format_results, merged_f1
    from agrnet.outputs import prepare_out_file

    json_path = prepare_out_file(args.json) if args.json else None  # before the evaluation, not after
    device = resolve_device(args.device)
    model, config = model_from_checkpoint(args.checkpoint, device)
    kind = args.kind or config.data.kind
    lut = None
    model_spec = None
    if args.label_map:
        lut = label_map_lut(args.label_map)
        source, kind = LABEL_MAPS[args.label_map][0], LABEL_MAPS[args.label_map][1]
        model_spec = LABEL_SPECS[source]
    data = config.data
    dataset = open_split(kind, args.data or data.root, args.split, data.canvas, classes=data.classes)
    summary, matrix = evaluate_dataset(
        model.to(device), dataset, device, flip=args.flip, label_lut=lut, model_spec=model_spec,
        batch_size=args.batch_size, workers=args.workers, scales=args.scales,
    )  # fmt: skip
    skipped = summary["skipped"]
    if summary["images"] == 0:
        print(f"agrnet evaluate: error: none of the {len(dataset)} images could be scored:", file=sys.stderr)
        for reason in skipped:
            print(f"  SKIPPED {reason}", file=sys.stderr)
        return 1
    helen = merged_f1(matrix, HELEN_GROUPS) if kind in ("helen", "lapa", "synthetic") else None
    result = {"checkpoint": args.checkpoint, "data": str(dataset.samples[0].image.parents[2]), "split": args.split,
              "flip": args.flip, "scales": args.scales, "label_map": args.label_map, "summary": summary,
              "helen_groups": helen, "confusion_matrix": matrix.tolist()}  # fmt: skip
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    print(format_results(summary, dataset.spec, helen))
    print(f"scored {summary['images']} of {len(dataset)} images; {len(skipped)} skipped")
    for reason in skipped:
        print(f"  SKIPPED {reason}")
    return 1 if skipped else 0


def _at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (the same rule as the config file's) and <= ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def _positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a dataset split (Table II style)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="dataset directory (default: the one in the checkpoint's config)")
    p.add_argument("--kind", help="dataset kind (default: the checkpoint's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    _add_scales(p)
    p.add_argument("--label-map", help="cross-dataset evaluation, e.g. celebamask_hq_to_helen")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_at_least(1), default=4)
    p.add_argument("--workers", type=_at_least(0), default=2)
    p.add_argument("--json", help="also write the full result (per class, confusion matrix) to this file")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_demo(args: argparse.Namespace) -> int:
    from agrnet.demo_photos import run_photo_demo

    summary = run_photo_demo(args.out)
    for name, photo in summary["photos"].items():
        print(f"{name}: {len(photo['faces'])} face(s), {photo['seconds']:.2f} s -> {args.out}/{name}_overlay.png")
    person = summary["person"]
    print(f"astronaut through the human parser: {person['seconds']:.2f} s -> {args.out}/person_astronaut_overlay.png")
    print(f"wrote {args.out}/summary.json")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: the shipped model parses public-domain photos (no downloads)")
    p.add_argument("--out", default="demo")
    p.set_defaults(func=_cmd_demo)


def _cmd_train_demo(args: argparse.Namespace) -> int:
    from agrnet.demo import run_demo

    report = run_demo(args.out, args.overrides, compare_baseline=args.compare_baseline)
    for name, run in report["runs"].items():
        test = run["test"]
        print(f"{name}: held-out test mean F1 {100 * test['mean_f1']:.2f}, mean IoU {100 * test['mean_iou']:.2f} "
              f"({run['train_seconds']} s training)")  # fmt: skip
    print(f"wrote {args.out}/metrics.json, {args.out}/results.md and {args.out}/overlays/")
    return 0


def _add_train_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-demo", help="synthetic faces, short CPU training, held-out evaluation")
    p.add_argument("--out", default="train_demo")
    p.add_argument("--compare-baseline", action="store_true", help="also train the Table I baseline")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. seed=1 iterations=400")
    p.set_defaults(func=_cmd_train_demo)


def _split_checkpoint(positionals: list[str]) -> tuple[str | None, list[str]]:
    """``[CHECKPOINT] REST...``: a leading .pt/.onnx names the model; without one, the shipped model."""
    if positionals and Path(positionals[0]).suffix in (".pt", ".pth", ".onnx"):
        return positionals[0], positionals[1:]
    return None, positionals


def _load_parser(
    checkpoint: str | None,
    device: str,
    model: str | None = None,
    scales: tuple[float, ...] = (1.0,),
    face_zoom: tuple[float, ...] | None = None,
) -> Parser:
    """A checkpoint or .onnx file, or the shipped model ``model`` (default: the face parser); not both.
    ``face_zoom``: the parser's wide crops with ``detect_faces`` (None: its default; checked by Parser)."""
    from agrnet.inference import Parser

    _check_one_model(checkpoint, model)
    if checkpoint is None:
        parser = Parser.from_pretrained(model, device=device, scales=scales)
    elif checkpoint.endswith(".onnx"):
        if scales != (1.0,):
            raise ValueError(f"--scales needs a PyTorch checkpoint or shipped model: {checkpoint} has a fixed canvas")
        parser = Parser.from_onnx(checkpoint)
    else:
        parser = Parser.from_checkpoint(checkpoint, device=device, scales=scales)
    if face_zoom is not None:
        parser.face_zoom = face_zoom
    return parser


def _add_scales(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scales", type=_scale, nargs="+", default=(1.0,), metavar="F",
                   help="multi-scale test-time augmentation: canvas size factors whose class probabilities are "
                   "averaged, e.g. 0.833 1 1.167 (about 3x the time; default: 1, the canvas alone)")  # fmt: skip


def _add_face_zoom(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument("--face-zoom", type=float, nargs="+", metavar="Z",
                   help=f"{when}each wide crop shows Z times the training framing around a face (default 1.5; "
                   "1: the framing alone; e.g. 2, or 1.5 2.5 for a third, wider crop: long hair, full-body "
                   "photos)")  # fmt: skip


def _scale(text: str) -> float:
    """An argparse type: a canvas size factor from agrnet.tta's MIN_SCALE to MAX_SCALE."""
    from agrnet.tta import MAX_SCALE, MIN_SCALE

    value = _positive_number(text)
    if not MIN_SCALE <= value <= MAX_SCALE:
        raise argparse.ArgumentTypeError(f"must be from {MIN_SCALE} to {MAX_SCALE}, got {text}")
    return value


def _check_one_model(checkpoint: str | None, model: str | None) -> None:
    if checkpoint is not None and model is not None:
        raise ValueError(f"give a checkpoint ({checkpoint}) or --model {model}, not both")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME", help="a shipped model by name (agrnet models lists them; "
                   "default: the face parser)")  # fmt: skip


def _cmd_models(args: argparse.Namespace) -> int:
    from agrnet.pretrained import describe_models

    print(describe_models())
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped models: classes, licence, scores")
    p.set_defaults(func=_cmd_models)


def _cmd_predict(args: argparse.Namespace) -> int:
    try:
        return _predict(args)
    except KeyboardInterrupt:  # during listing or model loading; the runs themselves report what they did
        print("agrnet predict: interrupted before any photo was parsed", file=sys.stderr)
        return 130


def _predict(args: argparse.Namespace) -> int:
    import functools
    import os

    from agrnet.batch import RayOptions, list_tasks, parse_shard, predict_tree
    from agrnet.inference import wide_zooms
    from agrnet.outputs import prepare_out_dir
    from agrnet.predict import OUTPUT_KINDS, Settings, model_identity, predict_paths

    checkpoint, inputs = _split_checkpoint(args.inputs)
    if not inputs and args.manifest is None:
        raise ValueError("give at least one image, directory or video after the checkpoint, or --manifest FILE")
    outputs = tuple(dict.fromkeys(args.outputs.split(",")))
    if not set(outputs) <= set(OUTPUT_KINDS):
        raise ValueError(f"--outputs takes a comma-separated subset of {','.join(OUTPUT_KINDS)}, got {args.outputs!r}")
    shard = parse_shard(args.shard)
    scale = args.recursive or args.manifest is not None or shard[1] > 1 or args.engine == "ray"
    if args.layout == "flat" and scale:
        raise ValueError("--recursive, --manifest, --shard and --engine ray write the tree layout; drop --layout flat")
    if args.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--engine ray needs Ray: pip install 'agrnet[ray]'") from None
    _check_one_model(checkpoint, args.model)  # before any listing or loading
    face_zoom = None if args.face_zoom is None else tuple(args.face_zoom)
    if face_zoom is not None and not args.detect_faces:
        raise ValueError("--face-zoom sets the crops of --detect-faces; add --detect-faces or drop --face-zoom")
    if face_zoom is not None:
        wide_zooms(face_zoom)  # before any listing or loading
    if args.threads:
        set_threads(args.threads)
    if not (scale or args.layout == "tree"):
        parser = _load_parser(checkpoint, args.device, args.model, tuple(args.scales), face_zoom)
        report = predict_paths(parser, inputs, args.out, args.detect_faces, args.flip, args.max_pixels, outputs,
                               args.batch_size)  # fmt: skip
        print(report.summary())
        return 130 if report.interrupted else 1 if report.failures else 0
    out = prepare_out_dir(args.out)
    tasks = list_tasks(inputs, str(out), args.recursive, args.manifest, args.manifest_column)
    make_parser = functools.partial(_load_parser, checkpoint, args.device, args.model, tuple(args.scales), face_zoom)
    parser = make_parser()  # a model that does not load is a usage error before any work
    identity = model_identity(checkpoint, args.model)
    settings = Settings(str(out), outputs, args.detect_faces, args.flip, args.max_pixels, *identity)
    options = None
    if args.engine == "ray":
        options = RayOptions(args.address, args.workers, args.cpus_per_worker, args.gpus_per_worker)
    if "RANK" in os.environ and args.shard is None and shard[1] > 1:
        print(f"note: shard {shard[0]}/{shard[1]} from RANK/WORLD_SIZE")
    report = predict_tree(make_parser if options else lambda: parser, tasks, settings, shard, args.batch_size, options)
    print(report.summary())
    return 130 if report.interrupted else 1 if report.counts["failed"] else 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="parse images, directories and videos; writes labels, masks, overlays")
    p.add_argument("inputs", nargs="*", metavar="[CHECKPOINT] INPUT",
                   help="optional checkpoint (.pt) or exported .onnx (default: the shipped model), then image "
                   "files, directories or videos")  # fmt: skip
    p.add_argument("--out", required=True)
    p.add_argument("--detect-faces", action="store_true",
                   help="find faces (MTCNN), align, parse and paste back each; without it the input is one face crop")
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    _add_scales(p)
    _add_face_zoom(p, "with --detect-faces: ")
    p.add_argument("--device", default="auto")
    _add_model(p)
    _add_max_pixels(p)
    p.add_argument("--outputs", default=",".join(("labels", "mask", "overlay")),
                   help="comma-separated: labels (index PNG), mask (colours), overlay (default: all three)")
    p.add_argument("--batch-size", type=_at_least(1), default=8, help="photos per network call (default 8)")
    p.add_argument("--threads", type=_at_least(1), help="torch and OpenCV threads (default: theirs)")
    scale = p.add_argument_group("at scale (tree layout: outputs mirror the inputs' paths; results.parquet; resume)")
    scale.add_argument("--recursive", action="store_true", help="take the image and video files of subfolders too")
    scale.add_argument("--manifest", metavar="FILE",
                       help="inputs listed in FILE: one path per line, or a column of a .csv or .parquet file")
    scale.add_argument("--manifest-column", metavar="NAME", help="path column of a CSV/Parquet manifest (default path)")
    scale.add_argument("--layout", choices=["flat", "tree"],
                       help="flat: outputs side by side, no table (default for plain files and folders); tree: above")
    scale.add_argument("--shard", metavar="R/N",
                       help="parse input i only if i mod N == R (default: RANK/WORLD_SIZE when set, as torchrun does)")
    scale.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="ray: Ray Data with a pool of parser actors (pip install 'agrnet[ray]')")
    scale.add_argument("--address", help="Ray cluster address (default: a local Ray on this machine)")
    scale.add_argument("--workers", type=_at_least(1), default=1, help="Ray parser actors (default 1)")
    scale.add_argument("--cpus-per-worker", type=_at_least(1), default=1, help="CPUs (and torch threads) per actor")
    scale.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor, e.g. 1 or 0.5 (default 0)")
    p.set_defaults(func=_cmd_predict)


def _add_max_pixels(p: argparse.ArgumentParser) -> None:
    from agrnet.images import DEFAULT_MAX_PIXELS

    p.add_argument("--max-pixels", type=_at_least(1), default=DEFAULT_MAX_PIXELS,
                   help=f"pixel budget per image, checked before decoding (default {DEFAULT_MAX_PIXELS})")  # fmt: skip


def _cmd_export(args: argparse.Namespace) -> int:
    from agrnet.checkpoints import model_from_checkpoint
    from agrnet.export import export_model
    from agrnet.pretrained import PRETRAINED, load_pretrained

    model, config = load_pretrained(args.checkpoint) if args.checkpoint in PRETRAINED else model_from_checkpoint(
        args.checkpoint
    )
    report = export_model(model, args.out, config.data.canvas, config.data.spec().name, args.format)
    print(json.dumps(report, indent=2))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to ONNX or TorchScript with a parity check (report on stdout)")
    p.add_argument("checkpoint", help="a training checkpoint (.pt) or a shipped model's name (agrnet models)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export)


def _cmd_visualize(args: argparse.Namespace) -> int:

    from agrnet.checkpoints import model_from_checkpoint
    from agrnet.data.datasets import load_image
    from agrnet.pretrained import load_pretrained
    from agrnet.viz import visualize

    checkpoint, images = _split_checkpoint(args.inputs)
    if len(images) != 1:
        raise ValueError("give one image (after an optional checkpoint)")
    _check_one_model(checkpoint, args.model)
    model, config = model_from_checkpoint(checkpoint) if checkpoint else load_pretrained(args.model)
    image = load_image(Path(images[0]), args.max_pixels)
    for path in visualize(model, config.data.spec(), image, config.data.canvas, args.out):
        print(path)
    return 0


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="vertices (Fig. 8), adjacency (Fig. 7), projection maps (Fig. 11)")
    p.add_argument("inputs", nargs="+", metavar="[CHECKPOINT] IMAGE",
                   help="optional checkpoint (default: the shipped model), then an aligned face image")  # fmt: skip
    p.add_argument("--out", required=True)
    _add_model(p)
    _add_max_pixels(p)
    p.set_defaults(func=_cmd_visualize)


def _cmd_serve(args: argparse.Namespace) -> int:
    from agrnet.images import DEFAULT_MAX_PIXELS
    from agrnet.serve import Limits, make_server

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    limits = Limits(max_upload_bytes=max(1, round(args.max_upload_mb * 2**20)), max_pixels=max_pixels)
    face_zoom = None if args.face_zoom is None else tuple(args.face_zoom)
    parser = _load_parser(args.checkpoint, args.device, args.model, tuple(args.scales), face_zoom)
    server = make_server(parser, args.host, args.port, limits)
    host, port = server.server_address[:2]
    print(f"serving on http://{host}:{port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web demo: upload a photo, see the parsing overlay")
    p.add_argument("checkpoint", nargs="?", help="a training checkpoint (.pt) or exported .onnx (default: shipped)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=_at_least(0, 65535), default=8000, help="0 picks a free port")
    p.add_argument("--device", default="auto")
    _add_model(p)
    _add_scales(p)
    _add_face_zoom(p, "for requests with detect_faces: ")
    p.add_argument("--max-upload-mb", type=_positive_number, default=16.0, help="larger uploads get 413 (default 16)")
    p.add_argument("--max-pixels", type=_at_least(1),
                   help="pixel budget per image, checked before decoding (default 40e6)")  # fmt: skip
    p.set_defaults(func=_cmd_serve)


def _cmd_check_data(args: argparse.Namespace) -> int:
    from agrnet.data.datasets import check_dataset

    problems = check_dataset(args.kind, args.data, tuple(args.splits), args.classes)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) found in {args.data}")
    return 1 if problems else 0


def _add_check_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="read every sample of a dataset and list all problems")
    p.add_argument("data")
    p.add_argument("--kind", required=True, choices=sorted(READERS))
    p.add_argument("--classes", choices=sorted(LABEL_SPECS), help="label spec of a --kind folder dataset")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"], choices=["train", "val", "test"])
    p.set_defaults(func=_cmd_check_data)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo,
    _add_models,
    _add_train_demo,
    _add_synth,
    _add_train,
    _add_evaluate,
    _add_check_data,
    _add_predict,
    _add_visualize,
    _add_export,
    _add_serve,
    _add_profile,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agrnet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"agrnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, I/O error: the work could not finish
        print(f"agrnet {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
