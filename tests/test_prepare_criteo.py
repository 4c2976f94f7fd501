"""`embdim prepare` on Criteo-format files: ids, vocabularies, splits, schema, bad input, CLI.

Fixtures are built in tmp_path. Rows carry their index as three digits in C24..C26 (values seen
in many training rows, so kept in the vocabulary) and every output row can be traced back to its
input line.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from embdim.cli import main
from embdim.data.dataset import PreparedDataset, PreparedDatasetWriter
from embdim.data.preparation import load_vocabulary, prepare
from embdim.data.schema import SPLITS
from embdim.errors import ConfigError, DataError

N_INT, N_CAT = 13, 26


def make_rows(n: int, seed: int = 0) -> list[list[str]]:
    """Criteo rows as lists of 40 strings; C24..C26 spell the row index (``h``, ``t``, ``u``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = str(int(rng.random() < 0.3))
        ints = []
        for _ in range(N_INT):
            if rng.random() < 0.1:
                ints.append("")
            else:
                ints.append(str(int(rng.choice([-2, -1, 0, 1, 2, 3, 5, 10, 100, 1000, 12345]))))
        cats = []
        for j in range(N_CAT - 3):
            k = int(min(rng.zipf(1.6), 30 + j))
            cats.append("" if rng.random() < 0.05 else f"{(k * 2654435761 + j) % 2**32:08x}")
        cats += [f"h{i // 100}", f"t{i // 10 % 10}", f"u{i % 10}"]
        rows.append([label, *ints, *cats])
    return rows


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join("\t".join(r) + "\n" for r in rows))
    return path


def criteo_value(raw: str) -> str | None:
    """The reference Criteo transform of an integer field."""
    if raw == "":
        return None
    v = int(raw)
    return str(math.floor(math.log(v) ** 2)) if v > 2 else str(v)


def field_values(rows: list[list[str]]) -> list[list[str | None]]:
    """Reference field values per row (None = missing)."""
    out = []
    for r in rows:
        out.append([criteo_value(v) for v in r[1:1 + N_INT]] + [v or None for v in r[1 + N_INT:]])
    return out


def row_split(out: Path) -> dict[int, tuple[str, int]]:
    """Input row index -> (split, position in the split), decoded from C24..C26."""
    ds = PreparedDataset(out)
    vocabs = load_vocabulary(out)
    digit = {f: dict(zip(vocabs[f]["id"].to_list(), (int(v[1:]) for v in vocabs[f]["value"]),
                         strict=True)) for f in ("C24", "C25", "C26")}
    where = {}
    for s in SPLITS:
        x = ds.split(s).x
        for pos in range(len(x)):
            h, t, u = (digit[f][int(x[pos, 36 + k])] for k, f in enumerate(("C24", "C25", "C26")))
            where[100 * h + 10 * t + u] = (s, pos)
    return where


@pytest.fixture(scope="module")
def rows() -> list[list[str]]:
    return make_rows(600)


@pytest.fixture(scope="module")
def traced(tmp_path_factory, rows):
    """A min_count=1 preparation and the input row -> (split, position) map."""
    base = tmp_path_factory.mktemp("traced")
    src = write_tsv(base / "train.tsv", rows)
    out = base / "ds1"
    prepare("criteo", [src], out, min_count=1, quiet=True)
    return src, out, row_split(out)


def test_every_input_row_lands_once_in_exact_8_1_1_splits(traced, rows):
    _, out, where = traced
    assert sorted(where) == list(range(len(rows)))
    sizes = Counter(s for s, _ in where.values())
    assert sizes == {"train": 480, "valid": 60, "test": 60}
    # rows keep their input order inside a split
    for s in SPLITS:
        idx = sorted((pos, i) for i, (sp, pos) in where.items() if sp == s)
        assert [i for _, i in idx] == sorted(i for _, i in idx)


