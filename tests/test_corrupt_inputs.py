"""Issue 15, item 7: corrupt plans, run folders, streams and Parquet files are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embdim.cli import main


def _one_line_error(capsys, *words: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("embdim: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(w in err for w in words), err


@pytest.mark.parametrize("content, words", [
    (b"[]", ("expected a JSON object, got list",)),
    (bytes(range(256)), ("not valid JSON",)),
    (b"", ("not valid JSON",)),
    (json.dumps({"format_version": 1, "method": "fde", "full_dim": 8, "fields": [
        {"name": "f0", "vocab_size": 5, "dim": 1_000_000_000}]}).encode(), ("at most 65,536",)),
])
def test_a_corrupt_plan_is_refused_before_the_run_folder_exists(small, tmp_path, capsys, content,
                                                                  words):
    plan = tmp_path / "plan.json"
    plan.write_bytes(content)
    out = tmp_path / "run"
    assert main(["--quiet", "retrain", "--set", f"data.path={small}", "--plan", str(plan),
                 "--out", str(out), "/dev/null"]) == 2
    _one_line_error(capsys, str(plan), *words)
    assert not out.exists()


@pytest.mark.parametrize("content", [b"model: [unclosed\n", b"- a list\n", b"\xff\xfe\x00"])
def test_a_corrupt_run_config_on_resume_is_one_line(small, tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_bytes(content)
    assert main(["--quiet", "run", "--set", f"data.path={small}", "--set", "train.epochs=1",
                 "--out", str(out), "--resume"]) == 2
    _one_line_error(capsys, "config.yaml", "damaged")


def _stream(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{1 + i % 7},{1 + i % 11},{1 + i % 5}.0,{1000 + i}\n" for i in range(100)))
    out = tmp_path / "s"
    assert main(["--quiet", "stream", "prepare", "movielens", str(folder), "--out", str(out)]) == 0
    return out


def _edit_stream_meta(stream, **values):
    meta = json.loads((stream / "stream.json").read_text())
    meta.update(values)
    (stream / "stream.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, words", [
    (lambda s: (s / "stream.json").write_text("{broken"), ("stream.json", "not a valid stream")),
    (lambda s: (s / "stream.json").write_text("[1, 2]"), ("stream.json", "not a valid stream")),
    (lambda s: (s / "items.npy").unlink(), ("missing array items.npy",)),
    (lambda s: (s / "users.npy").write_bytes(b"garbage"), ("users.npy", "not a readable .npy")),
    (lambda s: np.save(s / "ratings.npy", np.zeros(3, np.float32)), ("ratings.npy", "expected 100")),
    (lambda s: np.save(s / "items.npy", np.where(np.arange(100) == 40, -1, np.load(s / "items.npy"))
                       .astype(np.int32)), ("items.npy", "interaction 40: id -1 outside 0..10")),
    (lambda s: np.save(s / "users.npy", np.load(s / "users.npy") + 50), ("users.npy", "outside 0..6")),
    (lambda s: _edit_stream_meta(s, users="x"), ("stream.json", "'users' must be a positive integer")),
    (lambda s: _edit_stream_meta(s, items=-1), ("stream.json", "'items' must be a positive integer")),
    (lambda s: _edit_stream_meta(s, items=None), ("stream.json", "'items' must be a positive integer")),
])
def test_a_corrupt_stream_folder_is_one_line(tmp_path, capsys, damage, words):
    stream = _stream(tmp_path)
    damage(stream)
    assert main(["--quiet", "stream", "run", "--set", f"data.path={stream}", "--set",
                 "model.widths=[1,2]", "--set", "model.hidden=[4]", "--out",
                 str(tmp_path / "r")]) == 2
    _one_line_error(capsys, *words)


@pytest.mark.parametrize("content", [b"garbage", b"", b"PK\x03\x04 truncated zip"])
def test_a_corrupt_stream_checkpoint_on_resume_is_one_line(tmp_path, capsys, content):
    """The streaming loop reads its checkpoint with the trainer's reader (embdim.io.read_checkpoint)."""
    stream = _stream(tmp_path)
    run = ["--quiet", "stream", "run", "--set", f"data.path={stream}", "--set", "model.widths=[1,2]",
           "--set", "model.hidden=[4]", "--set", "method.controller_hidden=[4]", "--out",
           str(tmp_path / "r"), "--no-plots"]
    assert main(run) == 0
    (tmp_path / "r" / "metrics.json").unlink()
    (tmp_path / "r" / "checkpoints" / "last.pt").write_bytes(content)
    capsys.readouterr()
    assert main([*run, "--resume"]) == 2
    _one_line_error(capsys, "last.pt", "cannot read checkpoint", "damaged")


@pytest.mark.parametrize("table, words", [
    (pa.table([pa.array([1, 0] * 5), pa.array(["a", "b"] * 5), pa.array(["x", "y"] * 5)],
              names=["label", "a", "a"]), ("duplicate column name 'a'",)),
    (pa.table({"label": pa.array([[1], [0]] * 5), "a": pa.array(["a", "b"] * 5)}),
     ("column 'label'", "list<")),
])
def test_parquet_with_duplicate_or_nested_columns_is_one_line(tmp_path, capsys, table, words):
    pq.write_table(table, tmp_path / "t.parquet")
    assert main(["--quiet", "prepare", "parquet", str(tmp_path / "t.parquet"), "--out",
                 str(tmp_path / "o"), "--label", "label", "--categorical", "a"]) == 2
    _one_line_error(capsys, *words)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "a list"])
