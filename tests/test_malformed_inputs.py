"""Malformed inputs (issue 15): every text reader refuses a row with the wrong number of columns,
naming file and line, or counts and skips it with ``on_bad_row="skip"``, whatever the chunk size.

Each case puts a short row and a long row in the same file, so the two balance out in a total
separator count: only a per-line check sees them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embdim.cli import main
from embdim.data.preparation import prepare
from embdim.errors import DataError

CHUNKS = [1, 3, 100_000]
ALL_TRAIN = {"split_ratios": (1.0, 0.0, 0.0), "min_count": 1, "quiet": True}


def _csv(folder: Path) -> tuple[str, list[Path], dict, Path, int, int, int]:
    path = folder / "r.csv"
    path.write_text("label,a,b,unused\n1,x,p,9\n0,y\n1,z,q,8,E1,E2\n0,w,r,7\n1,x,p,1\n0,y,q,2\n"
                    "1,x,p,9\n0,y,q,2\n1,x,p,9\n0,y,q,2\n")
    return "csv", [path], {"label": "label", "categorical": ["a", "b"]}, path, 3, 4, 2


def _avazu(folder: Path):
    header = "id,click,hour,C1,site_id"
    rows = [f"{i},{i % 2},141021{i % 24:02d},100{i % 3},s{i % 4}" for i in range(12)]
    rows[4] = "4,0,14102104,1000"  # short
    rows[5] = "5,1,14102105,1001,s1,extra,more"  # long
    path = folder / "a.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return "avazu", [path], {}, path, 6, 5, 4


def _criteo(folder: Path):
    rows = []
    for i in range(12):
        rows.append("\t".join([str(i % 2), *(str(i + k) for k in range(13)),
                               *(f"c{(i + k) % 5}" for k in range(26))]))
    rows[2] = "\t".join(rows[2].split("\t")[:38])  # one column short
    rows[7] = rows[7] + "\textra"  # one column long
    path = folder / "t.tsv"
    path.write_text("\n".join(rows) + "\n")
    return "criteo", [path], {}, path, 3, 40, 38


def _ml1m(folder: Path):
    folder = folder / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n2::Heat (1995)::Action\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    rows = [f"{1 + i % 2}::{1 + i % 2}::{1 + i % 5}::{978300760 + i}" for i in range(12)]
    rows[3] = "1::2::5"
    rows[6] = "2::1::4::978300766::9"
    (folder / "ratings.dat").write_text("\n".join(rows) + "\n")
    return "movielens", [folder], {}, folder / "ratings.dat", 4, 4, 3


def _ml100k_item(folder: Path):
    folder = folder / "ml-100k"
    folder.mkdir()
    flags = "|".join(["0"] * 18 + ["1"])
    items = [f"{m}|Movie {m} (1995)|01-Jan-1995||http://x|{flags}" for m in range(1, 7)]
    items[1] = "2|Movie 2 (1995)|01-Jan-1995||http://x"  # short
    items[2] = items[2] + "|1|1|1|1|1"  # long, balancing the short one
    (folder / "u.item").write_text("\n".join(items) + "\n")
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (folder / "u.data").write_text("".join(f"{1 + i % 2}\t{1 + i % 6}\t{1 + i % 5}\t{874965758 + i}\n"
                                           for i in range(12)))
    return "movielens", [folder], {}, folder / "u.item", 2, 24, 5


def _ml_latest(folder: Path):
    folder = folder / "ml-latest-small"
    folder.mkdir()
    (folder / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story (1995)",Comedy\n'
                                       "2,Heat (1995),Action\n")
    rows = [f"{1 + i % 2},{1 + i % 2},{1 + i % 5}.0,{978300760 + i}" for i in range(12)]
    rows[0] = "1,1,4.0"
    rows[1] = "2,2,3.0,978300761,x"
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    return "movielens", [folder], {}, folder / "ratings.csv", 2, 4, 3


def _csv_huge_line(folder: Path):
    """A line with 65,538 separators (longer than the 16-bit per-line counts of the reader's
    quick check hold) is still refused with its real column count."""
    path = folder / "h.csv"
    rows = ["label,a,b", *(f"{i % 2},x{i % 3},p{i % 2}" for i in range(10))]
    rows[3] = "1,z" + ",q" * 65_537
    rows[7] = "0,y"  # short
    path.write_text("\n".join(rows) + "\n")
    return "csv", [path], {"label": "label", "categorical": ["a", "b"]}, path, 4, 3, 65_539


CASES = {"csv": _csv, "csv-huge-line": _csv_huge_line, "avazu": _avazu, "criteo": _criteo,
         "ml-1m": _ml1m,
         "ml-100k-u.item": _ml100k_item, "ml-latest": _ml_latest}


@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_row_with_the_wrong_column_count_is_refused_at_any_chunk_size(tmp_path, case, chunk_rows):
    fmt, inputs, options, bad_file, line, expected, found = CASES[case](tmp_path)
    with pytest.raises(DataError) as e:
        prepare(fmt, inputs, tmp_path / "out", chunk_rows=chunk_rows, **ALL_TRAIN, **options)
    assert str(e.value).startswith(f"{bad_file}, line {line}: expected {expected} columns, "
                                   f"found {found}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_mode_counts_both_rows_with_the_wrong_column_count(tmp_path, case, chunk_rows):
    fmt, inputs, options, bad_file, line, expected, found = CASES[case](tmp_path)
    schema = prepare(fmt, inputs, tmp_path / "out", chunk_rows=chunk_rows, on_bad_row="skip",
                     **ALL_TRAIN, **options)
    assert schema.options["bad_rows"] == 2
    first = schema.options["first_bad_rows"][0]
    assert (first["file"], first["line"], first["column"]) == (bad_file.name, line, None)
    assert first["message"] == f"expected {expected} columns, found {found}"


def test_cli_names_the_line_of_the_issue_reproducer(tmp_path, capsys):
    _, _, _, path, _, _, _ = _csv(tmp_path)
    code = main(["--quiet", "prepare", "csv", str(path), "--out", str(tmp_path / "p"),
                 "--label", "label", "--categorical", "a,b", "--min-count", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"embdim: error: {path}, line 3: expected 4 columns, found 2")


# ---- property-based fuzz of the text reader (hypothesis) -------------------------------------

# Pieces of CSV-ish text. Good values (``,`` stands for the separator in use) and anything else:
# quotes (balanced, doubled, stray), empty fields, other separators, carriage returns, bytes that
# are not UTF-8, a byte-order mark in the middle of the file.
_GOOD = {"label": [b"0", b"1"], "a": [b"x", b"y", b"", b'"q,r"', b'"a""b"', b"\xc3\xa9"],
         "n": [b"", b"2.5", b"-1", b"7", b"1e-3"], "extra": [b"0", b"z", b""]}
_ANY = [b"0", b"1", b"x", b"", b" ", b"1e400", b"nan", b"NA", b'"', b'""', b'"1"', b'"q,r"', b"\t",
        b";", b"|", b"::", b"\r", b"\xff", b"\xc3", b"\xef\xbb\xbf"]
_BOM = b"\xef\xbb\xbf"
_WHITE = b" \t\r\x0b\x0c"  # what a blank line may hold (besides the separator itself)


@st.composite
def _csv_text(draw) -> tuple[bytes, bytes]:
    """(file bytes, separator): a header ``label,a,n`` (sometimes with an extra column or a
    byte-order mark), then up to 12 rows, most of them good, the others of random column count
    and content, and blank lines."""
    sep = draw(st.sampled_from([b",", b",", b";", b"\t"]))
    columns = ["label", "a", "n"] + draw(st.sampled_from([[], [], ["extra"]]))
    lines = [draw(st.sampled_from([b"", b"", _BOM])) + sep.join(c.encode() for c in columns)]
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 9))
        if kind < 6:  # a good row
            cells = [draw(st.sampled_from(_GOOD[c])) for c in columns]
        elif kind < 9:  # random content, of the right width or not
            width = len(columns) if kind < 8 else draw(st.integers(0, len(columns) + 2))
            cells = draw(st.lists(st.one_of(st.sampled_from(_ANY), st.sampled_from(_ANY),
                                            st.binary(max_size=3)), min_size=width, max_size=width))
        else:  # a blank line
            cells = [draw(st.sampled_from([b"", b" ", b"\t", b"\r"]))]
        lines.append(sep.join(c.replace(b",", sep) for c in cells))
    ending = draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))
    return ending.join(lines) + draw(st.sampled_from([ending, b""])), sep


def _prepare_fuzzed(path: Path, out: Path, sep: bytes, chunk_rows: int, on_bad_row: str):
    """("ok", rows kept, bad rows, first bad line) or ("error", line) for one preparation; any
    exception other than the library's DataError fails the test."""
    shutil.rmtree(out, ignore_errors=True)
    try:
        schema = prepare("csv", [path], out, label="label", categorical=["a"], numeric=["n"],
                         separator=sep.decode(), chunk_rows=chunk_rows, on_bad_row=on_bad_row,
                         **ALL_TRAIN)
    except DataError as e:
        return "error", e.line, str(e)
    first = schema.options["first_bad_rows"]
    return "ok", schema.splits["train"], schema.options["bad_rows"], first[0]["line"] if first else None


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_csv_text())
def test_random_csv_either_prepares_or_names_a_line(tmp_path, case):
    """A property-based fuzz of the text reader. Every CSV-ish input either prepares or raises
    the library's own error naming a line (only a file without data lines gets a whole-file
    error). Read line by line (``chunk_rows=1``) and in one block, with ``on_bad_row`` "error" and
    "skip": "skip" counts the line that "error" names as its first bad row, and keeps every row
    when "error" passes (so the chunk size changes nothing)."""
    data, sep = case
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    outcome, *detail = _prepare_fuzzed(path, tmp_path / "error", sep, 1, "error")
    skipped = _prepare_fuzzed(path, tmp_path / "skip", sep, 100_000, "skip")
    if outcome == "ok":
        assert skipped == ("ok", detail[0], 0, None)
        return
    line, message = detail
    if line is None:
        assert re.search(r": (empty file|no data rows)", message), message
        assert not any(raw.strip(_WHITE.replace(sep, b"")) for raw in data.split(b"\n")[1:])
        assert skipped[0] == "error" and skipped[1] is None
    elif skipped[0] == "ok":
        assert skipped[2] >= 1 and skipped[3] == line, (skipped, message)
    else:  # every row bad: nothing to prepare
        assert skipped[1] is None, skipped