def test_ids_and_labels_match_a_reference_encoder(traced, rows, tmp_path):
    src, _, where = traced
    out = tmp_path / "ds3"
    min_count = 3
    schema = prepare("criteo", [src], out, min_count=min_count, quiet=True)
    values = field_values(rows)
    train = [i for i, (s, _) in where.items() if s == "train"]
    ds = PreparedDataset(out)
    vocabs = load_vocabulary(out)
    freqs = ds.frequencies()
    for f, name in enumerate(schema.field_names):
        counts = Counter(values[i][f] for i in train if values[i][f] is not None)
        kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
        ids = {v: k + 2 for k, v in enumerate(kept)}
        assert vocabs[name]["value"].to_list() == kept, name
        assert vocabs[name]["id"].to_list() == list(range(2, 2 + len(kept)))
        missing = sum(values[i][f] is None for i in train)
        expected_freq = [len(train) - missing - sum(counts[v] for v in kept), missing]
        expected_freq += [counts[v] for v in kept]
        assert freqs[f].tolist() == expected_freq, name
        assert schema.fields[f].vocab_size == len(kept) + 2
        for i, (s, pos) in where.items():
            v = values[i][f]
            want = 1 if v is None else ids.get(v, 0)
            assert ds.split(s).x[pos, f] == want, (name, i)
    for i, (s, pos) in where.items():
        assert ds.split(s).y[pos] == float(rows[i][0])


def test_integer_fields_use_the_criteo_log_transform(tmp_path):
    raw = ["-3", "0", "1", "2", "3", "4", "10", "100", "1000", "54321", ""]
    rows = make_rows(len(raw) * 10)
    for i, r in enumerate(rows):
        r[1] = raw[i % len(raw)]
    src = write_tsv(tmp_path / "t.tsv", rows)
    out = tmp_path / "ds"
    prepare("criteo", [src], out, min_count=1, split_ratios=(1.0, 0.0, 0.0), quiet=True)
    vocab = load_vocabulary(out)["I1"]
    by_id = dict(zip(vocab["id"].to_list(), vocab["value"].to_list(), strict=True))
    x = PreparedDataset(out).split("train").x
    got = {by_id.get(int(i), "<missing>" if i == 1 else "<oov>") for i in x[:, 0]}
    # 3 and 4 fall in bucket 1 with the raw 1; 10 -> 5, 100 -> 21, 1000 -> 47, 54321 -> 118
    assert got == {"-3", "0", "1", "2", "5", "21", "47", "118", "<missing>"}
    assert got - {"<missing>"} == {criteo_value(v) for v in raw if v}


def test_rare_and_unseen_values_map_to_oov(tmp_path):
    rows = make_rows(200, seed=1)
    for r in rows:
        r[14] = "common"
    rows[0][14] = "rare"  # rare: once in the file
    src = write_tsv(tmp_path / "t.tsv", rows)
    out1 = tmp_path / "one"
    prepare("criteo", [src], out1, min_count=1, quiet=True)
    where = row_split(out1)
    test_row = next(i for i, (s, _) in where.items() if s == "test")
    rows[test_row][14] = "only_in_test"
    rows[0][14] = "common"
    train_rows = [i for i, (s, _) in where.items() if s == "train"][:3]
    for i in train_rows:
        rows[i][14] = "thrice"
    src = write_tsv(tmp_path / "t2.tsv", rows)
    for min_count, thrice_kept in ((3, True), (4, False)):
        out = tmp_path / f"mc{min_count}"
        prepare("criteo", [src], out, min_count=min_count, quiet=True)
        ds = PreparedDataset(out)
        vocab = load_vocabulary(out)["C1"]["value"].to_list()
        assert "only_in_test" not in vocab
        assert ("thrice" in vocab) is thrice_kept
        s, pos = where[test_row]
        assert ds.split(s).x[pos, 13] == 0
        for i in train_rows:
            s, pos = where[i]
            assert bool(ds.split(s).x[pos, 13] >= 2) is thrice_kept


