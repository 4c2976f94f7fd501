"""Issue 15: run a corpus of bad inputs, configs and corrupt folders through the ``embdim`` command
and count, per class, the clear errors (exit != 0 with one ``embdim: error:`` line), tracebacks
(any other exception) and silent results (exit 0 where an error was due).

    python benchmarks/reliability_corpus.py [--keep DIR]

Every case is built here from tiny files (nothing is downloaded); the command runs in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embdim.cli import main
from embdim.data.dataset import PreparedDataset
from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset
from embdim.plan import DimensionPlan

Case = tuple[str, str, Callable[[Path], list[str]]]  # (class, name, build(folder) -> argv)


def _csv(folder: Path, body: str, name: str = "r.csv") -> Path:
    path = folder / name
    path.write_text(body)
    return path


def _prepare_csv(body: str, *extra: str) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        path = _csv(folder, body)
        return ["prepare", "csv", str(path), "--out", str(folder / "p"), "--label", "label",
                "--categorical", "a,b", "--min-count", "1", *extra]
    return build


GOOD_ROWS = "".join(f"{i % 2},x{i % 3},y{i % 2}\n" for i in range(20))
WIDTH_CASES = {
    "short+long balance": "label,a,b,unused\n1,x,p,9\n0,y\n1,z,q,8,E1,E2\n0,w,r,7\n",
    "short row": "label,a,b\n1,x,p\n0,y\n",
    "long row": "label,a,b\n1,x,p\n0,y,q,extra\n",
    "blank then short": "label,a,b\n1,x,p\n\n0,y\n",
    "quoted short": 'label,a,b\n1,"x,y",p\n0,"y"\n',
}


def _data_cases() -> list[Case]:
    cases: list[Case] = []
    for name, body in WIDTH_CASES.items():
        for chunk in ("1", "2", "100000"):
            cases.append(("1 wrong column count", f"{name} chunk {chunk}",
                          _prepare_csv(body + GOOD_ROWS, "--chunk-rows", chunk)))
    cases.append(("10 ratings out of range", "ml-latest rating 99", _ml_rating("99")))
    cases.append(("10 ratings out of range", "ml-latest rating -3", _ml_rating("-3")))
    cases.append(("10 ratings out of range", "ml-latest rating 1e400", _ml_rating("1e400")))
    return cases


def _ml_rating(rating: str) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        ml = folder / "ml"
        ml.mkdir()
        (ml / "movies.csv").write_text("movieId,title,genres\n1,A (1995),Comedy\n")
        (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                        + "".join(f"1,1,4.0,{1000 + i}\n" for i in range(10))
                                        + f"1,1,{rating},2000\n")
        return ["prepare", "movielens", str(ml), "--out", str(folder / "p")]
    return build


def _config_cases(small: Path) -> list[Case]:
    base = ["run", "--set", f"data.path={small}", "--set", "train.epochs=1"]
    bad = ["train.lr=abc", "train.lr=.inf", "train.epochs=2.5", "train.batch_size=true",
           "train.amp=1", "train.max_steps_per_epoch=-1", "train.log_every=0", "model.mlp=[64,x]",
           "model.mlp=64", "model.dropout=abc", "model.name=bogus", "method.name=bogus",
           "method.dim=2.5", "method.name=sseds --set method.budget=true", "data.path=3",
           "train.device=tpu", "train.threads=-1", "train.weight_decay=-1",
           "method.name=autodim --set method.candidates=[2,x]",
           "method.name=autodim --set method.candidates=[2.5]",
           "method.name=autodim --set method.candidates=[2,true]",
           "method.name=autodim --set method.candidates=8"]
    cases: list[Case] = []
    for override in bad:
        parts = override.split(" --set ")
        argv = [*base, *[a for p in parts for a in ("--set", p)]]
        cases.append(("5/6 bad config (no folder)", override,
                      lambda folder, argv=argv: [*argv, "--out", str(folder / "run")]))
    return cases


def _corrupt_dataset_cases(small: Path) -> list[Case]:
    def damaged(edit: Callable[[Path], None]) -> Callable[[Path], list[str]]:
        def build(folder: Path) -> list[str]:
            copy = folder / "data"
            shutil.copytree(small, copy)
            edit(copy)
            return ["run", "--set", f"data.path={copy}", "--set", "train.epochs=1", "--out",
                    str(folder / "run")]
        return build

    def schema_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
        def edit(p: Path) -> None:
            d = json.loads((p / "schema.json").read_text())
            change(d)
            (p / "schema.json").write_text(json.dumps(d))
        return edit

    def array_edit(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
        def edit(p: Path) -> None:
            np.save(p / name, change(np.load(p / name)))
        return edit

    def set_first(a: np.ndarray, value) -> np.ndarray:
        a = a.copy()
        a.reshape(-1)[0] = value
        return a

    edits = {
        "vocab_size lowered": schema_edit(lambda d: d["fields"][1].update(vocab_size=3)),
        "schema is a list": lambda p: (p / "schema.json").write_text("[]"),
        "schema is binary": lambda p: (p / "schema.json").write_bytes(bytes(range(256))),
        "x float64": array_edit("train.x.npy", lambda a: a.astype(np.float64)),
        "negative id": array_edit("train.x.npy", lambda a: set_first(a, -5)),
        "label 2": array_edit("train.y.npy", lambda a: set_first(a, 2.0)),
        "truncated npy": lambda p: (p / "valid.x.npy").write_bytes((p / "valid.x.npy").read_bytes()[:50]),
        "0-byte npy": lambda p: (p / "test.y.npy").write_bytes(b""),
        "garbage npy": lambda p: (p / "train.y.npy").write_bytes(b"garbage" * 10),
        "missing npy": lambda p: (p / "valid.y.npy").unlink(),
        "field kind bogus": schema_edit(lambda d: d["fields"][0].update(kind="bogus")),
        "field names twice": schema_edit(lambda d: d["fields"][1].update(name=d["fields"][0]["name"])),
        "vocab_size 9.5": schema_edit(lambda d: d["fields"][0].update(vocab_size=9.5)),
        "splits not a mapping": schema_edit(lambda d: d.update(splits=[1, 2, 3])),
        "frequencies float64": array_edit("frequencies.npy", lambda a: a.astype(np.float64)),
        "frequencies negative": array_edit("frequencies.npy", lambda a: a - 10),
    }
    return [("4/7 corrupt prepared folder", name, damaged(edit)) for name, edit in edits.items()]


def _mid_split_cases(big: Path) -> list[Case]:
    """An id or label out of range in the middle of a split (opening checks only both ends):
    found by the loader while training, so the (unfinished) run folder exists by then."""
    def damaged(column: int, value: int) -> Callable[[Path], list[str]]:
        def build(folder: Path) -> list[str]:
            copy = folder / "data"
            shutil.copytree(big, copy)
            x = np.load(copy / "train.x.npy")
            x[len(x) // 2, column] = value
            np.save(copy / "train.x.npy", x)
            return ["run", "--set", f"data.path={copy}", "--set", "train.epochs=1", "--set",
                    "model.name=fm", "--out", str(folder / "run")]
        return build
    return [("4/7 bad id mid-split (found while training)", f"field {c} id {v}", damaged(c, v))
            for c, v in ((1, -5), (0, -1), (2, 10**6))]


def _plan_cases(small: Path) -> list[Case]:
    plans = {"[]": b"[]", "random bytes": bytes(range(256)), "empty": b"",
             "dim 1e9": json.dumps({"format_version": 1, "method": "fde", "full_dim": 8, "fields": [
                 {"name": "f0", "vocab_size": 5, "dim": 10**9}]}).encode()}
    good = DimensionPlan.uniform(PreparedDataset(small).schema, 4).to_dict()
    for name, change in {
        "dim 2.5": lambda d: d["fields"][0].update(dim=2.5),
        "dim true": lambda d: d["fields"][0].update(dim=True),
        "full_dim 0": lambda d: d.update(full_dim=0),
        "extra a list": lambda d: d.update(extra=[1]),
        "blocks not a list": lambda d: d.update(value_dim_rule={"blocks": "x"}),
        "blocks not tiling": lambda d: d.update(value_dim_rule={"blocks": [[{"start": 0, "stop": 1,
                                                                            "dim": 2}]] * 4}),
    }.items():
        d = json.loads(json.dumps(good))
        change(d)
        plans[name] = json.dumps(d).encode()
    cases: list[Case] = []
    for name, content in plans.items():
        def build(folder: Path, content=content) -> list[str]:
            (folder / "plan.json").write_bytes(content)
            return ["retrain", "/dev/null", "--set", f"data.path={small}", "--plan",
                    str(folder / "plan.json"), "--out", str(folder / "run")]
        cases.append(("7 corrupt plan", name, build))
    return cases


def _foreign_plan_cases(small: Path, other: Path) -> list[Case]:
    """A plan searched on another dataset: refused before the run folder is written."""
    def plan_file(folder: Path) -> Path:
        DimensionPlan.uniform(PreparedDataset(other).schema, 4).save(folder / "plan.json")
        return folder / "plan.json"

    def retrain(folder: Path) -> list[str]:
        return ["retrain", "/dev/null", "--set", f"data.path={small}", "--plan",
                str(plan_file(folder)), "--out", str(folder / "run")]

    def run(folder: Path) -> list[str]:
        return ["run", "--set", f"data.path={small}", "--set", "method.name=plan", "--set",
                f"method.path={plan_file(folder)}", "--out", str(folder / "run")]

    def grid(folder: Path) -> list[str]:
        spec = {"base": {"data": {"path": str(small)}, "model": {"name": "fm"},
                         "method": {"name": "plan", "path": str(plan_file(folder))},
                         "train": {"epochs": 1}}, "grid": {"train.seed": [1, 2]}}
        (folder / "grid.yaml").write_text(json.dumps(spec))
        return ["grid", str(folder / "grid.yaml"), "--out", str(folder / "run")]
    return [("3 plan for another dataset", "retrain --plan", retrain),
            ("3 plan for another dataset", "run method: plan", run),
            ("3 plan for another dataset", "grid method: plan", grid)]


def _grid_data_cases(small: Path) -> list[Case]:
    """A grid whose second cell reads a missing or damaged dataset: nothing runs or is written."""
    def grid(damage: str) -> Callable[[Path], list[str]]:
        def build(folder: Path) -> list[str]:
            bad = folder / "bad"
            if damage != "missing":
                shutil.copytree(small, bad)
                (bad / "test.y.npy").write_bytes(b"garbage")
            spec = {"base": {"data": {"path": str(small)}, "model": {"name": "fm"},
                             "train": {"epochs": 1}},
                    "grid": {"data.path": [str(small), str(bad)]}}
            (folder / "grid.yaml").write_text(json.dumps(spec))
            return ["grid", str(folder / "grid.yaml"), "--out", str(folder / "run")]
        return build
    return [("4 grid with a bad dataset", name, grid(name)) for name in ("missing", "damaged")]


def _run_folder_cases(small: Path) -> list[Case]:
    """A damaged unfinished run folder on --resume: its config.yaml or last checkpoint."""
    argv = ["run", "--set", f"data.path={small}", "--set", "train.epochs=1", "--set", "model.name=fm"]

    def config(content: bytes) -> Callable[[Path], list[str]]:
        def build(folder: Path) -> list[str]:
            (folder / "run").mkdir()
            (folder / "run" / "config.yaml").write_bytes(content)
            return [*argv, "--out", str(folder / "run"), "--resume"]
        return build

    def checkpoint(cut: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
        def build(folder: Path) -> list[str]:
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                main(["--quiet", *argv, "--out", str(folder / "run")])
            (folder / "run" / "metrics.json").unlink()  # as if killed before the end
            last = folder / "run" / "checkpoints" / "last.pt"
            last.write_bytes(cut(last.read_bytes()))
            return [*argv, "--out", str(folder / "run"), "--resume"]
        return build
    return [("7 corrupt run folder on --resume", "config.yaml unclosed", config(b"model: [unclosed\n")),
            ("7 corrupt run folder on --resume", "config.yaml a list", config(b"- a list\n")),
            ("7 corrupt run folder on --resume", "config.yaml binary", config(b"\xff\xfe\x00")),
            ("7 corrupt run folder on --resume", "last.pt garbage", checkpoint(lambda b: b"garbage")),
            ("7 corrupt run folder on --resume", "last.pt truncated", checkpoint(lambda b: b[:300])),
            ("7 corrupt run folder on --resume", "last.pt empty", checkpoint(lambda b: b""))]


def _stream_cases() -> list[Case]:
    """A damaged prepared stream (``embdim stream run``)."""
    def stream(damage: Callable[[Path], None]) -> Callable[[Path], list[str]]:
        def build(folder: Path) -> list[str]:
            ml = folder / "ml"
            ml.mkdir()
            (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
                f"{1 + i % 7},{1 + i % 11},{1 + i % 5}.0,{1000 + i}\n" for i in range(100)))
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                main(["--quiet", "stream", "prepare", "movielens", str(ml), "--out", str(folder / "s")])
            damage(folder / "s")
            return ["stream", "run", "--set", f"data.path={folder / 's'}", "--set", "model.widths=[1,2]",
                    "--set", "model.hidden=[4]", "--out", str(folder / "run")]
        return build

    def meta(**values) -> Callable[[Path], None]:
        def edit(s: Path) -> None:
            d = json.loads((s / "stream.json").read_text())
            d.update(values)
            (s / "stream.json").write_text(json.dumps(d))
        return edit

    def ids(name: str, value: int) -> Callable[[Path], None]:
        def edit(s: Path) -> None:
            a = np.load(s / name)
            a[len(a) // 2] = value
            np.save(s / name, a)
        return edit
    damages = {
        "stream.json broken": lambda s: (s / "stream.json").write_text("{broken"),
        "stream.json a list": lambda s: (s / "stream.json").write_text("[1, 2]"),
        "stream.json users 'x'": meta(users="x"),
        "stream.json items -1": meta(items=-1),
        "items.npy missing": lambda s: (s / "items.npy").unlink(),
        "users.npy garbage": lambda s: (s / "users.npy").write_bytes(b"garbage"),
        "ratings.npy short": lambda s: np.save(s / "ratings.npy", np.zeros(3, np.float32)),
        "items.npy negative id": ids("items.npy", -1),
        "users.npy id too large": ids("users.npy", 10**6),
    }
    return [("7 corrupt stream folder", name, stream(damage)) for name, damage in damages.items()]


def _parquet_cases() -> list[Case]:
    tables = {
        "duplicate column names": lambda: pa.table(
            [pa.array([1, 0] * 5), pa.array(["a", "b"] * 5), pa.array(["x", "y"] * 5)],
            names=["label", "a", "a"]),
        "list-typed label": lambda: pa.table({"label": pa.array([[1], [0]] * 5),
                                              "a": pa.array(["a", "b"] * 5)}),
        "struct-typed field": lambda: pa.table({"label": pa.array([1, 0] * 5),
                                                "a": pa.array([{"x": 1}] * 10)}),
        "bytes not UTF-8": lambda: pa.table({"label": pa.array([1, 0] * 5),
                                             "a": pa.array([b"\xff\xfe", b"x"] * 5)}),
    }

    def build_for(make: Callable[[], pa.Table]) -> Callable[[Path], list[str]]:
        def build(folder: Path) -> list[str]:
            pq.write_table(make(), folder / "t.parquet")
            return ["prepare", "parquet", str(folder / "t.parquet"), "--out", str(folder / "p"),
                    "--label", "label", "--categorical", "a", "--min-count", "1"]
        return build
    return [("7 corrupt Parquet", name, build_for(make)) for name, make in tables.items()]


def run_case(argv: list[str], expect_error: bool) -> str:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["--quiet", *argv])
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001  (anything else reaches the user as a traceback)
        return "traceback"
    text = err.getvalue()
    if code == 0:
        return "silent result" if expect_error else "correct result"
    lines = [line for line in text.splitlines() if line.strip()]
    return "clear error" if lines and lines[-1].startswith("embdim: error:") and \
        "Traceback" not in text else "unclear error"


def main_corpus() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", help="keep the case folders here")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="embdim-corpus-"))
    small, other, big = root / "small", root / "other", root / "big"
    spec = SyntheticSpec(cardinalities=[30, 200, 20, 50], true_dims=[0, 2, 2, 4], seed=5)
    for folder, s, rows in ((small, spec, 2000), (big, spec, 24_000),
                            (other, SyntheticSpec(cardinalities=[9, 40], true_dims=[2, 2], seed=1), 500)):
        if not folder.exists():
            write_synthetic_dataset(folder, s, rows, seed=5)
    cases = (_data_cases() + _config_cases(small) + _corrupt_dataset_cases(small)
             + _mid_split_cases(big) + _plan_cases(small) + _foreign_plan_cases(small, other)
             + _grid_data_cases(small) + _run_folder_cases(small) + _stream_cases() + _parquet_cases())
    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i, (klass, name, build) in enumerate(cases):
        folder = root / f"case{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        outcome = run_case(build(folder), expect_error=True)
        tally[klass][outcome] += 1
        leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
        if leftovers:
            tally[klass]["temp folders left"] += 1
        # (the folder of a --resume case exists before the command; a mid-split row is found
        # while training, after the run folder is made: counted, as it is left behind)
        if outcome == "clear error" and any((folder / out).exists() for out in ("run", "p")) \
                and not klass.startswith("7 corrupt run folder"):
            tally[klass]["output written"] += 1
        if outcome != "clear error":
            print(f"  {klass} / {name}: {outcome}")
    columns = ["clear error", "traceback", "silent result", "unclear error", "temp folders left",
               "output written"]
    print(f"\n| class | cases | {' | '.join(columns)} |\n|---|---|" + "---|" * len(columns))
    for klass in sorted(tally):
        row = tally[klass]
        print(f"| {klass} | {sum(row[c] for c in columns[:4])} | "
              + " | ".join(str(row[c]) for c in columns) + " |")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main_corpus()
