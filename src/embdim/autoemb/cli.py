"""``embdim stream ...``: prepare interaction streams, run AutoEmb and its baselines, report, demo."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  embdim stream prepare movielens ../shared/data/ml-latest-small --out prepared/mls-stream
  embdim stream prepare netflix combined_data_1.txt combined_data_2.txt --out prepared/netflix
  embdim stream run examples/autoemb.yaml --set method.name=darts --set train.seed=1 --out runs/s/darts
  embdim stream run examples/autoemb.yaml --set method.name=darts --out runs/s/darts --resume
  embdim stream report runs/s --out runs/s
  embdim stream demo
  embdim stream study prepared/mls-stream --out runs/mls-study
See docs/autoemb.md."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``stream`` sub-command (and its own sub-commands) to the ``embdim`` parser."""
    from embdim.autoemb.stream import DEFAULT_CHUNK_ROWS, DEFAULT_RANGE_ROWS, STREAM_FORMATS

    p = subparsers.add_parser("stream", help="AutoEmb: streaming user/item embedding sizes",
                              description="Streaming recommendation with popularity-driven embedding "
                                          "widths (AutoEmb) and its baselines FSE, SAM, DARTS.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stream_command", metavar="STREAM_COMMAND")

    prep = sub.add_parser("prepare", help="rating files -> a time-ordered stream folder")
    prep.add_argument("format", choices=STREAM_FORMATS, metavar="FORMAT", help=", ".join(STREAM_FORMATS))
    prep.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="movielens: the dataset folder or its ratings file; netflix: "
                           "combined_data_*.txt / mv_*.txt files or their folder")
    prep.add_argument("--out", required=True, metavar="DIR")
    prep.add_argument("--overwrite", action="store_true",
                      help="replace DIR when it holds a stream written by embdim stream prepare")
    prep.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    prep.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, metavar="N",
                      help=f"rows parsed at a time (default {DEFAULT_CHUNK_ROWS})")
    prep.add_argument("--range-rows", type=int, default=DEFAULT_RANGE_ROWS, metavar="N",
                      help=f"rows per time range sorted in memory (default {DEFAULT_RANGE_ROWS})")
    prep.add_argument("--tie-seed", type=int, default=0, metavar="N",
                      help="seed of the shuffle that orders interactions with the same timestamp "
                           "(default 0)")
    prep.set_defaults(handler=_cmd_prepare)

    run = sub.add_parser("run", help="one method over a stream (evaluate, then train, per batch)")
    run.add_argument("config", nargs="?", help="stream YAML (see examples/autoemb.yaml); optional "
                                              "when --set data.path=... is given")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key, e.g. --set method.name=sam --set model.task=classification")
    run.add_argument("--out", help="run folder (default runs/stream-<method>-<task>-<seed>)")
    run.add_argument("--no-plots", dest="plots", action="store_false")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run in --out from its last checkpoint (same config)")
    run.set_defaults(handler=_cmd_run)

    rep = sub.add_parser("report", help="Table 2 (methods x task x metric, mean ± std over seeds)")
    rep.add_argument("runs", nargs="+", help="run folders or folders that contain them")
    rep.add_argument("--out", default=".", help="where stream_report.md/.csv and plots go (default .)")
    rep.add_argument("--no-plots", dest="plots", action="store_false")
    rep.set_defaults(handler=_cmd_report)

    demo = sub.add_parser("demo", help="the four methods on a planted synthetic stream")
    demo.add_argument("--out", default="runs/stream-demo")
    demo.add_argument("--interactions", type=int, default=40_000)
    demo.add_argument("--seed", type=int, default=2022)
    demo.add_argument("--both-tasks", action="store_true", help="regression and classification")
    demo.set_defaults(handler=_cmd_demo)
    study = sub.add_parser("study", help="Fig. 1: fixed widths (2/16/128) by user popularity")
    study.add_argument("stream", help="a folder written by embdim stream prepare")
    study.add_argument("--out", required=True, metavar="DIR",
                       help="where study.json, study.md and study.png go")
    study.add_argument("--widths", type=int, nargs="+", default=[2, 16, 128])
    study.add_argument("--x", dest="xs", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100],
                       help="training interactions per user (popularity) to compare")
    study.add_argument("--test-per-user", type=int, default=10)
    study.add_argument("--task", choices=("regression", "classification"), default="regression")
    study.add_argument("--epochs", type=int, default=5)
    study.add_argument("--seed", type=int, default=0)
    study.add_argument("--no-plots", dest="plots", action="store_false")
    study.set_defaults(handler=_cmd_study)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _cmd_prepare(args: argparse.Namespace) -> int:
    from embdim.autoemb.stream import prepare_stream

    prepare_stream(args.format, args.inputs, args.out, chunk_rows=args.chunk_rows,
                   range_rows=args.range_rows, on_bad_row=args.on_bad_row, overwrite=args.overwrite,
                   tie_seed=args.tie_seed, quiet=bool(getattr(args, "quiet", False)))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from embdim.autoemb.config import load_stream_config

    cfg = load_stream_config(args.config, args.overrides)
    out = args.out or f"runs/stream-{cfg.method.name}-{cfg.model.task}-{cfg.train.seed}"
    return _run(cfg, out, args)