def test_ids_follow_descending_training_frequency_with_ties_by_value(tmp_path):
    rows = make_rows(100, seed=2)
    values = ["b"] * 30 + ["a"] * 30 + ["c"] * 25 + ["d"] * 15
    for r, v in zip(rows, values, strict=True):
        r[14] = v
    src = write_tsv(tmp_path / "t.tsv", rows)
    out = tmp_path / "ds"
    prepare("criteo", [src], out, min_count=1, split_ratios=(1.0, 0.0, 0.0), quiet=True)
    vocab = load_vocabulary(out)["C1"]
    assert vocab["value"].to_list() == ["a", "b", "c", "d"]
    assert vocab["count"].to_list() == [30, 30, 25, 15]
    freq = PreparedDataset(out).frequencies()[13]
    assert freq.tolist() == [0, 0, 30, 30, 25, 15]


def test_same_seed_and_any_chunk_size_give_identical_datasets(tmp_path, rows):
    src = write_tsv(tmp_path / "t.tsv", rows)
    schemas = [prepare("criteo", [src], tmp_path / f"c{c}", chunk_rows=c, quiet=True)
               for c in (7, 100, 100_000)]
    assert len({s.content_hash for s in schemas}) == 1
    reference = PreparedDataset(tmp_path / "c100000")
    for c in (7, 100):
        for s in SPLITS:
            a, b = PreparedDataset(tmp_path / f"c{c}").split(s), reference.split(s)
            assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    other = prepare("criteo", [src], tmp_path / "seed7", seed=7, quiet=True)
    assert other.content_hash != schemas[0].content_hash
    assert other.splits == schemas[0].splits


def test_split_ratios_and_row_order_time_split(tmp_path, rows):
    src = write_tsv(tmp_path / "t.tsv", rows)
    schema = prepare("criteo", [src], tmp_path / "r", split_ratios=(0.5, 0.25, 0.25), quiet=True)
    assert schema.splits == {"train": 300, "valid": 150, "test": 150}
    out = tmp_path / "time"
    schema = prepare("criteo", [src], out, split="time", min_count=1, quiet=True)
    assert schema.splits == {"train": 480, "valid": 60, "test": 60}
    ds = PreparedDataset(out)
    labels = np.array([float(r[0]) for r in rows])
    units = load_vocabulary(out)["C26"]
    unit_of = dict(zip(units["id"].to_list(), units["value"].to_list(), strict=True))
    start = 0
    for s in SPLITS:  # the file order is the time order: consecutive blocks of rows
        part = ds.split(s)
        assert np.array_equal(part.y, labels[start:start + len(part)])
        assert [unit_of[int(i)] for i in part.x[:, -1]] == [f"u{i % 10}" for i in
                                                           range(start, start + len(part))]
        start += len(part)
    assert schema.options["split"] == "time"