# Inputs the fuzz found: a carriage return inside a field (csv.reader raised, and the line-by-line
# path read it differently), a stray quote (no line named), a tab-separated row of empty fields
# (taken for a blank line on one path only).
FOUND_BY_FUZZ = {
    "cr-in-field": (b'label,a,n\r\n0,0,\r\r\n0,0,\xff\r\n1,x,2\r\n', b",", 2),
    "cr-in-quoted-line": (b'label,a,n\n"0",\r,1\n0,x,1\n\xff\n', b",", 4),
    "stray-quote": (b'label,a,n\n0,0,"\n1,x,2\n', b",", 2),
    "tab-row-of-empty-fields": (b"label\ta\tn\n\n0\t0\t0\n\t\t\n", b"\t", 4),
}


@pytest.mark.parametrize("case", sorted(FOUND_BY_FUZZ))
def test_inputs_found_by_the_fuzz_name_the_same_line_at_every_chunk_size(tmp_path, case):
    data, sep, line = FOUND_BY_FUZZ[case]
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    for chunk_rows in (1, 2, 100_000):
        outcome = _prepare_fuzzed(path, tmp_path / f"o{chunk_rows}", sep, chunk_rows, "error")
        assert outcome[:2] == ("error", line), outcome
        skipped = _prepare_fuzzed(path, tmp_path / f"s{chunk_rows}", sep, chunk_rows, "skip")
        assert skipped[3] == line, skipped


