"""The ``embdim export`` command: one parser, one handler per format.

* ``torchrec``: the plan's ``EmbeddingBagConfig``s as JSON (+ ``--weights``), :mod:`embdim.export.torchrec`;
* ``onnx`` / ``torch-export``: the retrained model for serving, :mod:`embdim.export.serving`.
"""

from __future__ import annotations

import argparse

FORMATS = ("torchrec", "onnx", "torch-export")


def register(sub) -> None:
    """Add ``embdim export`` to the CLI's subparsers."""
    p = sub.add_parser(
        "export", help="export a run for serving (ONNX, torch.export) or a plan for TorchRec",
        description="--format onnx | torch-export: the run's retrained model, ids [batch, fields] int64 "
                    "-> probability [batch], with a JSON sidecar for encoding requests "
                    "(docs/serving.md). --format torchrec: the plan's EmbeddingBagConfigs as JSON, "
                    "with --weights also the trained tables (docs/torchrec.md).")
    p.add_argument("source", metavar="RUN_OR_PLAN",
                   help="a run folder (a plan.json is enough for --format torchrec)")
    p.add_argument("--format", choices=FORMATS, default="torchrec",
                   help="torchrec (default), onnx or torch-export")
    p.add_argument("--out", metavar="FILE",
                   help="output file. onnx / torch-export: default RUN/export/model.onnx or model.pt2, "
                        "the sidecar is FILE.json; torchrec: required, the JSON of table configs")
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="round each table's width up to a multiple of N (torchrec default 4: FBGEMM's "
                        "sharded kernels need it; onnx / torch-export default 1; the added columns are "
                        "zero, the outputs unchanged)")
    p.add_argument("--weights", action="store_true",
                   help="torchrec: also write the run's trained tables (checkpoints/best.pt) beside "
                        "FILE, as FILE with the suffix .pt")
    p.add_argument("--data", metavar="DIR",
                   help="prepared dataset to check the plan against and take the vocabulary from "
                        "(default: the run's data.path, when it exists)")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    if args.format == "torchrec":
        from embdim.export.torchrec import cli_export
    else:
        from embdim.export.serving import cli_export
    return cli_export(args)
