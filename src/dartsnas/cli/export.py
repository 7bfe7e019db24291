"""``dartsnas export RUN --format onnx|torchscript|state_dict --out FILE`` (the work is in dartsnas.export)."""

from __future__ import annotations

import argparse

from .common import positive_int


def add_parser(sub) -> None:
    from ..export import FORMATS

    p = sub.add_parser(
        "export",
        help="export a trained run's network (TorchScript, ONNX or a plain state_dict)",
        description="Write a training run's network with its trained weights for use outside "
        "dartsnas. CNNs: images (N, C, H, W) -> logits; recurrent: tokens (T, N) and "
        "hidden (N, n) -> log-probabilities and the next hidden state.",
    )
    p.add_argument("run", metavar="RUN", help="a training run folder")
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="torchscript (torch.jit.load), onnx (needs the 'onnx' extra), or state_dict "
        "(torch.load(FILE, weights_only=True))",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument(
        "--seq-len",
        dest="seq_len",
        type=positive_int,
        default=1,
        help="recurrent runs: time steps per call of the exported model (default 1)",
    )
    p.add_argument(
        "--image-size",
        dest="image_size",
        type=positive_int,
        help="CNN runs: input resolution to export for (default: the run's dataset's)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_model

    out = export_model(args.run, args.format, args.out, seq_len=args.seq_len, image_size=args.image_size)
    print(f"wrote {out}")
    return 0


PARSERS = [add_parser]
