"""Issue 15: a prepared folder that does not match its schema is refused when opened (cheap
checks), and ``embdim check DIR`` reads it in full (ids, labels, content hash)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from embdim.cli import main
from embdim.data.dataset import PreparedDataset, verify_dataset
from embdim.data.preparation import prepare
from embdim.errors import DataError


@pytest.fixture()
def prepared(tmp_path) -> Path:
    src = tmp_path / "r.csv"
    src.write_text("label,a,b\n" + "".join(f"{i % 2},x{i % 7},y{i % 3}\n" for i in range(300)))
    out = tmp_path / "p"
    prepare("csv", [src], out, label="label", categorical=["a", "b"], min_count=1, quiet=True)
    return out


def _edit_schema(folder: Path, edit) -> None:
    d = json.loads((folder / "schema.json").read_text())
    edit(d)
    (folder / "schema.json").write_text(json.dumps(d))


def _edit_array(folder: Path, name: str, edit) -> None:
    a = np.load(folder / name)
    edit(a)
    np.save(folder / name, a)


def _open_all(folder: Path) -> None:
    ds = PreparedDataset(folder)
    for s in ("train", "valid", "test"):
        ds.split(s)


def test_a_fresh_folder_records_its_largest_ids_and_passes_the_full_check(prepared, small, capsys):
    schema = PreparedDataset(prepared).schema
    assert schema.max_ids == [8, 4]  # 7 and 3 values from id 2
    assert main(["check", str(prepared)]) == 0
    assert "content hash" in capsys.readouterr().out
    verify_dataset(small)  # the synthetic writer's folders too


def test_a_lowered_vocab_size_is_refused_on_open(prepared, capsys):
    _edit_schema(prepared, lambda d: d["fields"][0].update(vocab_size=5))
    with pytest.raises(DataError, match="field 'a' holds ids up to 8 but its vocab_size is 5"):
        PreparedDataset(prepared)
    assert main(["check", str(prepared)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("embdim: error: ") and err.count("\n") == 1


def test_a_folder_from_before_max_ids_still_opens(prepared):
    _edit_schema(prepared, lambda d: d.pop("max_ids"))
    _open_all(prepared)
    assert PreparedDataset(prepared).schema.max_ids is None


@pytest.mark.parametrize("name, edit, message", [
    ("train.x.npy", lambda a: a.__setitem__((0, 1), 99), r"train rows: row 0, field 'b': id 99 outside 0..4"),
    ("train.x.npy", lambda a: a.__setitem__((-1, 0), -3), "field 'a': id -3 outside"),
    ("valid.y.npy", lambda a: a.__setitem__(0, 0.5), "valid rows: row 0: label 0.5 is not 0 or 1"),
])
def test_bad_ids_or_labels_at_the_ends_of_a_split_are_refused_on_open(prepared, name, edit, message):
    _edit_array(prepared, name, edit)
    with pytest.raises(DataError, match=message):
        _open_all(prepared)


def test_the_full_check_finds_what_opening_does_not_read(prepared, monkeypatch):
    import embdim.data.dataset as dataset_mod

    monkeypatch.setattr(dataset_mod, "SAMPLE_ROWS", 8)  # opening reads rows 0..7 and the last 8
    _edit_array(prepared, "train.x.npy", lambda a: a.__setitem__((100, 0), 60))
    _open_all(prepared)
    with pytest.raises(DataError, match="row 100, field 'a': id 60 outside"):
        verify_dataset(prepared, block_rows=16)


def test_the_full_check_recomputes_the_content_hash(prepared):
    _edit_array(prepared, "test.y.npy", lambda a: a.__setitem__(3, 1 - a[3]))  # still 0/1
    _open_all(prepared)
    with pytest.raises(DataError, match="content hash mismatch"):
        verify_dataset(prepared)


def test_the_full_check_compares_the_vocabulary_file(prepared):
    import polars as pl

    table = pl.read_parquet(prepared / "vocabulary.parquet")
    table.with_columns(pl.col("value").str.replace("x1", "x9")).write_parquet(
        prepared / "vocabulary.parquet")
    with pytest.raises(DataError, match="vocabulary.parquet does not match"):
        verify_dataset(prepared)


@pytest.mark.parametrize("damage, message", [
    (lambda p: np.save(p / "train.x.npy", np.load(p / "train.x.npy").astype(np.float64)),
     "arrays are float64, float32; expected int32 ids"),
    (lambda p: (p / "train.x.npy").write_bytes((p / "train.x.npy").read_bytes()[:100]),
     "train.x.npy is not a readable .npy array"),
    (lambda p: (p / "train.y.npy").write_bytes(b""), "train.y.npy is not a readable .npy array"),
    (lambda p: (p / "valid.x.npy").unlink(), "missing array valid.x.npy"),
    (lambda p: (p / "schema.json").write_text("[]"), "expected a JSON object, got list"),
    (lambda p: (p / "schema.json").write_bytes(b"\x80\xff\x00binary"), "not valid JSON"),
])
def test_corrupt_folders_get_one_line_errors(prepared, capsys, damage, message):
    damage(prepared)
    with pytest.raises(DataError, match=message):
        _open_all(prepared)
    assert main(["check", str(prepared)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("embdim: error: ") and err.count("\n") == 1


# ---- content hash stability ------------------------------------------------------------------

TINY_CSV = ("label,a,b,n\n1,x,p,1.5\n0,y,q,2\n1,x,p,3\n0,z,q,\n1,x,r,7\n0,y,p,2.5\n1,z,q,1\n"
            "0,x,p,9\n")


def test_the_content_hash_of_a_tiny_dataset_is_pinned(tmp_path):
    """Plans and checkpoints name the hash of the data they were made for: re-preparing the same
    file with the same options must give the same hash in every version (this one is what
    embdim gave before schema.json recorded max_ids, which are left out of the hash)."""
    (tmp_path / "t.csv").write_text(TINY_CSV)
    schema = prepare("csv", [tmp_path / "t.csv"], tmp_path / "p", label="label",
                     categorical=["a", "b"], numeric=["n"], min_count=1, quiet=True)
    assert schema.max_ids is not None
    assert schema.content_hash == "489e300bd9d39f099db190d633a701ca"
    assert verify_dataset(tmp_path / "p").content_hash == schema.content_hash


def test_the_full_check_compares_the_recorded_max_ids_with_the_arrays(prepared):
    _edit_schema(prepared, lambda d: d.update(max_ids=[7, 4]))  # still below vocab_size
    _open_all(prepared)
    with pytest.raises(DataError, match=r"records max_ids \[7, 4\] but the arrays hold ids up to \[8, 4\]"):
        verify_dataset(prepared)


def test_the_full_check_accepts_a_hash_that_counted_max_ids(prepared):
    from embdim.data.dataset import content_hash

    digests = {}
    for split in ("train", "valid", "test"):
        for a in "xy":
            h = hashlib.blake2b(digest_size=16)
            h.update(np.ascontiguousarray(np.load(prepared / f"{split}.{a}.npy")).tobytes())
            digests[split, a] = h.digest()
    recorded = json.loads((prepared / "schema.json").read_text())
    older = content_hash(recorded, digests, np.load(prepared / "frequencies.npy"), derived=True)
    _edit_schema(prepared, lambda d: d.update(content_hash=older))
    assert verify_dataset(prepared).content_hash == older


# ---- rows read during training are checked (issue 15 item 7 leftovers) -----------------------

@pytest.mark.parametrize("column, value, words", [(1, -3, "field 'b': id -3 outside 0..4"),
                                                  (0, 60, "field 'a': id 60 outside 0..8")])
@pytest.mark.parametrize("in_memory", [True, False])
def test_a_bad_id_in_the_middle_of_a_split_stops_training_with_one_line(prepared, tmp_path, capsys,
                                                                        monkeypatch, column, value, words,
                                                                        in_memory):
    """Opening reads only both ends of a split; the loader checks every block it reads, so an id
    out of range in the middle is an error, not a silently wrong embedding row (a negative id
    would index another field's table: field 'b' here) or an IndexError traceback."""
    import embdim.data.dataset as dataset_mod

    monkeypatch.setattr(dataset_mod, "SAMPLE_ROWS", 8)
    _edit_array(prepared, "train.x.npy", lambda a: a.__setitem__((100, column), value))
    limit = [] if in_memory else ["--set", "train.in_memory_limit_gb=0.000001"]
    code = main(["--quiet", "run", "--set", f"data.path={prepared}", "--set", "model.name=fm",
                 "--set", "train.epochs=1", "--set", "train.batch_size=16", *limit,
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("embdim: error: ") and "train rows: row 100, " + words in err


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["fields"][0].update(kind="bogus"), "fields[0].kind: expected one of"),
    (lambda d: d["fields"][1].update(name=5), "fields[1].name: expected a string, got 5"),
    (lambda d: d["fields"][1].update(name="a"), "the name 'a' is used twice"),
    (lambda d: d["fields"][0].update(vocab_size=9.5), "fields[0].vocab_size: expected an integer"),
    (lambda d: d["fields"][0].update(frequency="junk"), "fields[0].frequency: expected a mapping"),
    (lambda d: d.update(label=[1]), "label: expected a string, got [1]"),
    (lambda d: d.update(fields=[]), "the schema lists no field"),
    (lambda d: d.update(fields=["a"]), "fields[0]: expected a mapping, got 'a'"),
    (lambda d: d["splits"].pop("valid"), "splits: no size for the 'valid' split"),
    (lambda d: d["splits"].update(train="many"), "splits.train: expected an integer"),
    (lambda d: d.update(options=[1]), "options: expected a mapping, got [1]"),
    (lambda d: d.update(max_ids="x"), "max_ids: expected a list of integers, got 'x'"),
])
def test_a_schema_with_values_of_the_wrong_type_is_one_line(prepared, capsys, edit, message):
    _edit_schema(prepared, edit)
    with pytest.raises(DataError, match=re.escape(message)):
        PreparedDataset(prepared)
    assert main(["check", str(prepared)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("embdim: error: ") and "malformed schema" in err and err.count("\n") == 1


@pytest.mark.parametrize("counts", [lambda a: a.astype(np.float64), lambda a: a - 5])
def test_frequencies_that_are_not_counts_are_refused_on_open(prepared, counts):
    np.save(prepared / "frequencies.npy", counts(np.load(prepared / "frequencies.npy")))
    with pytest.raises(DataError, match=r"frequencies.npy holds .*expected counts \(integers >= 0\)"):
        PreparedDataset(prepared).check_all()