# ---- ratings out of range, Netflix skip mode, long values (item 10) ---------------------------

@pytest.mark.parametrize("rating", ["99", "-3", "1e400"])
def test_movielens_ratings_outside_half_to_five_are_bad_rows(tmp_path, rating):
    from embdim.autoemb.stream import prepare_stream

    fmt, inputs, _, ratings, *_ = _ml_latest(tmp_path)
    lines = ratings.read_text().splitlines()
    lines[1:3] = ["1,1,4.0,978300760", "2,2,3.0,978300761"]  # the two bad-width rows made good
    lines[5] = f"1,2,{rating},978300799"
    ratings.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 6, column 'rating': rating must be between 0.5 and 5"):
        prepare(fmt, inputs, tmp_path / "out", **ALL_TRAIN)
    with pytest.raises(DataError, match=r"line 6, column 'rating': rating must be between 0.5 and 5"):
        prepare_stream(fmt, inputs, tmp_path / "stream", quiet=True)
    schema = prepare(fmt, inputs, tmp_path / "out", on_bad_row="skip", **ALL_TRAIN)
    assert schema.options["bad_rows"] == 1


def test_netflix_skip_mode_counts_bad_movie_lines_bytes_and_ratings(tmp_path):
    from embdim.autoemb.stream import prepare_stream

    path = tmp_path / "combined_data_1.txt"
    path.write_bytes(b"1:\n7,3,2005-09-06\nx9:\n8,5,2005-05-13\n8,4,2005-05-14\n2:\n"
                     b"7,4,2004-01-01\n9,\xff\xfe,2005-09-06\n9,1e400,2005-09-06\n9,2,2005-09-07\n")
    with pytest.raises(DataError, match="line 3: movie id line is not"):
        prepare_stream("netflix", [path], tmp_path / "e", quiet=True)
    stream = prepare_stream("netflix", [path], tmp_path / "s", quiet=True, on_bad_row="skip")
    assert len(stream) == 3  # (1, 7), (2, 7), (2, 9 rating 2)
    meta = stream.meta
    assert meta["bad_rows"] == 5  # the bad movie line, its 2 ratings, the bytes, the 1e400
    assert [b["line"] for b in meta["first_bad_rows"]] == [3, 4, 5, 8, 9]


def test_a_long_bad_value_is_cut_in_the_message(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("label,a\n1,x\n" + "7" + "9" * 10_000 + ",y\n")
    with pytest.raises(DataError) as e:
        prepare("csv", [path], tmp_path / "o", label="label", categorical=["a"], **ALL_TRAIN)
    assert "line 3" in str(e.value) and len(str(e.value)) < 250
