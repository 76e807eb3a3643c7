"""The ``agrnet`` command line: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

import torch

from agrnet.build import ABLATIONS, ModelConfig, ablation, build_agrnet
from agrnet.profiling import format_table, profile_model


def _cmd_profile(args: argparse.Namespace) -> int:
    config = ablation(
        args.variant,
        ModelConfig(
            num_classes=args.num_classes, backbone=args.backbone, top_k=args.top_k, channels=args.channels
        ),
    )
    with torch.device("meta"):
        model = build_agrnet(config)
    table = profile_model(model, (args.image_size, args.image_size), args.batch_size)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in {"func", "json", "command"}}
        print(json.dumps({"settings": settings, "parts": table}, indent=2))
    else:
        print(
            format_table(
                table, f"{args.variant} {args.backbone} @ {args.image_size}, {args.num_classes} classes"
            )
        )
    return 0


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="parameters and FLOPs per module (Table I(d))")
    p.add_argument(
        "--backbone", default="resnet101", choices=["resnet18", "resnet34", "resnet50", "resnet101"]
    )
    p.add_argument("--image-size", type=int, default=473)
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--channels", type=int, default=256, help="graph feature width C")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--variant", default="full", choices=sorted(ABLATIONS))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_profile)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_profile]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agrnet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"agrnet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