def test_schema_json_records_fields_frequencies_and_options(traced):
    _, out, _ = traced
    d = json.loads((out / "schema.json").read_text())
    assert d["format_version"] == 1 and d["label"] == "label"
    names = [f["name"] for f in d["fields"]]
    assert names == [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert {f["kind"] for f in d["fields"][:13]} == {"numeric_bucketed"}
    assert {f["kind"] for f in d["fields"][13:]} == {"categorical"}
    freq = d["fields"][13]["frequency"]
    assert set(freq) == {"oov", "missing", "kept_values", "rare_values", "top_share",
                         "count_quantiles"}
    assert d["fields"][13]["vocab_size"] == freq["kept_values"] + 2
    assert d["splits"] == {"train": 480, "valid": 60, "test": 60}
    o = d["options"]
    assert o["format"] == "criteo" and o["inputs"] == ["train.tsv"] and o["min_count"] == 1
    assert o["split"] == "random" and o["split_ratios"] == [0.8, 0.1, 0.1] and o["seed"] == 2022
    assert o["on_bad_row"] == "error" and o["bad_rows"] == 0
    assert len(d["content_hash"]) == 32
    assert (out / "vocabulary.parquet").is_file()
    total = sum(f["vocab_size"] for f in d["fields"])
    assert np.load(out / "frequencies.npy").shape == (total,)


# ---------------------------------------------------------------------------------------------
# bad input

def _bad_file(tmp_path: Path, kind: str, rows: list[list[str]]) -> tuple[Path, int, str | None]:
    """A Criteo file with one bad line (returns path, 1-based line, bad column)."""
    lines = ["\t".join(r).encode() for r in rows[:40]]
    i = 16
    fields = lines[i].split(b"\t")
    column: str | None
    if kind == "short":
        lines[i], column = b"\t".join(fields[:30]), None
    elif kind == "long":
        lines[i], column = b"\t".join([*fields, b"extra"]), None
    elif kind == "not_a_number":
        fields[3] = b"12x"
        lines[i], column = b"\t".join(fields), "I3"
    elif kind == "label":
        fields[0] = b"7"
        lines[i], column = b"\t".join(fields), "label"
    elif kind == "undecodable":
        fields[20] = b"ab\xff\xfe"
        lines[i], column = b"\t".join(fields), "C7"
    path = tmp_path / f"{kind}.tsv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, i + 1, column


BAD_KINDS = ["short", "long", "not_a_number", "label", "undecodable"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_bad_row_is_an_error_naming_file_line_and_column(tmp_path, rows, kind):
    path, line, column = _bad_file(tmp_path, kind, rows)
    with pytest.raises(DataError) as e:
        prepare("criteo", [path], tmp_path / "out", quiet=True, chunk_rows=10)
    assert e.value.path == str(path) and e.value.line == line and e.value.column == column
    assert f"line {line}" in str(e.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_skip_mode_drops_bad_rows_and_reports_them(tmp_path, rows, kind):
    path, line, column = _bad_file(tmp_path, kind, rows)
    out = tmp_path / "out"
    schema = prepare("criteo", [path], out, quiet=True, chunk_rows=10, min_count=1,
                     on_bad_row="skip", split_ratios=(1.0, 0.0, 0.0))
    assert schema.options["bad_rows"] == 1
    first = schema.options["first_bad_rows"][0]
    assert (first["file"], first["line"], first["column"]) == (path.name, line, column)
    where = row_split(out)
    assert [i for i, _ in sorted(where.items(), key=lambda kv: kv[1])] == [
        i for i in range(40) if i != line - 1]


def test_skip_mode_counts_many_bad_rows_but_details_only_the_first(tmp_path, rows):
    lines = ["\t".join(r) for r in rows[:100]]
    for i in range(0, 100, 4):
        lines[i] = "2" + lines[i][1:]
    path = tmp_path / "t.tsv"
    path.write_text("\n".join(lines) + "\n")
    schema = prepare("criteo", [path], tmp_path / "o", quiet=True, chunk_rows=9,
                     on_bad_row="skip")
    assert schema.options["bad_rows"] == 25
    assert [b["line"] for b in schema.options["first_bad_rows"]] == list(range(1, 41, 4))
    assert sum(schema.splits.values()) == 75


def test_blank_lines_are_ignored_and_line_numbers_stay_right(tmp_path, rows):
    lines = ["\t".join(r) for r in rows[:30]]
    lines[5] = ""
    lines[9] = "1" + lines[9][1:].replace("\t", "\t", 1)[:3]  # a short line after the blank
    path = tmp_path / "t.tsv"
    path.write_text("\n".join(lines) + "\n\n")
    with pytest.raises(DataError) as e:
        prepare("criteo", [path], tmp_path / "o", quiet=True)
    assert e.value.line == 10


def test_empty_and_missing_files_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    for on_bad_row in ("error", "skip"):
        with pytest.raises(DataError, match="empty file"):
            prepare("criteo", [empty], tmp_path / "o", quiet=True, on_bad_row=on_bad_row)
        with pytest.raises(DataError, match="no such file") as e:
            prepare("criteo", [tmp_path / "nope.tsv"], tmp_path / "o", quiet=True,
                    on_bad_row=on_bad_row)
        assert e.value.path == str(tmp_path / "nope.tsv")
    assert list(tmp_path.iterdir()) == [empty]


def test_every_row_bad_in_skip_mode_is_an_error(tmp_path, rows):
    path = tmp_path / "t.tsv"
    path.write_text("".join("5" + "\t".join(r)[1:] + "\n" for r in rows[:20]))
    with pytest.raises(DataError, match="no valid rows"):
        prepare("criteo", [path], tmp_path / "o", quiet=True, on_bad_row="skip")


# ---------------------------------------------------------------------------------------------
# output folder, interruption, CLI

def test_existing_output_is_refused_unless_overwrite(tmp_path, rows):
    src = write_tsv(tmp_path / "t.tsv", rows[:50])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        prepare("criteo", [src], out, quiet=True)
    with pytest.raises(DataError, match="replaces only a dataset written by embdim"):
        prepare("criteo", [src], out, quiet=True, overwrite=True)
    assert (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    prepare("criteo", [src], out, quiet=True)
    prepare("criteo", [src], out, quiet=True, overwrite=True)  # replaces the dataset it wrote
    assert (out / "schema.json").exists()
    with pytest.raises(DataError, match="contains an input"):
        prepare("criteo", [src], tmp_path, quiet=True, overwrite=True)


def test_interrupted_preparation_leaves_nothing_that_looks_finished(tmp_path, rows, monkeypatch):
    src = write_tsv(tmp_path / "t.tsv", rows)
    calls = []

    def interrupted_write(self, split, x, y):
        calls.append(split)
        raise KeyboardInterrupt

    monkeypatch.setattr(PreparedDatasetWriter, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        prepare("criteo", [src], tmp_path / "out", quiet=True, chunk_rows=50)
    assert calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]


def test_interrupt_while_reading_cleans_the_temporary_folder(tmp_path, rows, monkeypatch):
    import embdim.data.readers.text as text

    src = write_tsv(tmp_path / "t.tsv", rows)
    real = text.validate_frame
    seen = []

    def flaky(*args, **kwargs):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(text, "validate_frame", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare("criteo", [src], tmp_path / "out", quiet=True, chunk_rows=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]


def test_cli_prepares_and_reports_errors_without_traceback(tmp_path, rows, capsys):
    src = write_tsv(tmp_path / "t.tsv", rows[:100])
    out = tmp_path / "cli"
    assert main(["--quiet", "prepare", "criteo", str(src), "--out", str(out), "--min-count", "2",
                 "--seed", "5", "--split-ratios", "0.6,0.2,0.2"]) == 0
    schema = PreparedDataset(out).schema
    assert schema.splits == {"train": 60, "valid": 20, "test": 20}
    assert schema.options["min_count"] == 2 and schema.options["seed"] == 5
    bad, line, _ = _bad_file(tmp_path, "label", rows)
    assert main(["--quiet", "prepare", "criteo", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"line {line}" in err and "'label'" in err and "Traceback" not in err
    assert main(["prepare", "criteo", str(bad), "--out", str(tmp_path / "s"),
                 "--on-bad-row", "skip"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 bad row" in err and f"{bad.name}:{line}" in err


def test_options_of_other_formats_are_refused(tmp_path, rows):
    src = write_tsv(tmp_path / "t.tsv", rows[:20])
    with pytest.raises(ConfigError, match="--label"):
        prepare("criteo", [src], tmp_path / "o", label="x", quiet=True)
    with pytest.raises(ConfigError, match="split ratios"):
        prepare("criteo", [src], tmp_path / "o", split_ratios=(0.5, 0.5, 0.5), quiet=True)
    with pytest.raises(ConfigError, match="unknown format"):
        prepare("libsvm", [src], tmp_path / "o", quiet=True)


def test_vocabulary_file_has_one_row_per_kept_value(traced):
    _, out, _ = traced
    table = pl.read_parquet(out / "vocabulary.parquet")
    assert table.columns == ["field", "value", "id", "count"]
    schema = PreparedDataset(out).schema
    per_field = dict(table.group_by("field").len().iter_rows())
    for f in schema.fields:
        assert per_field.get(f.name, 0) == f.vocab_size - 2