def test_a_corrupt_checkpoint_on_resume_is_one_line(small, tmp_path, capsys, damage):
    import torch

    out = tmp_path / "run"
    argv = ["--quiet", "run", "--set", f"data.path={small}", "--set", "model.name=fm", "--set",
            "train.epochs=1", "--out", str(out)]
    assert main(argv) == 0
    (out / "metrics.json").unlink()  # as if killed before the end
    last = out / "checkpoints" / "last.pt"
    if damage == "a list":
        torch.save([1, 2], last)
    else:
        last.write_bytes({"garbage": b"garbage" * 9, "empty": b"",
                          "truncated": last.read_bytes()[:300]}[damage])
    assert main([*argv, "--resume"]) == 2
    _one_line_error(capsys, "last.pt")


def _plan_with(small, change) -> bytes:
    from embdim.data.dataset import PreparedDataset
    from embdim.plan import DimensionPlan

    d = DimensionPlan.uniform(PreparedDataset(small).schema, 4).to_dict()
    change(d)
    return json.dumps(d).encode()


def _blocks(d, blocks):
    """MDE's frequency blocks: ``blocks`` as given, or ``blocks(vocab_size)`` per field."""
    if callable(blocks):
        blocks = [blocks(f["vocab_size"]) for f in d["fields"]]
    d["value_dim_rule"] = {"kind": "frequency_blocks", "blocks": blocks}


@pytest.mark.parametrize("change, words", [
    (lambda d: d["fields"][0].update(dim=2.5), "fields[0].dim: expected an integer, got 2.5"),
    (lambda d: d["fields"][1].update(dim=True), "fields[1].dim: expected an integer, got True"),
    (lambda d: d["fields"][0].update(dim=None), "fields[0].dim: expected an integer, got None"),
    (lambda d: d.update(full_dim=0), "full_dim and vocab sizes must be >= 1"),
    (lambda d: d.update(fields=["f0"]), "fields[0]: expected a mapping, got 'f0'"),
    (lambda d: d.update(fields=[]), "the plan lists no field"),
    (lambda d: d.update(extra=[1]), "extra: expected a mapping, got [1]"),
    (lambda d: d.update(options="x"), "options: expected a mapping, got 'x'"),
    (lambda d: d.update(value_dim_rule="x"), "value_dim_rule: expected a mapping, got 'x'"),
    (lambda d: _blocks(d, "x"), "value_dim_rule.blocks: expected a list"),
    (lambda d: _blocks(d, [[{"start": 0}]] * 4), "KeyError('stop')"),
    (lambda d: _blocks(d, [[{"start": 0, "stop": 1, "dim": 2}]] * 4), "field 'f0' must hold each id 0.."),
    (lambda d: _blocks(d, lambda v: [{"start": 0, "stop": v, "dim": 2.5}]),
     "value_dim_rule.blocks[0][0].dim: expected an integer, got 2.5"),
    (lambda d: _blocks(d, lambda v: [{"start": 0, "stop": v, "dim": 10**9}]),
     "value_dim_rule.blocks[0][0].dim: expected 0..65,536"),
    (lambda d: _blocks(d, lambda v: [{"start": 0, "stop": v - 1, "dim": 2}, {"start": v - 2, "stop": v,
                                                                            "dim": 2}]),
     "must hold each id"),
    (lambda d: _blocks(d, lambda v: [{"start": 0, "stop": v, "dim": 2}]),
     "field 'f0' has dim 4 but its widest block has 2"),
])
def test_a_plan_with_values_of_the_wrong_type_is_refused_before_the_run_folder_exists(
        small, tmp_path, capsys, change, words):
    plan = tmp_path / "plan.json"
    plan.write_bytes(_plan_with(small, change))
    out = tmp_path / "run"
    assert main(["--quiet", "retrain", "--set", f"data.path={small}", "--set", "model.name=fm",
                 "--plan", str(plan), "--out", str(out), "/dev/null"]) == 2
    assert not out.exists()
    _one_line_error(capsys, str(plan), "malformed plan" if "must be >= 1" not in words else "", words)


def test_a_plan_with_frequency_blocks_that_tile_the_ids_loads(small):
    from embdim.plan import DimensionPlan

    d = json.loads(_plan_with(small, lambda d: _blocks(d, lambda v: [
        {"start": 2, "stop": v, "dim": 4}, {"start": 0, "stop": 0, "dim": 2, "reserved_ids": [0, 1]}])))
    assert DimensionPlan.from_dict(d).value_dim_rule["blocks"][0][1]["reserved_ids"] == [0, 1]


def test_parquet_bytes_that_are_not_utf8_are_bad_rows(tmp_path, capsys):
    from embdim.data.preparation import prepare

    labels = pa.array([1, 0, 1, 0, 2, 1, 0, 1, 0, 1])
    values = pa.array([b"x", b"y", b"\xff\xfe", b"x", b"y", b"x", b"y", b"x", b"y", b"x"])
    pq.write_table(pa.table({"label": labels, "a": values}), tmp_path / "t.parquet")
    assert main(["--quiet", "prepare", "parquet", str(tmp_path / "t.parquet"), "--out",
                 str(tmp_path / "o"), "--label", "label", "--categorical", "a"]) == 2
    _one_line_error(capsys, "line 3, column 'a': undecodable bytes")  # Parquet: 1-based row
    schema = prepare("parquet", [tmp_path / "t.parquet"], tmp_path / "o", label="label",
                     categorical=["a"], on_bad_row="skip", min_count=1, quiet=True)
    assert schema.options["bad_rows"] == 2 and sum(schema.splits.values()) == 8
    assert [b["line"] for b in schema.options["first_bad_rows"]] == [3, 5]  # row 5: label 2