def _run(cfg, out: str, args: argparse.Namespace) -> int:
    from embdim.autoemb.run import run_stream

    m = run_stream(cfg, out, quiet=bool(getattr(args, "quiet", False)),
                   plots=getattr(args, "plots", True), resume=bool(getattr(args, "resume", False)))
    key = "online_mse" if cfg.model.task == "regression" else "online_cross_entropy"
    print(f"{key}={m[key]:.5f} online_accuracy={m['online_accuracy']:.5f} "
          f"({m['interactions_per_second']:,.0f} interactions/s) -> {out}")
    return 0


def run_if_stream(args: argparse.Namespace) -> int | None:
    """``embdim run CONFIG``: when ``data.path`` is a stream folder (written by ``embdim stream
    prepare``), run the config as ``embdim stream run`` would (same YAML shape, ``--set``,
    ``--out`` and ``--resume``) and return the exit code; None when it is not a stream (the CTR
    pipeline runs it). A streaming method on a non-stream folder, or a CTR method on a stream,
    is refused with a message saying what to do."""
    from pathlib import Path

    from embdim.autoemb.config import METHODS, stream_config_from_dict
    from embdim.autoemb.stream import META_FILE
    from embdim.config import load_config_dict
    from embdim.errors import ConfigError

    d = load_config_dict(args.config, args.overrides)
    data = d.get("data") if isinstance(d.get("data"), dict) else {}
    method_section = d.get("method") if isinstance(d.get("method"), dict) else {}
    method = method_section.get("name")
    path = data.get("path")
    # a path that is not a string is left to the config's type check
    is_stream = isinstance(path, str) and bool(path) and (Path(path) / META_FILE).is_file()
    if not is_stream:
        if method in METHODS:
            where = f"data.path {path} is not a stream folder" if path else "data.path is not set"
            raise ConfigError(f"method.name {method!r} is a streaming method (AutoEmb and its "
                              f"baselines) and runs on an interaction stream, but {where}: prepare "
                              "one with `embdim stream prepare` and see docs/autoemb.md for the "
                              "config (or use `embdim stream run`)")
        return None
    if method is not None and method not in METHODS:
        raise ConfigError(f"data.path {path} is an interaction stream (written by `embdim stream "
                          f"prepare`): method.name must be one of {', '.join(METHODS)}, not "
                          f"{method!r}; the CTR methods need a folder written by `embdim prepare`")
    cfg = stream_config_from_dict(d)
    stem = Path(args.config).stem if args.config else "stream"
    out = args.out or f"runs/{stem}-{cfg.method.name}-{cfg.model.task}"
    return _run(cfg, out, args)


def _cmd_report(args: argparse.Namespace) -> int:
    from embdim.autoemb.run import stream_report

    print(stream_report(args.runs, args.out, plots=args.plots))
    print(f"wrote {args.out}/stream_report.md and {args.out}/stream_report.csv", file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embdim.autoemb.run import run_demo
    from embdim.demo import fresh_dir

    out = fresh_dir(Path(args.out))
    tasks = ("regression", "classification") if args.both_tasks else ("regression",)
    print(run_demo(out, interactions=args.interactions, seed=args.seed,
                   quiet=bool(getattr(args, "quiet", False)), tasks=tasks))
    print(f"wrote {out}/stream_report.md", file=sys.stderr)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from embdim.autoemb.stream import InteractionStream
    from embdim.autoemb.study import popularity_study, study_markdown, write_study

    result = popularity_study(InteractionStream.open(args.stream), widths=args.widths, xs=args.xs,
                              test_per_user=args.test_per_user, task=args.task, epochs=args.epochs,
                              seed=args.seed)
    write_study(result, args.out, plots=args.plots)
    print(study_markdown(result))
    print(f"wrote {args.out}/study.json, study.md" + (", study.png" if args.plots else ""),
          file=sys.stderr)
    return 0
