"""The ``embdim prepare`` sub-command: argument parsing around :func:`embdim.data.prepare.prepare`."""

from __future__ import annotations

import argparse
import sys

from embdim.data.readers import FORMATS

EPILOG = """\
formats:
  criteo     Criteo TSV files (label, I1..I13, C1..C26), read in the order given
  avazu      Avazu CSV files (header id,click,hour,...)
  movielens  a MovieLens folder (ml-1m, ml-100k, ml-latest/ml-20m), or its files
  csv        CSV with a header; name --label and --categorical/--numeric columns
  parquet    Parquet; same options as csv

examples:
  embdim prepare criteo train.txt --out prepared/criteo
  embdim prepare movielens data/ml-1m --out prepared/ml-1m
  embdim prepare csv adult.csv --out prepared/adult --label income --positive '>50K' \\
      --na-values '?' --categorical workclass,education,occupation \\
      --numeric age,hours-per-week
See docs/data.md for the id conventions and the folder layout."""


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not numbers: {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError("give three ratios: train,valid,test")
    return values  # type: ignore[return-value]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` sub-command to the ``embdim`` parser."""
    from embdim.data.preparation import DEFAULT_CHUNK_ROWS

    p = subparsers.add_parser(
        "prepare", help="raw data files -> a prepared dataset folder",
        description="Prepare raw data files into a dataset folder (schema.json, int32 id arrays\n"
                    "per split, vocabulary.parquet), streaming with bounded memory.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=FORMATS, metavar="FORMAT", help=", ".join(FORMATS))
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files (or a MovieLens folder)")
    p.add_argument("--out", required=True, metavar="DIR", help="the dataset folder to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR when it holds a dataset written by embdim prepare")

    g = p.add_argument_group("vocabulary and splits")
    g.add_argument("--min-count", type=int, default=10, metavar="N",
                   help="values seen fewer than N times in train share the OOV id 0 (default 10)")
    g.add_argument("--split", choices=("random", "time"), default="random",
                   help="random (with --seed; the papers' protocol) or time (default random)")
    g.add_argument("--split-ratios", type=_ratios, default=(0.8, 0.1, 0.1), metavar="T,V,T",
                   help="train,valid,test shares (default 0.8,0.1,0.1)")
    g.add_argument("--seed", type=int, default=2022, help="seed of the random split (2022)")
    g.add_argument("--time-column", metavar="COL",
                   help="csv/parquet: the time column of --split time (default: row order; "
                        "avazu uses hour, movielens timestamp, criteo row order)")

    g = p.add_argument_group("bad input")
    g.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="error: stop at the first bad row, naming file/line/column; skip: drop "
                        "bad rows and report how many (default error)")
    g.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, metavar="N",
                   help=f"rows parsed at a time (default {DEFAULT_CHUNK_ROWS}; memory vs speed; "
                        "the result does not depend on it)")

    g = p.add_argument_group("csv / parquet")
    g.add_argument("--label", metavar="COL", help="the label column")
    g.add_argument("--categorical", type=_list, metavar="COL,...", help="categorical columns")
    g.add_argument("--numeric", type=_list, metavar="COL,...",
                   help="numeric columns (bucketed into categorical fields)")
    g.add_argument("--positive", action="append", metavar="VALUE",
                   help="label value(s) meaning 1 (others are 0); repeatable. Without it the "
                        "label must be 0/1")
    g.add_argument("--na-values", action="append", metavar="VALUE",
                   help="string(s) read as missing, e.g. '?'; repeatable")
    g.add_argument("--numeric-bucketing", choices=("quantile", "log2"),
                   help="quantile: training-split quantile buckets (default); log2: the Criteo "
                        "floor(ln(v)^2) recipe")
    g.add_argument("--numeric-buckets", type=int, metavar="N",
                   help="number of quantile buckets (default 10)")
    g.add_argument("--separator", metavar="CHAR", help="csv field separator (default ',')")

    g = p.add_argument_group("movielens")
    g.add_argument("--rating-threshold", type=float, metavar="R",
                   help="label = rating >= R (default 4)")
    g.add_argument("--genres", choices=("all", "first"),
                   help="all: the genre list as one value (default); first: the first genre")
    p.set_defaults(handler=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    """Handler of ``embdim prepare``: prepare, then print a one-screen summary."""
    from embdim.data.preparation import prepare

    quiet = bool(getattr(args, "quiet", False))
    schema = prepare(
        args.format, args.inputs, args.out, min_count=args.min_count, split=args.split,
        split_ratios=args.split_ratios, seed=args.seed, on_bad_row=args.on_bad_row,
        chunk_rows=args.chunk_rows, quiet=quiet, overwrite=args.overwrite,
        time_column=args.time_column, label=args.label, categorical=args.categorical,
        numeric=args.numeric, positive=args.positive, na_values=args.na_values,
        numeric_buckets=args.numeric_buckets, numeric_bucketing=args.numeric_bucketing,
        separator=args.separator, rating_threshold=args.rating_threshold, genres=args.genres)
    if not quiet:
        rows = ", ".join(f"{s} {n:,}" for s, n in schema.splits.items())
        vocab = sum(schema.vocab_sizes)
        bad = schema.options.get("bad_rows", 0)
        print(f"{args.out}: {schema.num_fields} fields, {vocab:,} ids in all; rows: {rows}"
              + (f"; skipped {bad:,} bad rows" if bad else ""), file=sys.stderr)
    return 0
