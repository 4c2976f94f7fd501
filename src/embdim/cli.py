"""The ``embdim`` command line: prepare, check, run, search, retrain, report, grid, export,
case-study, demo."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from embdim import __version__
from embdim.demo import DEMO_EPOCHS, DEMO_ROWS
from embdim.errors import DISK_FULL_ERRNOS, EmbdimError, Terminated, disk_full_message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embdim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"embdim {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from embdim import case_study
    from embdim.autoemb import cli as autoemb_cli
    from embdim.data import prepare_cli
    from embdim.export import command as export_command

    prepare_cli.register(sub)
    export_command.register(sub)
    autoemb_cli.register(sub)
    case_study.register(sub)

    run = sub.add_parser("run", help="run one experiment described by a YAML config",
                         description="Run one experiment: search a dimension plan, retrain, evaluate.")
    run.add_argument("config", nargs="?", help="experiment YAML (see README); omit to run the demo")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set method.name=fde --set train.lr=0.01")
    run.add_argument("--out", help="run folder (default: runs/<config name>-<method>-<model>)")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run in --out from its last checkpoint")
    run.set_defaults(handler=_cmd_run)

    search = sub.add_parser("search", help="only the search stage: write plan.json",
                            description="Search a dimension plan and write OUT/plan.json.")
    search.add_argument("config", help="experiment YAML")
    search.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    search.add_argument("--out", required=True, help="folder for plan.json, config.yaml, log.txt")
    search.set_defaults(handler=_cmd_search)

    retrain = sub.add_parser("retrain", help="only the retrain stage: train with a given plan.json",
                             description="Train and evaluate the base model with an existing plan.")
    retrain.add_argument("config", help="experiment YAML (its method section is replaced)")
    retrain.add_argument("--plan", required=True, help="a plan.json written by a search")
    retrain.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    retrain.add_argument("--out", required=True, help="run folder")
    retrain.add_argument("--resume", action="store_true")
    retrain.set_defaults(handler=_cmd_retrain)

    report = sub.add_parser("report", help="tables (Markdown + CSV) from finished run folders",
                            description="Methods x models table (AUC, Logloss, embedding params; "
                                        "mean ± std over seeds) from run folders.")
    report.add_argument("runs", nargs="+", help="run folders, or folders that contain run folders")
    report.add_argument("--out", default=".", help="where report.md, report.csv and the PNG plots go "
                        "(default .)")
    report.add_argument("--no-plots", dest="plots", action="store_false",
                        help="tables only (no PNG plots)")
    report.set_defaults(handler=_cmd_report)

    grid = sub.add_parser("grid", help="run every cell of a grid of experiments, then the report",
                          description="Run the cartesian product of the `grid:` lists over the "
                                      "`base:` config, one run folder per cell; finished cells are "
                                      "skipped on restart, unfinished ones resumed.")
    grid.add_argument("grid", help="grid YAML: `base:` (an experiment config) and `grid:` "
                                   "(dotted key -> list of values)")
    grid.add_argument("--out", help="grid folder (default runs/<grid file name>)")
    grid.add_argument("--keep-going", action="store_true",
                      help="when a cell fails, go on with the others (and report the failures at the "
                           "end) instead of stopping")
    grid.add_argument("--no-plots", dest="plots", action="store_false", help="report without plots")
    grid.set_defaults(handler=_cmd_grid)

    check = sub.add_parser("check", help="verify a prepared dataset folder in full",
                           description="Read a folder written by `embdim prepare` in full: every id "
                                       "within its field's vocabulary, every label 0/1, and the "
                                       "content hash recomputed from the arrays and vocabulary.")
    check.add_argument("dataset", metavar="DIR", help="a prepared dataset folder")
    check.set_defaults(handler=_cmd_check)

    demo = sub.add_parser("demo", help="synthetic data with planted truth, a few methods, a table")
    demo.add_argument("--out", default="runs/demo", help="demo folder (a fresh one if it exists)")
    demo.add_argument("--rows", type=int, default=DEMO_ROWS, help=f"synthetic rows (default {DEMO_ROWS})")
    demo.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                      help=f"epochs per run (default {DEMO_EPOCHS})")
    demo.add_argument("--model", default="deepfm", help="base model (default deepfm)")
    demo.add_argument("--seed", type=int, default=2022)
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embdim.config import load_config
    from embdim.experiment import run_experiment

    if args.config is None and not args.overrides:
        return _cmd_demo(argparse.Namespace(out="runs/demo", rows=DEMO_ROWS, epochs=DEMO_EPOCHS,
                                            model="deepfm", seed=2022, quiet=args.quiet))
    if not _is_ctr_autoemb(args):  # AutoEmb on a prepared CTR folder: the CTR pipeline runs it
        from embdim.autoemb.cli import run_if_stream  # data.path is a stream: AutoEmb and baselines

        code = run_if_stream(args)
        if code is not None:
            return code
    cfg = load_config(args.config, args.overrides)
    if args.config:  # re-running a run folder's config.yaml: say what differs from its record
        from embdim.experiment import check_against_record

        for note in check_against_record(args.config, cfg):
            print(f"embdim: warning: {note}", file=sys.stderr)
    out = args.out
    if out is None:
        stem = Path(args.config).stem if args.config else "run"
        model = cfg.model.name.rsplit(":", 1)[-1]  # a body named by import path: its class name
        out = f"runs/{stem}-{cfg.method['name']}-{model}"
    if not _join_process_group(cfg.train.device, args):
        run_experiment(cfg, out, resume=args.resume, quiet=True)
        return 0
    metrics = run_experiment(cfg, out, resume=args.resume, quiet=args.quiet)
    print(f"test_auc={metrics['test_auc']:.5f} test_logloss={metrics['test_logloss']:.5f} "
          f"embedding_params={metrics['embedding_params']:,} -> {out}")
    return 0


def _is_ctr_autoemb(args: argparse.Namespace) -> bool:
    """``method.name: autoemb`` with ``data.path`` a folder written by ``embdim prepare`` (it has a
    ``schema.json``): AutoEmb as a field-level CTR search method (embdim.search.autoemb), not the
    streaming protocol."""
    from pathlib import Path

    from embdim.config import load_config_dict

    d = load_config_dict(args.config, args.overrides)
    method = d.get("method") if isinstance(d.get("method"), dict) else {}
    data = d.get("data") if isinstance(d.get("data"), dict) else {}
    path = data.get("path")
    return (method.get("name") == "autoemb" and isinstance(path, str) and bool(path)
            and (Path(path) / "schema.json").is_file())


def _join_process_group(device: str, args: argparse.Namespace) -> bool:
    """Under torchrun, join the process group (see embdim.distributed); True on the process that
    reports (rank 0, or the only one)."""
    from embdim import distributed

    distributed.init_from_environment(device)
    return distributed.is_main()


def _cmd_search(args: argparse.Namespace) -> int:
    from embdim.config import load_config
    from embdim.experiment import run_search

    cfg = load_config(args.config, args.overrides)
    if not _join_process_group(cfg.train.device, args):
        run_search(cfg, args.out, quiet=True)
        return 0
    plan = run_search(cfg, args.out, quiet=args.quiet)
    print(f"plan: {plan.dims_by_field()}; embedding params {plan.embedding_params:,} "
          f"({plan.embedding_params / max(1, plan.fde_embedding_params):.1%} of full) -> "
          f"{args.out}/plan.json")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from embdim.config import config_from_dict, load_config_dict
    from embdim.experiment import run_experiment

    d = load_config_dict(args.config, args.overrides)
    d["method"] = {"name": "plan", "path": args.plan}
    cfg = config_from_dict(d)
    if not _join_process_group(cfg.train.device, args):
        run_experiment(cfg, args.out, resume=args.resume, quiet=True)
        return 0
    metrics = run_experiment(cfg, args.out, resume=args.resume, quiet=args.quiet)
    print(f"test_auc={metrics['test_auc']:.5f} test_logloss={metrics['test_logloss']:.5f} "
          f"embedding_params={metrics['embedding_params']:,} -> {args.out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from embdim.report import write_report

    print(write_report(args.runs, args.out, plots=args.plots))
    print(f"\nwrote {args.out}/report.md" + (" with its CSV and plots" if args.plots else " and its CSV"))
    return 0


def _cmd_grid(args: argparse.Namespace) -> int:
    from pathlib import Path

    from embdim.grid import run_grid

    out = args.out or f"runs/{Path(args.grid).stem}"
    result = run_grid(args.grid, out, quiet=args.quiet, keep_going=args.keep_going, plots=args.plots)
    if result.table:
        print(result.table)
        print(f"\n{result.summary()} -> {out}/report.md")
    else:
        print(result.summary())
    return 1 if result.failed else 0


def _cmd_check(args: argparse.Namespace) -> int:
    from embdim.data.dataset import verify_dataset

    schema = verify_dataset(args.dataset)
    rows = sum(schema.splits.values())
    print(f"{args.dataset}: ok ({rows:,} rows x {schema.num_fields} fields, content hash "
          f"{schema.content_hash} verified)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from embdim.demo import run_demo

    run_demo(args.out, rows=args.rows, epochs=args.epochs, model=args.model, seed=args.seed,
             quiet=args.quiet)
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt), so a ``kill`` cleans
    up like Ctrl-C; the previous handler is restored after. Only the main thread can do this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_as_interrupt():
            code = int(args.handler(args) or 0)
        distributed = sys.modules.get("embdim.distributed")
        if distributed is not None:  # a command that trained (never imports torch for prepare)
            distributed.shutdown()
        return code
    except EmbdimError as e:
        print(f"embdim: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = None
        return 141
    except OSError as e:
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        print(f"embdim: error: {disk_full_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"embdim: {how} (an interrupted run continues from its last checkpoint with "
              "--resume)", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
