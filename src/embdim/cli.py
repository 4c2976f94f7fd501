"""The ``embdim`` command line: prepare, run, demo (and the later stages as they land)."""

from __future__ import annotations

import argparse
import sys

from embdim import __version__
from embdim.errors import EmbdimError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embdim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"embdim {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from embdim.data import prepare_cli

    prepare_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except EmbdimError as e:
        print(f"embdim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("embdim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
