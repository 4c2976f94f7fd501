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

from embdim.cli import main
from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset

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
           "train.device=tpu", "train.threads=-1", "train.weight_decay=-1"]
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
    }
    return [("4/7 corrupt prepared folder", name, damaged(edit)) for name, edit in edits.items()]


def _plan_cases(small: Path) -> list[Case]:
    plans = {"[]": b"[]", "random bytes": bytes(range(256)), "empty": b"",
             "dim 1e9": json.dumps({"format_version": 1, "method": "fde", "full_dim": 8, "fields": [
                 {"name": "f0", "vocab_size": 5, "dim": 10**9}]}).encode()}
    cases: list[Case] = []
    for name, content in plans.items():
        def build(folder: Path, content=content) -> list[str]:
            (folder / "plan.json").write_bytes(content)
            return ["retrain", "/dev/null", "--set", f"data.path={small}", "--plan",
                    str(folder / "plan.json"), "--out", str(folder / "run")]
        cases.append(("7 corrupt plan", name, build))
    return cases


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
    small = root / "small"
    if not small.exists():
        write_synthetic_dataset(small, SyntheticSpec(cardinalities=[30, 200, 20, 50],
                                                     true_dims=[0, 2, 2, 4], seed=5), 2000, seed=5)
    cases = _data_cases() + _config_cases(small) + _corrupt_dataset_cases(small) + _plan_cases(small)
    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i, (klass, name, build) in enumerate(cases):
        folder = root / f"case{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        outcome = run_case(build(folder), expect_error=True)
        tally[klass][outcome] += 1
        leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
        if leftovers:
            tally[klass]["temp folders left"] += 1
        if outcome == "clear error" and any((folder / out).exists() for out in ("run", "p")):
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
