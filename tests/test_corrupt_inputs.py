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


@pytest.mark.parametrize("damage, words", [
    (lambda s: (s / "stream.json").write_text("{broken"), ("stream.json", "not a valid stream")),
    (lambda s: (s / "stream.json").write_text("[1, 2]"), ("stream.json", "not a valid stream")),
    (lambda s: (s / "items.npy").unlink(), ("missing array items.npy",)),
    (lambda s: (s / "users.npy").write_bytes(b"garbage"), ("users.npy", "not a readable .npy")),
    (lambda s: np.save(s / "ratings.npy", np.zeros(3, np.float32)), ("ratings.npy", "expected 100")),
])
def test_a_corrupt_stream_folder_is_one_line(tmp_path, capsys, damage, words):
    stream = _stream(tmp_path)
    damage(stream)
    assert main(["--quiet", "stream", "run", "--set", f"data.path={stream}", "--set",
                 "model.widths=[1,2]", "--set", "model.hidden=[4]", "--out",
                 str(tmp_path / "r")]) == 2
    _one_line_error(capsys, *words)


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
